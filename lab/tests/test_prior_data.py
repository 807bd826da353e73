"""The procedural data behind the embedded prior: cameras, shading, captions, multi-view sets."""

import math

import pytest
import torch

from threestudio_like.data.cameras import make_camera_batch, spherical_to_cartesian
from threestudio_like.guidance import prompt_processor as pp
from lab.priors import procedural as P


def fixed_cameras(azimuth_deg, elevation_deg=0.0, distance=2.0, fovy_deg=40.0, size=64, light=None):
    """Unperturbed cameras looking at the origin; light at the camera unless given."""
    azimuth = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1)
    n = azimuth.shape[0]
    elevation = torch.full((n,), float(elevation_deg))
    distances = torch.full((n,), float(distance))
    positions = spherical_to_cartesian(elevation, azimuth, distances)
    lights = positions.clone() if light is None else torch.as_tensor(light, dtype=torch.float32).expand(n, 3)
    return make_camera_batch(
        camera_positions=positions,
        center=torch.zeros_like(positions),
        up=torch.tensor([0.0, 0.0, 1.0]).expand(n, 3),
        fovy_deg=torch.full((n,), float(fovy_deg)),
        light_positions=lights,
        elevation_deg=elevation,
        azimuth_deg=azimuth,
        camera_distances=distances,
        height=size,
        width=size,
    )


def render(shape, colour, cameras, flat):
    n = cameras["rays_o"].shape[0]
    albedo = torch.tensor(P.COLOURS[colour]).expand(n, 3)
    shape_ids = torch.full((n,), P.SHAPE_NAMES.index(shape))
    return P.render_rays(shape_ids, albedo, cameras["rays_o"], cameras["rays_d"], cameras["light_positions"], torch.full((n,), flat))


def test_recipe_has_enough_shapes_and_colours():
    assert len(P.SHAPE_NAMES) >= 8 and len(P.COLOURS) >= 8
    for rgb in P.COLOURS.values():
        assert min(rgb) < 0.5, "no colour may be near white (the background)"


def test_batches_are_deterministic_and_seeded():
    a = P.render_batch(seed=3, index=1, batch_size=6)
    b = P.render_batch(seed=3, index=1, batch_size=6)
    c = P.render_batch(seed=4, index=1, batch_size=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.shape_ids, b.shape_ids) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (6, 3, 32, 32) and 0.0 <= a.images.min() and a.images.max() <= 1.0


def test_cameras_follow_the_recipe_ranges():
    batch = P.render_batch(seed=0, index=0, batch_size=32)
    assert batch.elevation.min() >= -10 and batch.elevation.max() <= 80
    assert batch.camera_distances.min() >= 1.5 and batch.camera_distances.max() <= 2.0
    assert batch.fovy.min() >= 40 and batch.fovy.max() <= 60


@pytest.mark.parametrize(
    "elevation, azimuth, expected",
    [
        (70, 0, "overhead"),
        (60.5, 170, "overhead"),  # overhead wins over back
        (60, 0, "front"),  # the threshold is strict
        (10, 44.9, "front"),
        (10, -44.9, "front"),
        (10, 45, "side"),
        (10, -90, "side"),
        (10, 135, "side"),
        (10, 135.5, "back"),
        (10, -179, "back"),
        (10, 200, "back"),  # wraps to -160
        (10, 330, "front"),  # wraps to -30
    ],
)
def test_view_names_follow_prompt_processor_thresholds(elevation, azimuth, expected):
    assert P.view_names(torch.tensor([float(elevation)]), torch.tensor([float(azimuth)])) == [expected]


def test_view_names_agree_with_the_prompt_processor():
    g = torch.Generator().manual_seed(0)
    elevation = torch.rand(500, generator=g) * 100 - 10
    azimuth = torch.rand(500, generator=g) * 720 - 360
    index = pp.view_direction_index(elevation, azimuth, pp.ViewThresholds())
    assert P.view_names(elevation, azimuth) == [pp.DIRECTION_NAMES[i] for i in index.tolist()]


def test_captions_and_caption_dropout():
    assert P.caption("red", "cube", "front") == "a red cube, front view"
    assert P.caption("red", "cube") == "a red cube"
    batch = P.render_batch(seed=1, index=0, batch_size=8)
    views = P.view_names(batch.elevation, batch.azimuth)
    for text, s, c, v in zip(batch.captions, batch.shape_ids, batch.colour_ids, views):
        assert text == f"a {P.COLOUR_NAMES[int(c)]} {P.SHAPE_NAMES[int(s)]}, {v} view"
        assert set(text.replace(",", " ").split()) <= set(P.CAPTION_WORDS)
    dropped = P.drop_captions(["a red cube"] * 20000, torch.Generator().manual_seed(0))
    share = sum(d == "" for d in dropped) / len(dropped)
    assert abs(share - P.EMPTY_CAPTION_PROBABILITY) < 0.01
    assert set(dropped) == {"", "a red cube"}


@pytest.mark.parametrize("colour", ["red", "cyan", "yellow"])
def test_flat_renders_show_the_exact_albedo(colour):
    rgb, mask = render("cube", colour, fixed_cameras([0.0, 90.0]), flat=True)
    albedo = torch.tensor(P.COLOURS[colour])
    covered = mask[..., 0] > 0
    assert covered.sum() > 200
    assert torch.allclose(rgb[covered], albedo.expand_as(rgb[covered]), atol=1e-6)
    assert torch.all(rgb[~covered] == 1.0)  # white background


def test_lit_shading_is_diffuse_with_point_light():
    """Sphere seen from +x: the centre pixel's normal is +x, so n.l = 1 with the light far
    along +x (full albedo) and 0 with it far behind (ambient only)."""
    albedo = torch.tensor(P.COLOURS["orange"])
    centre = (slice(None), slice(31, 33), slice(31, 33))
    front, _ = render("sphere", "orange", fixed_cameras([0.0], light=[1000.0, 0.0, 0.0]), flat=False)
    behind, _ = render("sphere", "orange", fixed_cameras([0.0], light=[-1000.0, 0.0, 0.0]), flat=False)
    pixel_front = front[centre].reshape(-1, 3).mean(0)
    pixel_behind = behind[centre].reshape(-1, 3).mean(0)
    assert torch.allclose(pixel_front, albedo * (P.AMBIENT + P.DIFFUSE), atol=2e-3)
    assert torch.allclose(pixel_behind, albedo * P.AMBIENT, atol=1e-4)


def test_sphere_silhouette_matches_its_projected_radius():
    distance, fovy, size = 2.0, 40.0, 64
    _, mask = render("sphere", "blue", fixed_cameras([30.0], elevation_deg=20.0, distance=distance, fovy_deg=fovy, size=size), flat=True)
    radius = 0.52  # sdf_sphere
    focal = 0.5 * size / math.tan(math.radians(fovy) / 2)
    expected_px = focal * math.tan(math.asin(radius / distance))
    measured_px = math.sqrt(mask.sum().item() / math.pi)
    assert abs(measured_px - expected_px) < 0.5, (measured_px, expected_px)


def test_house_door_faces_plus_x():
    rgb, _ = render("house", "yellow", fixed_cameras([0.0, 180.0], elevation_deg=5.0), flat=True)
    door = torch.tensor(P.COLOURS["yellow"]) * P.DOOR_DARKNESS
    door_pixels = (rgb - door).abs().amax(-1) < 1e-5
    assert door_pixels[0].sum() > 20  # seen from the front (azimuth 0)
    assert door_pixels[1].sum() == 0  # not from the back


def test_mug_handle_is_on_minus_y_left_in_front_view():
    _, mask = render("mug", "red", fixed_cameras([0.0, 180.0]), flat=True)
    columns = torch.arange(64, dtype=torch.float32) + 0.5
    centroid = (mask[..., 0].sum(1) * columns).sum(-1) / mask[..., 0].sum((1, 2))
    assert centroid[0] < 31.5  # handle on the image's left from the front
    assert centroid[1] > 32.5  # and on the right from the back


def test_side_features_are_the_door_and_the_handle_where_they_show():
    def features(shape, azimuths):
        cameras = fixed_cameras(azimuths, elevation_deg=5.0)
        n = len(azimuths)
        rgb, _ = render(shape, "yellow", cameras, flat=True)
        out = torch.zeros(n, 64, 64, 1)
        P.render_rays(torch.full((n,), P.SHAPE_NAMES.index(shape)), torch.tensor(P.COLOURS["yellow"]).expand(n, 3),
                      cameras["rays_o"], cameras["rays_d"], cameras["light_positions"], torch.full((n,), True), out)
        return rgb, out[..., 0] > 0

    rgb, door = features("house", [0.0, 180.0])
    dark = (rgb - torch.tensor(P.COLOURS["yellow"]) * P.DOOR_DARKNESS).abs().amax(-1) < 1e-5
    assert torch.equal(door, dark) and door[0].sum() > 20 and door[1].sum() == 0  # the door, seen from the front only
    _, handle = features("mug", [0.0, -90.0, 90.0])
    assert handle[0].sum() > 20 and handle[1].sum() > handle[0].sum()  # beside the cup from the front, full on from -y
    assert handle[2].sum() == 0  # hidden behind the cup from +y
    assert not features("cube", [0.0])[1].any()
    batch = P.render_batch(seed=0, index=0, batch_size=8)
    assert batch.side_features.shape == batch.masks.shape and (batch.side_features <= batch.masks + 1e-6).all()


def test_multi_view_set_spacing():
    mv = P.multi_view_set("house", "green", torch.Generator().manual_seed(5))
    steps = torch.remainder(mv.azimuth[1:] - mv.azimuth[:-1], 360.0)
    assert torch.allclose(steps, torch.full_like(steps, 90.0), atol=1e-4)
    assert torch.all(mv.azimuth >= -180) and torch.all(mv.azimuth < 180)
    for values in (mv.elevation, mv.camera_distances, mv.fovy):
        assert torch.all(values == values[0])
    positions = mv.c2w[:, :3, 3]
    assert torch.allclose(positions, spherical_to_cartesian(mv.elevation, mv.azimuth, mv.camera_distances), atol=1e-5)
    looking = -mv.c2w[:, :3, 2]  # cameras look down -z, at the origin
    assert torch.allclose(looking, -positions / positions.norm(dim=-1, keepdim=True), atol=1e-5)
    assert mv.images.shape == (4, 3, 32, 32)
    assert (mv.images[0] - mv.images[2]).abs().max() > 0.1  # front and back of a house differ
    assert len(mv.captions) == 4 and all(c.startswith("a green house, ") for c in mv.captions)
    other = P.multi_view_set("house", "green", torch.Generator().manual_seed(6))
    assert not torch.allclose(other.azimuth, mv.azimuth)
