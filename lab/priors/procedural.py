"""Procedural training data for the embedded prior: coloured analytic shapes, captioned.

Every image is a 32 x 32 render of one object (a shape in a colour) on a white background,
seen from a camera drawn exactly like the ``random-camera-datamodule`` (so the prior knows the
views a NeRF is rendered from during score distillation) and shaded like the
``diffuse-with-point-light`` material (so renders of a good 3D object look like training data).
Captions are ``"a {colour} {shape}"`` plus the prompt processor's view suffix.

Rendering is sphere tracing of signed distance functions in batched PyTorch, at ``SUPERSAMPLE``
times the resolution, average-pooled for antialiasing. Normals come from the SDF gradient.

All the recipe's choices live in the constants below, in one place, so the training script,
the classifier, the evaluation and the CPU recipes agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from threestudio_like.data.cameras import make_camera_batch, spherical_to_cartesian
from threestudio_like.data.random_camera import RandomCameraSampler, step_seed
from threestudio_like.data.random_multiview import MultiviewCameraSampler
from threestudio_like.utils.typing import Bool, CameraBatch, Float, Int, Tensor

# --------------------------------------------------------------------------- the recipe
IMAGE_SIZE = 32  # pixel-space prior: the UNet sees 32 x 32 RGB, no VAE
SUPERSAMPLE = 2  # render at 64 x 64, average-pool to 32 x 32 (antialiasing)
OBJECT_RADIUS = 0.6  # every object fits in a sphere of about this radius around the origin
BACKGROUND_RGB = (1.0, 1.0, 1.0)  # the CPU recipes use a white solid-colour background

# The camera distribution of the training data: the random-camera data module with these
# ranges (perturbations and light sampling at the module's defaults). A wide elevation range
# matters: below ~45 degrees a torus's hole is never seen through, so SDS paints it on instead.
CAMERA_CONFIG: dict = {
    "elevation_range": (-10.0, 80.0),
    "azimuth_range": (-180.0, 180.0),
    "camera_distance_range": (1.5, 2.0),
    "fovy_range": (40.0, 60.0),
    "light_sample_strategy": "dreamfusion",
}

# The multi-view prior's training groups: the mvdream-cpu recipe's data module draws these
# (4 views a group, 90 degrees apart, shared elevation / distance / fovy; MVDream's relative
# radius, so the object fills the same share of every view; no perturbations).
N_VIEW = 4
MULTIVIEW_CAMERA_CONFIG: dict = {
    "n_view": N_VIEW,
    "elevation_range": CAMERA_CONFIG["elevation_range"],
    "azimuth_range": CAMERA_CONFIG["azimuth_range"],
    "relative_radius": True,
    "camera_distance_range": (0.8, 1.0),
    "fovy_range": CAMERA_CONFIG["fovy_range"],
    "camera_perturb": 0.0,
    "center_perturb": 0.0,
    "up_perturb": 0.0,
    "light_sample_strategy": "dreamfusion",
}

# Shading of diffuse-with-point-light: albedo * (AMBIENT + DIFFUSE * max(n.l, 0)).
AMBIENT = 0.1
DIFFUSE = 0.9
# A NeRF renders plain albedo during its first steps and with probability ~0.25 later; this
# share of the training images is plain albedo ("flat") so the prior accepts both.
FLAT_SHADING_PROBABILITY = 0.3
# Share of captions replaced by "" during training, for classifier-free guidance.
EMPTY_CAPTION_PROBABILITY = 0.1

# View suffix thresholds: the prompt processor's defaults (degrees).
FRONT_THRESHOLD = 45.0  # |azimuth| < 45 -> front
BACK_THRESHOLD = 45.0  # |azimuth| > 180 - 45 -> back
OVERHEAD_THRESHOLD = 60.0  # elevation > 60 -> overhead, whatever the azimuth
VIEW_NAMES: tuple[str, ...] = ("front", "side", "back", "overhead")

# Albedos (linear RGB in [0, 1]); nothing near white, which would vanish on the background.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.22, 0.90),
    "yellow": (0.95, 0.85, 0.08),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.00, 0.50, 0.05),
    "pink": (1.00, 0.45, 0.72),
    "cyan": (0.08, 0.80, 0.85),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Shapes. The front of every object faces +x (a camera at azimuth 0 sees it). Two shapes have
# a front that shows: the "house" has its gable and a dark door on the +x face; the "mug" has
# its handle on the -y side, so it is on the left in a front view and on the right from behind.
SHAPE_NAMES: tuple[str, ...] = ("cube", "sphere", "cone", "cylinder", "torus", "pyramid", "house", "mug")

DOOR_DARKNESS = 0.2  # albedo multiplier on the house's door

# Sphere tracing
_TRACE_STEPS = 72
_HIT_EPSILON = 2e-3
_BOUND_RADIUS = OBJECT_RADIUS + 0.15  # rays that miss this sphere are background
_NORMAL_EPSILON = 1e-3

# The vocabulary of every caption (for the tokenizer and the prompt processor's warning).
CAPTION_WORDS: tuple[str, ...] = ("a", *COLOUR_NAMES, *SHAPE_NAMES, *VIEW_NAMES, "view")


# --------------------------------------------------------------------------- signed distances
def _sdf_box(p: Float[Tensor, "N 3"], half: Sequence[float]) -> Float[Tensor, "N"]:
    q = p.abs() - p.new_tensor(half)
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


def _sdf_revolved(q: Float[Tensor, "N"], z: Float[Tensor, "N"], polyline: Sequence[tuple[float, float]], inside: Bool[Tensor, "N"]) -> Float[Tensor, "N"]:
    """Exact SDF of a solid of revolution about z whose surface profile in the (radius, z)
    half-plane is ``polyline``; ``inside`` says which points are in the solid."""
    points = torch.stack([q, z], dim=-1)
    dist = None
    for a, b in zip(polyline[:-1], polyline[1:]):
        a_t, b_t = q.new_tensor(a), q.new_tensor(b)
        ab = b_t - a_t
        h = ((points - a_t) @ ab / ab.dot(ab)).clamp(0, 1)
        d = (points - a_t - h[:, None] * ab).norm(dim=-1)
        dist = d if dist is None else torch.minimum(dist, d)
    return torch.where(inside, -dist, dist)


def _sdf_cylinder(p: Float[Tensor, "N 3"], radius: float, z_low: float, z_high: float) -> Float[Tensor, "N"]:
    q = p[:, :2].norm(dim=-1)
    centre, half = (z_low + z_high) / 2, (z_high - z_low) / 2
    d = torch.stack([q - radius, (p[:, 2] - centre).abs() - half], dim=-1)
    return d.clamp_min(0).norm(dim=-1) + d.max(dim=-1).values.clamp_max(0)


def _sdf_torus_z(p: Float[Tensor, "N 3"], major: float, minor: float) -> Float[Tensor, "N"]:
    """Torus lying in the xy plane (hole along z)."""
    q = torch.stack([p[:, :2].norm(dim=-1) - major, p[:, 2]], dim=-1)
    return q.norm(dim=-1) - minor


def _sdf_planes(p: Float[Tensor, "N 3"], normals: Sequence[Sequence[float]], offsets: Sequence[float]) -> Float[Tensor, "N"]:
    """Convex polytope {x: n_i . x <= o_i}: exact inside, a lower bound outside (safe to trace)."""
    n = F.normalize(p.new_tensor(normals), dim=-1)
    o = p.new_tensor(offsets) * p.new_tensor(normals).norm(dim=-1).reciprocal()
    return (p @ n.T - o).max(dim=-1).values


def sdf_sphere(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    return p.norm(dim=-1) - 0.52


def sdf_cube(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    return _sdf_box(p, (0.34, 0.34, 0.34))


_CONE_BASE_Z, _CONE_APEX_Z, _CONE_RADIUS = -0.4, 0.5, 0.42


def sdf_cone(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    q, z = p[:, :2].norm(dim=-1), p[:, 2]
    height = _CONE_APEX_Z - _CONE_BASE_Z
    inside = (z > _CONE_BASE_Z) & (q < _CONE_RADIUS * (_CONE_APEX_Z - z) / height)
    profile = [(0.0, _CONE_BASE_Z), (_CONE_RADIUS, _CONE_BASE_Z), (0.0, _CONE_APEX_Z)]
    return _sdf_revolved(q, z, profile, inside)


def sdf_cylinder(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    return _sdf_cylinder(p, 0.32, -0.45, 0.45)


def sdf_torus(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    return _sdf_torus_z(p, 0.4, 0.15)


_PYRAMID_HALF, _PYRAMID_BASE_Z, _PYRAMID_APEX_Z = 0.42, -0.35, 0.45


def sdf_pyramid(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    # A face through the base edge x = a (z = base) and the apex (0, 0, apex): normal (h, 0, a).
    a, h = _PYRAMID_HALF, _PYRAMID_APEX_Z - _PYRAMID_BASE_Z
    normals = [(h, 0, a), (-h, 0, a), (0, h, a), (0, -h, a), (0, 0, -1)]
    offsets = [a * _PYRAMID_APEX_Z] * 4 + [-_PYRAMID_BASE_Z]
    return _sdf_planes(p, normals, offsets)


# House: body box with the ridge of a gable roof along x, so the gable faces the front (+x).
_HOUSE_HALF_X, _HOUSE_HALF_Y = 0.32, 0.30
_HOUSE_BOTTOM_Z, _HOUSE_EAVES_Z, _HOUSE_RIDGE_Z = -0.40, 0.08, 0.42
_HOUSE_ROOF_OVERHANG = 0.05
_DOOR_HALF_WIDTH, _DOOR_TOP_Z = 0.08, -0.12


def sdf_house(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    centre_z = (_HOUSE_BOTTOM_Z + _HOUSE_EAVES_Z) / 2
    body = _sdf_box(p - p.new_tensor([0, 0, centre_z]), (_HOUSE_HALF_X, _HOUSE_HALF_Y, (_HOUSE_EAVES_Z - _HOUSE_BOTTOM_Z) / 2))
    w = _HOUSE_HALF_Y + _HOUSE_ROOF_OVERHANG
    rise = _HOUSE_RIDGE_Z - _HOUSE_EAVES_Z
    # slope through (y = +-w, z = eaves) and (y = 0, z = ridge): normal (0, +-rise, w)
    normals = [(0, rise, w), (0, -rise, w), (0, 0, -1), (1, 0, 0), (-1, 0, 0)]
    offsets = [w * _HOUSE_RIDGE_Z, w * _HOUSE_RIDGE_Z, -_HOUSE_EAVES_Z, _HOUSE_HALF_X + 0.03, _HOUSE_HALF_X + 0.03]
    roof = _sdf_planes(p, normals, offsets)
    return torch.minimum(body, roof)


_MUG_OUTER, _MUG_INNER, _MUG_BOTTOM_Z, _MUG_TOP_Z, _MUG_FLOOR = 0.30, 0.25, -0.38, 0.32, 0.06
_HANDLE_MAJOR, _HANDLE_MINOR, _HANDLE_Z = 0.17, 0.055, -0.02


def sdf_mug(p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    outer = _sdf_cylinder(p, _MUG_OUTER, _MUG_BOTTOM_Z, _MUG_TOP_Z)
    hollow = _sdf_cylinder(p, _MUG_INNER, _MUG_BOTTOM_Z + _MUG_FLOOR, _MUG_TOP_Z + 0.2)
    cup = torch.maximum(outer, -hollow)
    # Handle: a torus in the yz plane centred on the -y wall; its inner half is cut off
    # inside the wall so it does not poke into the cup.
    local = p - p.new_tensor([0.0, -_MUG_OUTER, _HANDLE_Z])
    ring = torch.stack([local[:, 1:].norm(dim=-1) - _HANDLE_MAJOR, local[:, 0]], dim=-1).norm(dim=-1) - _HANDLE_MINOR
    handle = torch.maximum(ring, local[:, 1] - 0.02)
    return torch.minimum(cup, handle)


SHAPE_SDFS: dict[str, Callable[[Tensor], Tensor]] = {
    "cube": sdf_cube,
    "sphere": sdf_sphere,
    "cone": sdf_cone,
    "cylinder": sdf_cylinder,
    "torus": sdf_torus,
    "pyramid": sdf_pyramid,
    "house": sdf_house,
    "mug": sdf_mug,
}
assert tuple(SHAPE_SDFS) == SHAPE_NAMES


def _house_door(p: Float[Tensor, "N 3"]) -> Bool[Tensor, "N"]:
    return (p[:, 0] > _HOUSE_HALF_X - 0.01) & (p[:, 1].abs() < _DOOR_HALF_WIDTH) & (p[:, 2] < _DOOR_TOP_Z)


def albedo_factor(shape: str, p: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    """Surface markings, as a multiplier on the albedo at surface points ``p``."""
    factor = torch.ones_like(p[:, 0])
    if shape == "house":
        factor = torch.where(_house_door(p), torch.full_like(factor, DOOR_DARKNESS), factor)
    return factor


def side_features(shape: str, p: Float[Tensor, "N 3"]) -> Bool[Tensor, "N"]:
    """Surface points on what tells an object's sides apart: the house's door, the mug's handle."""
    if shape == "house":
        return _house_door(p)
    if shape == "mug":
        return p[:, 1] < -_MUG_OUTER - 0.005  # the handle stands off the -y wall
    return torch.zeros_like(p[:, 0], dtype=torch.bool)


# --------------------------------------------------------------------------- rendering
def _sdf_normals(sdf: Callable[[Tensor], Tensor], p: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """Unit outward normals: central differences of the SDF."""
    eye = torch.eye(3, dtype=p.dtype, device=p.device) * _NORMAL_EPSILON
    grads = [sdf(p + eye[i]) - sdf(p - eye[i]) for i in range(3)]
    return F.normalize(torch.stack(grads, dim=-1), dim=-1)


def _trace(sdf: Callable[[Tensor], Tensor], origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"]) -> tuple[Bool[Tensor, "N"], Float[Tensor, "N 3"]]:
    """Sphere tracing inside the bounding sphere: (hit mask, hit points)."""
    # Ray / bounding sphere: |o + t d|^2 = R^2 with |d| = 1
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - _BOUND_RADIUS**2
    disc = b * b - c
    enters = disc > 0
    root = disc.clamp_min(0).sqrt()
    t = (-b - root).clamp_min(0)
    t_far = -b + root
    active = enters.clone()
    hit = torch.zeros_like(enters)
    for _ in range(_TRACE_STEPS):
        idx = active.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            break
        d = sdf(origins[idx] + t[idx, None] * dirs[idx])
        t[idx] = t[idx] + d
        now_hit = d < _HIT_EPSILON
        hit[idx[now_hit]] = True
        active[idx[now_hit | (t[idx] > t_far[idx])]] = False
    # the last step may have moved a nearly converged ray: accept it if it is on the surface
    idx = active.nonzero(as_tuple=True)[0]
    if idx.numel():
        hit[idx] = sdf(origins[idx] + t[idx, None] * dirs[idx]).abs() < 4 * _HIT_EPSILON
    return hit, origins + t[:, None] * dirs


def shade(
    albedo: Float[Tensor, "N 3"],
    normals: Float[Tensor, "N 3"],
    points: Float[Tensor, "N 3"],
    light_positions: Float[Tensor, "N 3"],
    flat: Bool[Tensor, "N"],
) -> Float[Tensor, "N 3"]:
    """diffuse-with-point-light: albedo * (ambient + diffuse * max(n.l, 0)); plain albedo where ``flat``."""
    to_light = F.normalize(light_positions - points, dim=-1)
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp_min(0)
    lit = albedo * (AMBIENT + DIFFUSE * lambert)
    return torch.where(flat[:, None], albedo, lit)


def render_rays(
    shape_ids: Int[Tensor, "B"],
    albedo: Float[Tensor, "B 3"],
    rays_o: Float[Tensor, "B H W 3"],
    rays_d: Float[Tensor, "B H W 3"],
    light_positions: Float[Tensor, "B 3"],
    flat: Bool[Tensor, "B"],
    features: Optional[Float[Tensor, "B H W 1"]] = None,
    depth: Optional[Float[Tensor, "B H W 1"]] = None,
    texture: Optional[Callable[[Tensor], Tensor]] = None,
) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 1"]]:
    """Render one object per view at the rays' resolution: (rgb on white, coverage mask).
    ``features``, when given, is filled with 1 where a ray hits a ``side_features`` point;
    ``depth`` with the distance from the ray's origin to its hit (0 where it misses, as the
    renderers blend depth onto 0). ``texture`` maps surface points [N, 3] to a further albedo
    factor [N]."""
    B, H, W, _ = rays_o.shape
    n = H * W
    rgb = rays_o.new_tensor(BACKGROUND_RGB).repeat(B * n, 1)
    mask = torch.zeros(B * n, dtype=torch.bool, device=rays_o.device)
    for output in (features, depth):
        if output is not None:
            output.zero_()
    origins, dirs = rays_o.reshape(-1, 3), F.normalize(rays_d.reshape(-1, 3), dim=-1)
    view_of_ray = torch.arange(B, device=rays_o.device).repeat_interleave(n)
    for shape_index, name in enumerate(SHAPE_NAMES):
        views = (shape_ids == shape_index).nonzero(as_tuple=True)[0]
        if views.numel() == 0:
            continue
        rays = (views[:, None] * n + torch.arange(n, device=rays_o.device)).reshape(-1)
        sdf = SHAPE_SDFS[name]
        hit, points = _trace(sdf, origins[rays], dirs[rays])
        rays, points = rays[hit], points[hit]
        view = view_of_ray[rays]
        surface_albedo = albedo[view] * albedo_factor(name, points)[:, None]
        if texture is not None:
            surface_albedo = (surface_albedo * texture(points)[:, None]).clamp(0, 1)
        rgb[rays] = shade(surface_albedo, _sdf_normals(sdf, points), points, light_positions[view], flat[view])
        mask[rays] = True
        if features is not None:
            features.view(-1)[rays] = side_features(name, points).to(features.dtype)
        if depth is not None:
            depth.view(-1)[rays] = (points - origins[rays]).norm(dim=-1).to(depth.dtype)
    return rgb.view(B, H, W, 3), mask.view(B, H, W, 1).float()


def downsample(image: Float[Tensor, "B H W C"], factor: int = SUPERSAMPLE) -> Float[Tensor, "B C h w"]:
    """Average-pool a supersampled render to the training resolution (channels first)."""
    return F.avg_pool2d(image.permute(0, 3, 1, 2), factor)


def render_cameras(
    shape_ids: Int[Tensor, "B"], colour_ids: Int[Tensor, "B"], cameras: CameraBatch, flat: Bool[Tensor, "B"],
    features: Optional[Float[Tensor, "B 1 h w"]] = None,
    depth: Optional[Float[Tensor, "B 1 h w"]] = None,
) -> tuple[Float[Tensor, "B 3 h w"], Float[Tensor, "B 1 h w"]]:
    """Render objects seen by ``cameras`` (given at ``SUPERSAMPLE`` x the output size): images in [0, 1],
    masks; ``features``, when given, receives the coverage of their ``side_features``, ``depth``
    the hit distance blended onto 0 (divide by the mask for the depth of covered pixels)."""
    albedo = torch.tensor([COLOURS[COLOUR_NAMES[int(i)]] for i in colour_ids], dtype=torch.float32)
    pixels = cameras["rays_o"][..., :1]
    hit_features = torch.zeros_like(pixels) if features is not None else None
    hit_depth = torch.zeros_like(pixels) if depth is not None else None
    rgb, mask = render_rays(shape_ids, albedo, cameras["rays_o"], cameras["rays_d"], cameras["light_positions"], flat,
                            hit_features, hit_depth)
    for output, full in ((features, hit_features), (depth, hit_depth)):
        if output is not None:
            output.copy_(downsample(full))
    return downsample(rgb), downsample(mask)


# --------------------------------------------------------------------------- captions
def view_names(elevation: Float[Tensor, "B"], azimuth: Float[Tensor, "B"]) -> list[str]:
    """The prompt processor's view direction for each camera, by its own rule and thresholds."""
    from threestudio_like.guidance.prompt_processor import DIRECTION_NAMES, ViewThresholds, view_direction_index

    thresholds = ViewThresholds(FRONT_THRESHOLD, BACK_THRESHOLD, OVERHEAD_THRESHOLD)
    index = view_direction_index(torch.as_tensor(elevation, dtype=torch.float32), torch.as_tensor(azimuth, dtype=torch.float32), thresholds)
    return [DIRECTION_NAMES[i] for i in index.tolist()]


def caption(colour: str, shape: str, view: Optional[str] = None) -> str:
    """``"a red cube"`` or with a view ``"a red cube, front view"`` (the prompt processor's suffix)."""
    text = f"a {colour} {shape}"
    return f"{text}, {view} view" if view else text


def drop_captions(captions: Sequence[str], generator: torch.Generator, p: float = EMPTY_CAPTION_PROBABILITY) -> list[str]:
    """Replace each caption by "" with probability ``p`` (classifier-free guidance training)."""
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


# --------------------------------------------------------------------------- datasets
@dataclass
class ProceduralBatch:
    """N rendered, labelled views. ``images`` in [0, 1], channels first."""

    images: Float[Tensor, "N 3 32 32"]
    masks: Float[Tensor, "N 1 32 32"]
    side_features: Float[Tensor, "N 1 32 32"]  # coverage of what tells the sides apart (door, handle)
    shape_ids: Int[Tensor, "N"]
    colour_ids: Int[Tensor, "N"]
    flat: Bool[Tensor, "N"]
    elevation: Float[Tensor, "N"]
    azimuth: Float[Tensor, "N"]
    camera_distances: Float[Tensor, "N"]
    fovy: Float[Tensor, "N"]
    c2w: Float[Tensor, "N 4 4"]

    @property
    def captions(self) -> list[str]:
        views = view_names(self.elevation, self.azimuth)
        return [caption(COLOUR_NAMES[int(c)], SHAPE_NAMES[int(s)], v) for s, c, v in zip(self.shape_ids, self.colour_ids, views)]

    @property
    def object_captions(self) -> list[str]:
        """Captions without a view suffix (a multi-view prior is told the view by its camera)."""
        return [caption(COLOUR_NAMES[int(c)], SHAPE_NAMES[int(s)]) for s, c in zip(self.shape_ids, self.colour_ids)]

    def __len__(self) -> int:
        return int(self.shape_ids.shape[0])

    @staticmethod
    def concatenate(batches: Sequence["ProceduralBatch"]) -> "ProceduralBatch":
        fields = ProceduralBatch.__dataclass_fields__
        return ProceduralBatch(**{k: torch.cat([getattr(b, k) for b in batches]) for k in fields})


def camera_sampler(batch_size: int, seed: int, image_size: int = IMAGE_SIZE) -> RandomCameraSampler:
    """The training camera distribution (``CAMERA_CONFIG``) at the supersampled resolution."""
    size = image_size * SUPERSAMPLE
    return RandomCameraSampler({**CAMERA_CONFIG, "height": size, "width": size, "batch_size": batch_size}, seed=seed)


def multiview_camera_sampler(batch_size: int, seed: int, image_size: int = IMAGE_SIZE) -> MultiviewCameraSampler:
    """The multi-view training groups (``MULTIVIEW_CAMERA_CONFIG``) at the supersampled resolution."""
    size = image_size * SUPERSAMPLE
    return MultiviewCameraSampler({**MULTIVIEW_CAMERA_CONFIG, "height": size, "width": size, "batch_size": batch_size}, seed=seed)


def render_batch(seed: int, index: int, batch_size: int, n_view: int = 1) -> ProceduralBatch:
    """Batch ``index`` of the dataset with ``seed``: a pure function of (seed, index).

    ``n_view > 1``: ``batch_size / n_view`` groups, each one object seen by one group of the
    multi-view cameras (views adjacent)."""
    if n_view == 1:
        cameras = camera_sampler(batch_size, seed).sample(index)
    else:
        cameras = multiview_camera_sampler(batch_size, seed).sample(index)
    g = torch.Generator().manual_seed(step_seed(seed + 7919, index))  # labels: a stream apart from the cameras'
    objects = batch_size // n_view
    shape_ids = torch.randint(len(SHAPE_NAMES), (objects,), generator=g).repeat_interleave(n_view)
    colour_ids = torch.randint(len(COLOUR_NAMES), (objects,), generator=g).repeat_interleave(n_view)
    flat = (torch.rand(objects, generator=g) < FLAT_SHADING_PROBABILITY).repeat_interleave(n_view)
    features = torch.zeros(batch_size, 1, IMAGE_SIZE, IMAGE_SIZE)
    images, masks = render_cameras(shape_ids, colour_ids, cameras, flat, features)
    return ProceduralBatch(
        images=images,
        masks=masks,
        side_features=features,
        shape_ids=shape_ids,
        colour_ids=colour_ids,
        flat=flat,
        elevation=cameras["elevation"],
        azimuth=cameras["azimuth"],
        camera_distances=cameras["camera_distances"],
        fovy=cameras["fovy"],
        c2w=cameras["c2w"],
    )


def generate_dataset(
    n_images: int, seed: int = 0, batch_size: int = 256, progress: Optional[Callable[[int, int], None]] = None, n_view: int = 1
) -> ProceduralBatch:
    """``n_images`` labelled renders (in groups of ``n_view``); deterministic in (n_images, seed, batch_size)."""
    if n_images <= 0 or n_images % n_view or batch_size % n_view:
        raise ValueError(f"generate_dataset: n_images ({n_images}) and batch_size ({batch_size}) must be positive multiples of n_view ({n_view})")
    batches = []
    for index in range(math.ceil(n_images / batch_size)):
        size = min(batch_size, n_images - index * batch_size)
        batches.append(render_batch(seed, index, size, n_view))
        if progress is not None:
            progress(index * batch_size + size, n_images)
    return ProceduralBatch.concatenate(batches)


@dataclass
class MultiViewSet:
    """``n_views`` renders of one object from evenly spaced azimuths (same elevation, distance,
    fovy and world-fixed light), looking at the origin without perturbation."""

    images: Float[Tensor, "V 3 32 32"]
    c2w: Float[Tensor, "V 4 4"]
    fovy: Float[Tensor, "V"]
    elevation: Float[Tensor, "V"]
    azimuth: Float[Tensor, "V"]
    camera_distances: Float[Tensor, "V"]
    captions: list[str]


def multi_view_set(shape: str, colour: str, generator: torch.Generator, n_views: int = 4, flat: bool = False) -> MultiViewSet:
    """Views of ``colour shape`` at azimuths start + k * 360 / n_views (random start), for a multi-view prior."""
    if shape not in SHAPE_NAMES or colour not in COLOURS:
        raise ValueError(f"multi_view_set: unknown shape {shape!r} or colour {colour!r}; shapes: {SHAPE_NAMES}, colours: {COLOUR_NAMES}")
    def uniform(low: float, high: float) -> float:
        return float(torch.rand((), generator=generator)) * (high - low) + low

    start = uniform(*CAMERA_CONFIG["azimuth_range"])
    azimuth = torch.remainder(start + 180.0 + torch.arange(n_views) * (360.0 / n_views), 360.0) - 180.0
    elevation = torch.full((n_views,), uniform(*CAMERA_CONFIG["elevation_range"]))
    distance = torch.full((n_views,), uniform(*CAMERA_CONFIG["camera_distance_range"]))
    fovy = torch.full((n_views,), uniform(*CAMERA_CONFIG["fovy_range"]))
    positions = spherical_to_cartesian(elevation, azimuth, distance)
    light = positions[:1] + torch.randn(1, 3, generator=generator)  # dreamfusion-style, shared by all views
    light = F.normalize(light, dim=-1) * uniform(0.8, 1.5)
    size = IMAGE_SIZE * SUPERSAMPLE
    cameras = make_camera_batch(
        camera_positions=positions,
        center=torch.zeros_like(positions),
        up=torch.tensor([0.0, 0.0, 1.0]).expand_as(positions),
        fovy_deg=fovy,
        light_positions=light.expand(n_views, 3),
        elevation_deg=elevation,
        azimuth_deg=azimuth,
        camera_distances=distance,
        height=size,
        width=size,
    )
    shape_ids = torch.full((n_views,), SHAPE_NAMES.index(shape))
    colour_ids = torch.full((n_views,), COLOUR_NAMES.index(colour))
    images, _ = render_cameras(shape_ids, colour_ids, cameras, torch.full((n_views,), flat))
    views = view_names(elevation, azimuth)
    return MultiViewSet(images, cameras["c2w"], fovy, elevation, azimuth, distance, [caption(colour, shape, v) for v in views])


def contact_sheet(images: Float[Tensor, "N 3 h w"], columns: int = 16, scale: int = 2) -> Tensor:
    """Tile images into one ``[H, W, 3]`` picture (nearest-neighbour upscaled) for looking at."""
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    sheet = torch.ones(rows * (h + 1), columns * (w + 1), 3) * 0.5
    for i in range(n):
        r, col = divmod(i, columns)
        sheet[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = images[i].permute(1, 2, 0).clamp(0, 1)
    return sheet.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
