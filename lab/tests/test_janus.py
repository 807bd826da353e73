"""The Janus measure: the shipped view head on procedural renders with known sides, the rate of a
synthetic Janus house against the real one, the table, the variants, and loading old classifiers."""

import os
import shutil
from collections import Counter

import pytest
import torch

from lab import evaluation, janus, lab_side
from threestudio_like.guidance.models import resolve_model_path
from lab.priors import procedural
from lab.priors.classifier import load_classifier
from lab.priors.view_head import (
    RELIEF_FOLDER, SIDE_CENTRES_DEG, SIDE_NAMES, VIEW_FOLDER, boundary_distance, load_view_head, side_of_azimuth,
    view_head_folder,
)

PRIOR = resolve_model_path(evaluation.DEFAULT_PRIOR)


@pytest.fixture(scope="module", params=[VIEW_FOLDER, RELIEF_FOLDER])
def view_head(request):
    """Each shipped head: the RGB one and the one that also sees the relief."""
    return load_view_head(PRIOR, kinds=(request.param,))


class ProceduralSystem:
    """Stands in for a trained system: its renderer draws a procedural object, so the Janus views
    go through the evaluator's own rendering path (janus_cameras -> render_views_with_opacity)."""

    device = torch.device("cpu")

    def __init__(self, shape: str, colour: str) -> None:
        self.shape_id = torch.tensor([procedural.SHAPE_NAMES.index(shape)])
        self.albedo = torch.tensor([procedural.COLOURS[colour]])

    def eval(self) -> None:
        pass

    def renderer(self, rays_o, rays_d, light_positions, **_):
        depth = torch.zeros_like(rays_o[..., :1])
        rgb, mask = procedural.render_rays(self.shape_id, self.albedo, rays_o, rays_d, light_positions, torch.tensor([False]),
                                           depth=depth)
        return {"comp_rgb": rgb, "opacity": mask, "depth": depth}


def janus_albedo(shape, p):
    """procedural.albedo_factor with the house's door on its back (-x) face as well as its front."""
    factor = ORIGINAL_ALBEDO_FACTOR(shape, p)
    if shape == "house":
        back_door = ORIGINAL_ALBEDO_FACTOR(shape, p * p.new_tensor([-1.0, 1.0, 1.0]))
        factor = torch.minimum(factor, back_door)
    return factor


ORIGINAL_ALBEDO_FACTOR = procedural.albedo_factor


def test_sides_by_azimuth_and_the_janus_views_keep_off_the_boundaries():
    assert side_of_azimuth(list(SIDE_CENTRES_DEG)).tolist() == [0, 1, 2, 3]
    assert side_of_azimuth([-30.0, 330.0, 100.0, -100.0, 260.0, 179.0, -179.0]).tolist() == [0, 0, 1, 3, 3, 2, 2]
    assert boundary_distance([0.0, 45.0, 67.5, -100.0]).tolist() == [45.0, 0.0, 22.5, 35.0]
    assert len(janus.JANUS_AZIMUTHS_DEG) == 12
    assert float(boundary_distance(list(janus.JANUS_AZIMUTHS_DEG)).min()) >= 22.5
    assert Counter(side_of_azimuth(list(janus.JANUS_AZIMUTHS_DEG)).tolist()) == {0: 3, 1: 3, 2: 3, 3: 3}


def test_mirrored_renders_show_the_side_the_flip_labels_say():
    """The training flips' labels: a mirrored house at az is the house at -az, a mirrored mug at az the mug at 180 - az."""
    from lab.priors.train_view_head import MIRROR_SIDES

    for row, (shape, mirrored_azimuth) in enumerate([("house", lambda a: -a), ("mug", lambda a: 180.0 - a)]):
        azimuths = [30.0, 120.0, -150.0]
        images = janus.render_janus_views(ProceduralSystem(shape, "green"), azimuths)
        mirrored = janus.render_janus_views(ProceduralSystem(shape, "green"), [mirrored_azimuth(a) for a in azimuths])
        assert (images.flip(-1) - mirrored).abs().max() < 0.05
        sides, mirrored_sides = side_of_azimuth(azimuths), side_of_azimuth([mirrored_azimuth(a) for a in azimuths])
        assert MIRROR_SIDES[row][sides].tolist() == mirrored_sides.tolist()


def test_relief_shows_a_mugs_handle_pointing_at_the_camera():
    """The relief a Janus view carries: 0 off the object, ~0.5 + nearness / 2 on it; the handle
    seen end-on (its side's camera, azimuth 270) is nearer than the wall seen from 90. The
    training renders' relief is the measure's."""
    from lab.priors.train_view_head import render_with_relief

    views = janus.render_janus_views(ProceduralSystem("mug", "blue"), [90.0, 270.0])
    relief = views[:, 3]
    assert relief[:, :2].max() == 0.0  # the top rows: background
    centre = relief[:, 13:19, 14:18].mean((1, 2))
    wall = 0.5 + (procedural._MUG_OUTER) / 2  # a wall at the mug's radius in front of the look-at point
    assert centre[0] == pytest.approx(wall, abs=0.03)
    assert centre[1] > centre[0] + 0.05, centre.tolist()
    ids = torch.tensor([procedural.SHAPE_NAMES.index("mug")]), torch.tensor([procedural.COLOUR_NAMES.index("blue")])
    trained = torch.cat([render_with_relief(*ids, camera, torch.tensor([False]))[0] for camera in janus.janus_cameras([90.0, 270.0])])
    assert torch.allclose(trained, views, atol=1e-5)


def test_the_relief_head_tells_a_handle_end_on_from_a_hidden_one_by_depth():
    """A mug seen from its handle's side (270) and the opposite one (90), colour blurred as a NeRF
    softens it: the RGB head can no longer see the ring and takes both for "handle hidden"; the
    relief head reads the handle's depth, and with the two views' reliefs swapped, swaps its verdict."""
    from lab.priors.train_view_head import _blur

    rgb_head, relief_head = load_view_head(PRIOR), load_view_head(PRIOR, kinds=(RELIEF_FOLDER,))
    for colour in ("blue", "orange"):
        views = janus.render_janus_views(ProceduralSystem("mug", colour), [90.0, 270.0])
        blurred = torch.cat([_blur(views[:, :3], torch.full((2,), 1.5)), views[:, 3:]], dim=1)
        assert rgb_head.classify(blurred, "mug").sides == ["left", "left"]
        assert relief_head.classify(blurred, "mug").sides == ["left", "right"]
        swapped = torch.cat([views[:, :3], views.flip(0)[:, 3:]], dim=1)
        assert relief_head.classify(swapped, "mug").sides == ["right", "left"]


def test_view_head_names_the_side_of_clean_renders_at_the_class_centres(view_head):
    for shape, colours in [("house", ("red", "cyan")), ("mug", ("blue", "orange"))]:
        for colour in colours:
            images = janus.render_janus_views(ProceduralSystem(shape, colour), SIDE_CENTRES_DEG)
            seen = view_head.classify(images, shape).sides
            right = sum(s == e for s, e in zip(seen, SIDE_NAMES))
            if shape == "house":  # at +-90 the door is edge-on: left and right are the same image
                assert seen[0] == "front" and seen[2] == "back" and set(seen[1::2]) <= {"left", "right"}, (shape, colour, seen)
                assert right >= 3
            else:
                assert right == 4, (shape, colour, seen)


def test_janus_rate_of_the_real_house_and_mug_is_zero(view_head):
    for shape, colour in [("house", "yellow"), ("mug", "purple")]:
        images = janus.render_janus_views(ProceduralSystem(shape, colour))
        score = janus.judge_views(view_head, images, janus.JANUS_AZIMUTHS_DEG, shape)
        assert score.rate <= 1 / 12, (shape, list(zip(score.azimuths, score.seen)))
        assert score.front_share == pytest.approx(3 / 12, abs=1 / 12)


def test_a_house_with_a_door_on_its_back_is_seen_from_the_front_behind_it(view_head, monkeypatch):
    monkeypatch.setattr(procedural, "albedo_factor", janus_albedo)
    images = janus.render_janus_views(ProceduralSystem("house", "red"))
    score = janus.judge_views(view_head, images, janus.JANUS_AZIMUTHS_DEG, "house")
    from_behind = [s for s, e in zip(score.seen, score.expected) if e == "back"]
    assert from_behind == ["front"] * 3, list(zip(score.azimuths, score.seen))
    assert score.rate >= 3 / 12 and score.front_share >= 6 / 12  # the real house: 0 and 3 / 12


def test_an_object_that_shows_its_front_everywhere_scores_nine_twelfths(view_head):
    """The full Janus: every camera gets the front render."""
    front = janus.render_janus_views(ProceduralSystem("mug", "red"), [0.0])
    score = janus.judge_views(view_head, front.expand(12, -1, -1, -1), janus.JANUS_AZIMUTHS_DEG, "mug")
    assert score.front_share == 1.0 and score.rate == pytest.approx(9 / 12)
    with pytest.raises(ValueError, match="front"):
        janus.judge_views(view_head, front, [0.0], "cube")


def fake_result(variant, prompt, seed, rate_wrong, shape_ok=True, handles=None):
    """A JanusResult whose first ``rate_wrong`` back / side views are seen as front."""
    shape, colour = evaluation.parse_prompt(prompt)
    score = evaluation.Score(prompt, shape, colour, Counter({shape if shape_ok else "cube": 8}), Counter({colour: 8}),
                             {shape: 0.1, "cube": 0.2})
    azimuths = list(janus.JANUS_AZIMUTHS_DEG)
    expected = [SIDE_NAMES[i] for i in side_of_azimuth(azimuths).tolist()]
    seen, flipped = [], 0
    for e in expected:
        wrong = e != "front" and flipped < rate_wrong
        flipped += wrong
        seen.append("front" if wrong else e)
    return janus.JanusResult(variant, prompt, seed, score, janus.JanusScore(shape, azimuths, seen, expected),
                             torch.zeros(12, 3, 32, 32), handles)


def test_geometry_finds_the_mugs_handles_at_any_scale_and_ignores_floaters():
    from threestudio_like.mesh.isosurface import extract_isosurface
    from threestudio_like.mesh.types import Mesh

    bound = procedural.OBJECT_RADIUS + 0.2
    bbox = torch.tensor([[-bound] * 3, [bound] * 3])
    mug = extract_isosurface(lambda p: -procedural.sdf_mug(p)[..., None], bbox, 64, 0.0)
    assert janus.handle_sides(mug) == ["right"]  # the handle stands off the -y wall
    moved = Mesh(mug.v_pos * 1.4 + torch.tensor([0.1, 0.05, 0.0]), mug.t_pos_idx)
    assert janus.handle_sides(moved) == ["right"]  # larger, off centre
    speck = extract_isosurface(lambda p: (0.1 - p.norm(dim=-1))[..., None], torch.tensor([[-0.15] * 3, [0.15] * 3]), 12, 0.0)
    assert speck.n_faces < janus.FLOATER_SHARE * mug.n_faces
    with_floater = Mesh(torch.cat([mug.v_pos, speck.v_pos + torch.tensor([0.9, 0.0, 0.0])]),
                        torch.cat([mug.t_pos_idx, speck.t_pos_idx + mug.n_vertices]))
    assert janus.reach_by_side(with_floater.v_pos)["front"] > 2.0  # counted, the speck would be a front handle
    assert janus.handle_sides(with_floater) == ["right"]  # a floater far out in front is not a handle
    mirrored = lambda p: -torch.minimum(procedural.sdf_mug(p), procedural.sdf_mug(p * p.new_tensor([1.0, -1.0, 1.0])))[..., None]  # noqa: E731
    assert janus.handle_sides(extract_isosurface(mirrored, bbox, 64, 0.0)) == ["left", "right"]  # a Janus mug
    cylinder = extract_isosurface(lambda p: -procedural.sdf_cylinder(p)[..., None], bbox, 64, 0.0)
    assert janus.handle_sides(cylinder) == []


def test_table_gives_rates_over_seeds_zero_janus_counts_and_failures():
    results = [fake_result("sds", "a red house", 0, 6), fake_result("sds", "a red house", 1, 0),
               fake_result("sds", "a blue mug", 0, 3, shape_ok=False, handles=["left", "right"]),
               fake_result("sds", "a blue mug", 1, 3, handles=["right"])]
    table = janus.format_janus_table(results, ["sds", "mv"], ["a red house", "a blue mug"], {"mv": "ModelNotFoundError: no builtin:x"})
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    header, body = rows[0], {(r[0], r[1]): dict(zip(rows[0], r)) for r in rows[1:]}
    assert header[:5] == ["variant", "prompt", "Janus rate", "seen as front", "Janus-free"]
    house, mug, both = body[("sds", "a red house")], body[("sds", "a blue mug")], body[("sds", "all prompts")]
    assert house["Janus rate"] == "0.25 ± 0.35" and house["Janus-free"] == "1/2" and house["seen as front"] == "0.50 ± 0.35"
    assert mug["Janus rate"] == "0.25 ± 0.00" and mug["Janus-free"] == "0/2" and mug["shape right"] == "1/2"
    assert mug["one handle, right"] == "1/2" and house["one handle, right"] == "-" and both["one handle, right"] == "1/2"
    # all prompts: per seed the mean over prompts (0.375, 0.125), then mean +- sd over seeds
    assert both["Janus rate"] == "0.25 ± 0.18" and both["Janus-free"] == "1/4" and both["trials"] == "4"
    assert body[("mv", "(failed, see below)")]["trials"] == "0"
    assert "- mv failed: ModelNotFoundError: no builtin:x" in table
    one_seed = janus.format_janus_table(results[:1], ["sds"], ["a red house"])
    assert "| 0.50 " in one_seed and "±" not in one_seed and "all prompts" not in one_seed


def test_variants_are_recipes_with_overrides():
    perp = janus.parse_variant("dreamfusion-cpu+perp-neg")
    assert (perp.recipe, perp.overrides) == ("dreamfusion-cpu", ["system.prompt_processor.use_perp_neg=true"])
    plain = janus.parse_variant("dreamfusion-cpu")
    assert plain.name == "dreamfusion-cpu" and plain.overrides == []
    tuned = janus.parse_variant("dreamfusion-cpu,system.guidance.guidance_scale=50")
    assert tuned.overrides == ["system.guidance.guidance_scale=50"] and tuned.name == "dreamfusion-cpu+guidance_scale-50"
    assert janus.is_override("seed=3") and not janus.is_override("dreamfusion-cpu,seed=3") and not janus.is_override("mvdream-cpu")
    with pytest.raises(Exception, match="dreamfusion-cpu"):  # the recipe finder lists the shipped recipes
        janus.parse_variant("no-such-recipe")
    with pytest.raises(ValueError):
        janus.parse_variant("dreamfusion-cpu,oops")


def test_evaluation_dispatches_janus_and_refuses_prompts_without_a_front(capsys):
    with pytest.raises(SystemExit):
        evaluation.main(["--janus", "--prompts", "a red cube", "--seeds", "1"])
    assert "house or a mug" in capsys.readouterr().err


def test_classifier_without_a_view_head_still_loads(tmp_path):
    shipped = os.path.join(lab_side(PRIOR), "classifier")  # lab/weights/shapes32/classifier
    assert os.path.isdir(os.path.join(shipped, VIEW_FOLDER))
    old = tmp_path / "classifier"
    old.mkdir()
    for name in ("model.safetensors", "labels.json"):  # an old classifier folder: no view/
        shutil.copy(os.path.join(shipped, name), old / name)
    images = janus.render_janus_views(ProceduralSystem("mug", "blue"), [0.0, 180.0])
    for folder in (str(old), str(tmp_path), PRIOR):
        assert load_classifier(folder).classify(images[:, :3]).shapes == ["mug", "mug"]
    with pytest.raises(FileNotFoundError, match="train_view_head"):
        load_view_head(str(tmp_path))
    for folder in (PRIOR, shipped, os.path.join(shipped, VIEW_FOLDER)):  # prior, classifier or view folder
        assert load_view_head(folder).classify(images, "mug").sides == ["front", "back"]


def test_view_head_trains_saves_and_loads(tmp_path):
    from lab.priors.train_view_head import train_view_head

    info = train_view_head(str(tmp_path), steps=2, batch_size=8, dataset_size=16, held_out_size=16, command="test", members=2)
    assert info["command"] == "test" and 0.0 <= info["held_out_accuracy_clean"]["all"] <= 1.0
    head = load_view_head(str(tmp_path))
    assert len(head.members) == info["members"] == 2
    assert len(head.classify(torch.rand(3, 3, 32, 32), ["house", "mug", "house"]).sides) == 3
    with pytest.raises(ValueError):
        head.classify(torch.rand(2, 3, 32, 32), "cube")
    # a relief head: saved beside it, preferred by the Janus measure, reads four channels
    info = train_view_head(str(tmp_path), steps=2, batch_size=8, dataset_size=16, held_out_size=16, relief_shapes=["mug"])
    assert info["relief_shapes"] == ["mug"] and "--relief mug" in info["command"]
    assert view_head_folder(str(tmp_path), kinds=(RELIEF_FOLDER, VIEW_FOLDER)).endswith(RELIEF_FOLDER)
    assert load_view_head(str(tmp_path)).channels == 3  # the RGB head is still the default
    relief_head = load_view_head(str(tmp_path), kinds=(RELIEF_FOLDER,))
    assert relief_head.relief_shapes == ["mug"] and relief_head.channels == 4
    assert len(relief_head.classify(torch.rand(2, 4, 32, 32), "mug").sides) == 2
    with pytest.raises(ValueError, match="RGB \\+ relief"):
        relief_head.classify(torch.rand(2, 3, 32, 32), "mug")


def test_a_relief_head_sees_the_relief_of_its_relief_shapes_only():
    """Changing a house view's relief changes nothing for a head that sees mugs' relief only; a mug's, it does."""
    from lab.priors.view_head import ViewHead

    torch.manual_seed(0)
    head = ViewHead(width=4, relief_shapes=["mug"]).eval()
    views = torch.rand(2, 4, 32, 32)
    other = torch.cat([views[:, :3], torch.rand(2, 1, 32, 32)], dim=1)
    assert torch.equal(head.classify(views, "house").probs, head.classify(other, "house").probs)
    assert not torch.allclose(head.classify(views, "mug").probs, head.classify(other, "mug").probs)
    with pytest.raises(ValueError, match="relief_shapes"):
        ViewHead(relief_shapes=["cube"])


def test_a_view_head_ensemble_averages_its_members_and_round_trips(tmp_path):
    from lab.priors.view_head import ViewHead, ViewHeadEnsemble, save_view_head

    torch.manual_seed(0)
    members = [ViewHead(width=4).eval() for _ in range(2)]
    ensemble = ViewHeadEnsemble(members)
    images, shapes = torch.rand(5, 3, 32, 32), ["house", "mug", "mug", "house", "mug"]
    probs = ensemble.classify(images, shapes).probs
    each = [m.classify(images, shapes).probs for m in members]
    assert not torch.allclose(each[0], each[1], atol=1e-3)  # the members differ, so the mean is a real mix
    assert torch.allclose(probs, (each[0] + each[1]) / 2, atol=1e-6)
    save_view_head(str(tmp_path / "ens"), ensemble)
    loaded = load_view_head(str(tmp_path / "ens"))
    assert isinstance(loaded, ViewHeadEnsemble) and len(loaded.members) == 2
    assert torch.allclose(loaded.classify(images, shapes).probs, probs, atol=1e-6)
    save_view_head(str(tmp_path / "one"), members[0])
    assert isinstance(load_view_head(str(tmp_path / "one")), ViewHead)


@pytest.mark.slow  # a NeRF fit and a dozen 64 px renders: ~1.5 min
def test_view_head_trains_on_reference_nerf_views(tmp_path, monkeypatch):
    from lab.priors import nerf_views
    from lab.priors.train_view_head import train_view_head

    prompts = ("a green mug",)
    monkeypatch.setattr(nerf_views, "FIT_STEPS", 30)
    data = nerf_views.render_nerf_view_dataset(prompts, 8, 0, str(tmp_path / "nerfs"))
    # labelled by the camera, a mug's view, covering the object (fitted, not the initial blob)
    assert torch.equal(data["sides"], side_of_azimuth(data["azimuth"]))
    assert (data["view_shapes"] == janus.VIEW_SHAPES.index("mug")).all()
    covered = data["masks"][:, 0] > 127
    assert covered.float().mean() > 0.05
    r, g, b = (data["images"][:, c][covered].float().mean() for c in range(3))
    assert g > r + 20 and g > b + 20, (r, g, b)  # green, as the procedural mug it was fitted to
    kept = tmp_path / "nerfs" / "a_green_mug" / "reference.ckpt"
    assert kept.is_file() and (kept.parent / "views8_seed0.pt").is_file()  # fit and renders kept per prompt
    before = kept.stat().st_mtime_ns
    again = nerf_views.render_nerf_view_dataset(prompts, 8, 0, str(tmp_path / "nerfs"))
    assert all(torch.equal(again[k], data[k]) for k in data)  # the kept renders
    info = train_view_head(str(tmp_path / "head"), steps=2, batch_size=8, dataset_size=16, held_out_size=16,
                           nerf_views=4, nerf_work_dir=str(tmp_path / "nerfs"), nerf_prompts=prompts)
    assert kept.stat().st_mtime_ns == before  # the kept fit was used, not refitted
    assert set(info["clean_janus_rate"]) == {"house", "mug"}
    assert info["nerf_views"] == {"per_fit": 4, "batch_share": 0.25, "fit_prompts": ["a green mug"], "fit_steps": 30}
    # the fitted mug's relief: its surface in front of the look-at point, nothing off the object
    relief, opacity = data["relief"][:, 0].float(), data["masks"][:, 0].float()
    assert (relief[covered] / opacity[covered]).mean() > 0.55 and relief[opacity < 10].max() < 0.1 * 255


def test_a_reference_nerf_learns_the_object_it_is_fitted_to(tmp_path):
    from lab.janus_floor import fit_reference_nerf

    small = ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12",
             "system.renderer.num_samples_per_ray=24"]
    system, losses = fit_reference_nerf("a red house", steps=64, overrides=small, save_dir=str(tmp_path))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    images, opacity = evaluation.render_views_with_opacity(system, views=janus.janus_cameras((0.0, 180.0)))
    covered = opacity[:, 0] > 0.5
    assert covered.float().mean() > 0.05, "the fitted NeRF is empty"
    r, g, b = (images[:, c][covered].mean() for c in range(3))
    assert r > g + 0.2 and r > b + 0.2, (r, g, b)  # red, as the procedural house it was fitted to
    again, losses_again = fit_reference_nerf("a red house", steps=64, overrides=small, save_dir=str(tmp_path))
    assert losses_again == losses  # the kept fit, not a new one
    assert torch.equal(evaluation.render_views_with_opacity(again, views=janus.janus_cameras((0.0, 180.0)))[0], images)
    # painted grainy (the grainy floor), the same settings otherwise: fitted again, to a darker house
    grainy, _ = fit_reference_nerf("a red house", steps=64, overrides=small, save_dir=str(tmp_path), grain=0.25)
    grainy_images = evaluation.render_views_with_opacity(grainy, views=janus.janus_cameras((0.0, 180.0)))[0]
    assert grainy_images[:, 0][covered].mean() < r - 0.05


def test_the_grain_texture_darkens_in_clumps_of_its_cell_size():
    from lab.janus_floor import GRAIN_CELL, GRAIN_DARKENING, grain_texture

    texture = grain_texture(0.25, seed=3)
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    factor = texture(points)
    assert torch.equal(factor, grain_texture(0.25, seed=3)(points))  # one texture per seed
    assert abs(factor.mean() - GRAIN_DARKENING) < 0.02 and 0.15 < factor.std() / GRAIN_DARKENING < 0.35

    def correlation(offset: float) -> float:
        return torch.corrcoef(torch.stack([factor, texture(points + offset)]))[0, 1].item()

    assert correlation(GRAIN_CELL / 6) > 0.8  # smooth within a clump
    assert abs(correlation(3 * GRAIN_CELL)) < 0.1  # independent a few clumps away
