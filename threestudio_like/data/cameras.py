"""Camera math: pixel rays, OpenGL projection, look-at poses, spherical coordinates, eval orbits.

Conventions (shared by every part):
- camera space is OpenGL: +x right, +y up, the camera looks down -z;
- world space has +z up; azimuth 0 puts the camera on +x, azimuth 90 on +y, elevation
  is the angle above the xy plane; angles are degrees unless a name says ``_rad``;
- ``c2w`` is camera-to-world ``[B,4,4]``; image row 0 is the top of the image.

All functions are batched, differentiable where it makes sense and device-agnostic
(outputs follow the device / dtype of their tensor inputs).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from threestudio_like.utils.typing import CameraBatch, Float, Int, Tensor

Focal = Union[float, Sequence[float]]


def get_ray_directions(
    H: int,
    W: int,
    focal: Focal,
    principal: Optional[Sequence[float]] = None,
    device: Optional[torch.device | str] = None,
) -> Float[Tensor, "H W 3"]:
    """Camera-space direction (not normalised, z = -1) through each pixel centre.

    ``focal`` is one focal length in pixels or ``(fx, fy)``; ``principal`` is ``(cx, cy)`` in
    pixels, the image centre by default. Pixel ``(row j, col i)`` has centre ``(i + 0.5, j + 0.5)``.
    """
    fx, fy = (float(focal), float(focal)) if isinstance(focal, (int, float)) else (float(focal[0]), float(focal[1]))
    cx, cy = (W / 2.0, H / 2.0) if principal is None else (float(principal[0]), float(principal[1]))
    rows, cols = torch.meshgrid(
        torch.arange(H, dtype=torch.float32, device=device) + 0.5,
        torch.arange(W, dtype=torch.float32, device=device) + 0.5,
        indexing="ij",
    )
    return directions_from_pixels(cols, rows, fx, fy, cx, cy)


def focal_from_fovy(fovy_rad: Float[Tensor, "B"], height: int) -> Float[Tensor, "B"]:
    """Focal length in pixels for a vertical field of view over ``height`` pixels."""
    return 0.5 * height / torch.tan(0.5 * fovy_rad)


def get_rays(
    directions: Float[Tensor, "... H W 3"],
    c2w: Float[Tensor, "B 4 4"],
    normalize: bool = True,
) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
    """World-space ray origins and directions for camera-space ``directions``.

    ``directions`` is ``[H,W,3]`` (shared by all cameras) or ``[B,H,W,3]``.
    """
    if c2w.ndim != 3 or c2w.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"get_rays: c2w must be [B,4,4] (or [B,3,4]), got shape {tuple(c2w.shape)}")
    if directions.ndim == 3:
        directions = directions[None]
    if directions.ndim != 4 or directions.shape[-1] != 3:
        raise ValueError(f"get_rays: directions must be [H,W,3] or [B,H,W,3], got shape {tuple(directions.shape)}")
    rotation = c2w[:, None, None, :3, :3]  # [B,1,1,3,3]
    rays_d = (rotation @ directions[..., None])[..., 0]
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    return rays_o, rays_d


def get_projection_matrix(
    fovy_rad: Float[Tensor, "B"], aspect: float, near: float = 0.01, far: float = 100.0
) -> Float[Tensor, "B 4 4"]:
    """OpenGL perspective projection (camera space -> clip space), y up.

    ``aspect`` is width / height. After the perspective divide a visible point has
    x, y, z in [-1, 1]; NDC y = +1 is the top image row.
    """
    fovy_rad = torch.as_tensor(fovy_rad, dtype=torch.float32).reshape(-1)
    inv_tan = 1.0 / torch.tan(fovy_rad / 2.0)
    proj = torch.zeros(fovy_rad.shape[0], 4, 4, dtype=fovy_rad.dtype, device=fovy_rad.device)
    proj[:, 0, 0] = inv_tan / aspect
    proj[:, 1, 1] = inv_tan
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def get_mvp_matrix(c2w: Float[Tensor, "B 4 4"], proj: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """World -> clip space: ``proj @ inverse(c2w)``, at least float32 even under autocast (depth precision)."""
    dtype = torch.promote_types(torch.promote_types(c2w.dtype, proj.dtype), torch.float32)
    with torch.autocast(device_type=c2w.device.type, enabled=False):
        return proj.to(dtype) @ rigid_inverse(c2w.to(dtype))


def rigid_inverse(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """Inverse of a rotation + translation matrix (exact and cheaper than a general inverse)."""
    rotation_t = c2w[:, :3, :3].transpose(1, 2)
    w2c = torch.zeros_like(c2w)
    w2c[:, :3, :3] = rotation_t
    w2c[:, :3, 3] = -(rotation_t @ c2w[:, :3, 3:4])[..., 0]
    w2c[:, 3, 3] = 1.0
    return w2c


def spherical_to_cartesian(
    elevation_deg: Float[Tensor, "B"], azimuth_deg: Float[Tensor, "B"], distance: Float[Tensor, "B"]
) -> Float[Tensor, "B 3"]:
    """Points at ``distance`` from the origin; azimuth 0 on +x, 90 on +y; elevation 90 on +z."""
    elevation = torch.deg2rad(elevation_deg)
    azimuth = torch.deg2rad(azimuth_deg)
    return torch.stack(
        [
            distance * torch.cos(elevation) * torch.cos(azimuth),
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
        ],
        dim=-1,
    )


def look_at_c2w(
    camera_positions: Float[Tensor, "B 3"], center: Float[Tensor, "B 3"], up: Float[Tensor, "B 3"]
) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world pose of cameras at ``camera_positions`` looking at ``center``.

    The camera's -z axis points at ``center``; its +y axis is ``up`` made orthogonal to
    the viewing direction (``up`` must not be parallel to it).
    """
    forward = F.normalize(center - camera_positions, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    if bool((right.norm(dim=-1) < 1e-8).any()):
        raise ValueError(
            "look_at_c2w: the up vector is parallel to the viewing direction for some camera; "
            "perturb the up vector or keep the elevation strictly inside (-90, 90) degrees."
        )
    right = F.normalize(right, dim=-1)
    true_up = F.normalize(torch.linalg.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.zeros(camera_positions.shape[0], 4, 4, dtype=camera_positions.dtype, device=camera_positions.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = camera_positions
    c2w[:, 3, 3] = 1.0
    return c2w


def make_camera_batch(
    camera_positions: Float[Tensor, "B 3"],
    center: Float[Tensor, "B 3"],
    up: Float[Tensor, "B 3"],
    fovy_deg: Float[Tensor, "B"],
    light_positions: Float[Tensor, "B 3"],
    elevation_deg: Float[Tensor, "B"],
    azimuth_deg: Float[Tensor, "B"],
    camera_distances: Float[Tensor, "B"],
    height: int,
    width: int,
    index: Optional[Int[Tensor, "B"]] = None,
    normalize_rays: bool = True,
) -> CameraBatch:
    """Assemble a full ``CameraBatch`` (pose, rays, mvp) from sampled camera parameters.

    ``elevation_deg`` / ``azimuth_deg`` / ``camera_distances`` describe the unperturbed
    orbit position (what view-dependent prompting reads); the pose uses the actual positions.
    """
    batch_size = camera_positions.shape[0]
    c2w = look_at_c2w(camera_positions, center, up)
    fovy_rad = torch.deg2rad(fovy_deg)
    focal = focal_from_fovy(fovy_rad, height)  # square pixels: one focal for x and y
    unit_directions = get_ray_directions(height, width, 1.0, device=camera_positions.device)
    directions = unit_directions[None].repeat(batch_size, 1, 1, 1)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(directions, c2w, normalize=normalize_rays)
    proj = get_projection_matrix(fovy_rad, width / height)
    if index is None:
        index = torch.arange(batch_size, device=camera_positions.device)
    return CameraBatch(
        rays_o=rays_o,
        rays_d=rays_d,
        c2w=c2w,
        mvp_mtx=get_mvp_matrix(c2w, proj),
        camera_positions=camera_positions,
        light_positions=light_positions,
        elevation=elevation_deg,
        azimuth=azimuth_deg,
        camera_distances=camera_distances,
        fovy=fovy_deg,
        height=int(height),
        width=int(width),
        index=index,
    )


def directions_from_pixels(
    cols: Float[Tensor, "..."],
    rows: Float[Tensor, "..."],
    fx: Union[float, Float[Tensor, "..."]],
    fy: Union[float, Float[Tensor, "..."]],
    cx: Union[float, Float[Tensor, "..."]],
    cy: Union[float, Float[Tensor, "..."]],
) -> Float[Tensor, "... 3"]:
    """Camera-space directions (z = -1) through continuous pixel positions ``(cols, rows)``.

    Positions use the pixel-centre convention of ``get_ray_directions`` (pixel ``(j, i)`` has
    centre ``(i + 0.5, j + 0.5)``); all arguments broadcast, so per-frame intrinsics shaped
    ``[N,1,1]`` combine with pixel grids ``[N,H,W]``.
    """
    x = (cols - cx) / fx
    y = -(rows - cy) / fy  # image rows grow downwards, camera y upwards
    return torch.stack(torch.broadcast_tensors(x, y, -torch.ones_like(x)), dim=-1)


def get_ray_directions_per_frame(
    H: int,
    W: int,
    fx: Float[Tensor, "N"],
    fy: Float[Tensor, "N"],
    cx: Float[Tensor, "N"],
    cy: Float[Tensor, "N"],
) -> Float[Tensor, "N H W 3"]:
    """``get_ray_directions`` for N frames of one size, each with its own intrinsics (pixels)."""
    fx, fy, cx, cy = (torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1) for v in (fx, fy, cx, cy))
    rows, cols = torch.meshgrid(
        torch.arange(H, dtype=fx.dtype, device=fx.device) + 0.5,
        torch.arange(W, dtype=fx.dtype, device=fx.device) + 0.5,
        indexing="ij",
    )
    return directions_from_pixels(cols[None], rows[None], fx, fy, cx, cy)


def projection_from_intrinsics(
    fx: Float[Tensor, "N"],
    fy: Float[Tensor, "N"],
    cx: Float[Tensor, "N"],
    cy: Float[Tensor, "N"],
    width: Union[int, Int[Tensor, "N"]],
    height: Union[int, Int[Tensor, "N"]],
    near: float = 0.01,
    far: float = 100.0,
) -> Float[Tensor, "N 4 4"]:
    """OpenGL projection for pinhole intrinsics in pixels (camera -> clip space, y up).

    Equals ``get_projection_matrix`` for a centred principal point. A camera-space point that
    ``directions_from_pixels`` sends through pixel position ``(u, v)`` lands at NDC
    ``x = 2u/W - 1``, ``y = 1 - 2v/H`` (NDC y = +1 is the top image row).
    """
    fx = torch.as_tensor(fx, dtype=torch.float32).reshape(-1)
    fy, cx, cy = (torch.as_tensor(v, dtype=fx.dtype, device=fx.device).reshape(-1) for v in (fy, cx, cy))
    width, height = (torch.as_tensor(v, dtype=fx.dtype, device=fx.device).reshape(-1) for v in (width, height))
    proj = torch.zeros(fx.shape[0], 4, 4, dtype=fx.dtype, device=fx.device)
    proj[:, 0, 0] = 2.0 * fx / width
    proj[:, 0, 2] = 1.0 - 2.0 * cx / width
    proj[:, 1, 1] = 2.0 * fy / height
    proj[:, 1, 2] = 2.0 * cy / height - 1.0
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


# the eval orbit of a data config that does not set one: RandomCameraConfig's defaults
# (a test checks they agree; this module sits below random_camera and cannot import it)
EVAL_ORBIT_DEFAULTS = {"eval_elevation_deg": 15.0, "eval_camera_distance": 1.5, "eval_fovy_deg": 70.0}


def orbit_views(data: Mapping[str, Any], n_views: int, size: int) -> CameraBatch:
    """``n_views`` square ``size`` cameras evenly spaced in azimuth (from 0) around the origin at
    the eval elevation / distance / fovy of a data config, lit from the camera: the views that
    compare a stage with its hand-over or its export (``OrbitCameraDataset``'s, in one batch)."""
    orbit = {key: float(data.get(key, default)) for key, default in EVAL_ORBIT_DEFAULTS.items()}
    azimuth = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    elevation = torch.full_like(azimuth, orbit["eval_elevation_deg"])
    distance = torch.full_like(azimuth, orbit["eval_camera_distance"])
    positions = spherical_to_cartesian(elevation, azimuth, distance)
    return make_camera_batch(
        camera_positions=positions,
        center=torch.zeros_like(positions),
        up=torch.tensor([0.0, 0.0, 1.0]).expand_as(positions),
        fovy_deg=torch.full_like(azimuth, orbit["eval_fovy_deg"]),
        light_positions=positions.clone(),
        elevation_deg=elevation,
        azimuth_deg=azimuth,
        camera_distances=distance,
        height=size,
        width=size,
    )
