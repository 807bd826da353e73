"""The SDS / VSD comparison's metrics on images with known answers (no training)."""

import math

import pytest
import torch

from lab import comparison as C


def solid(rgb, views=2, size=8):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(views, 3, size, size).clone()


def full_mask(views=2, size=8):
    return torch.ones(views, 1, size, size)


def test_saturation_of_pure_red_is_one_and_of_grey_zero():
    assert C.mean_saturation(solid([1.0, 0.0, 0.0]), full_mask()) == pytest.approx(1.0)
    assert C.mean_saturation(solid([0.5, 0.5, 0.5]), full_mask()) == pytest.approx(0.0)
    assert C.mean_saturation(solid([0.0, 0.0, 0.0]), full_mask()) == pytest.approx(0.0)  # black: no hue, no NaN


def test_saturation_counts_only_object_pixels():
    image, mask = solid([1.0, 1.0, 1.0]), torch.zeros(2, 1, 8, 8)  # white background
    image[:, :, :4], mask[:, :, :4] = torch.tensor([0.8, 0.4, 0.4]).view(1, 3, 1, 1), 1.0  # top half: object
    assert C.mean_saturation(image, mask) == pytest.approx(0.5)
    assert math.isnan(C.mean_saturation(image, torch.zeros_like(mask)))  # nothing rendered


def test_colour_error_is_zero_for_the_reference_and_grows_with_the_difference():
    reference, mask = solid([0.86, 0.08, 0.08]), full_mask()
    assert C.colour_error(reference, mask, reference, mask) == pytest.approx(0.0, abs=1e-6)
    near = C.colour_error(solid([0.80, 0.10, 0.10]), mask, reference, mask)
    far = C.colour_error(solid([0.10, 0.22, 0.90]), mask, reference, mask)
    assert 0 < near < far
    assert math.isnan(C.colour_error(reference, torch.zeros_like(mask), reference, mask))


def test_diversity_is_zero_for_identical_renders_and_positive_otherwise():
    a = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert C.diversity([a, a.clone()]) == pytest.approx((0.0, 0.0), abs=1e-6)
    ssim_gap, l1 = C.diversity([a, 1 - a])
    assert ssim_gap > 0.5 and l1 > 0.2
    assert all(math.isnan(v) for v in C.diversity([a]))  # one seed: nothing to compare


def test_reference_renders_are_the_prompted_colour():
    images, masks = C.reference_views("cube", "red")
    assert images.shape == (8, 3, 32, 32) and masks.shape == (8, 1, 32, 32)
    assert 0.8 < C.mean_saturation(images, masks) <= 1.0  # the albedo's own saturation is 0.91
    assert C.colour_error(images, masks, images, masks) == pytest.approx(0.0, abs=1e-6)


def test_variants_parse_and_take_the_recipe_scale_when_none_is_given():
    assert C.parse_variant("sds-100") == C.Variant("sds", 100.0)
    assert C.parse_variant("sds-7.5").overrides == ["system.guidance.guidance_scale=7.5"]
    shipped = C.parse_variant("vsd")
    assert shipped.overrides == [] and shipped.name == f"vsd-{shipped.scale:g}"
    with pytest.raises(ValueError):
        C.parse_variant("nerf-7.5")
    with pytest.raises(ValueError):
        C.parse_variant("sds-high")
