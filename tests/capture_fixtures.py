"""Synthetic posed captures for the capture data tests: procedural shapes rendered from known
cameras and written in the Blender (NeRF-synthetic) or nerfstudio layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from threestudio_like.data.cameras import directions_from_pixels, get_rays, look_at_c2w, make_camera_batch, spherical_to_cartesian
from threestudio_like.data.undistort import undistort_points
from lab.priors import procedural


FIXED_LIGHT = torch.tensor([2.0, 1.5, 3.0])


def orbit_positions(n_views: int, distance: float, seed: int) -> torch.Tensor:
    """[N,3] cameras around the origin: azimuths spread over the circle, elevations -10..60 degrees."""
    g = torch.Generator().manual_seed(seed)
    azimuth = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views) + torch.rand(n_views, generator=g) * 10.0
    elevation = torch.rand(n_views, generator=g) * 70.0 - 10.0
    return spherical_to_cartesian(elevation, azimuth, torch.full((n_views,), float(distance)))


def _ids(shape: str, colour: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape_ids = torch.full((n,), procedural.SHAPE_NAMES.index(shape), dtype=torch.int64)
    colour_ids = torch.full((n,), procedural.COLOUR_NAMES.index(colour), dtype=torch.int64)
    return shape_ids, colour_ids


def _straight_rgba(rgb: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """uint8 [N,H,W,4] with straight (not premultiplied) colour from renders on white;
    fully transparent pixels are black, as Blender writes them."""
    alpha = mask.clamp(0, 1)
    colour = ((rgb - (1 - alpha)) / alpha.clamp_min(1e-6)).clamp(0, 1) * (alpha > 0)
    return (torch.cat([colour, alpha], dim=-1) * 255).round().to(torch.uint8).numpy()


def write_blender_capture(
    folder: Path,
    shape: str = "house",
    colour: str = "red",
    n_views: int = 30,
    size: int = 64,
    seed: int = 0,
    holdout: int = 6,
    distance: float = 2.0,
    fovy_deg: float = 40.0,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> dict:
    """RGBA PNGs + ``transforms_train.json`` / ``transforms_val.json`` (``holdout`` views spread
    evenly round the orbit, between training views: held out, not extrapolated).

    The shape sits at ``origin`` of the written world (cameras look at it). Returns ``c2w``
    [N,4,4] (as written), ``fovy_deg``, ``focal`` (pixels), ``train`` / ``val`` view numbers and
    ``rgba`` uint8 [N,H,W,4] (what the PNGs hold).
    """
    folder = Path(folder)
    positions = orbit_positions(n_views, distance, seed)
    s = procedural.SUPERSAMPLE
    cameras = make_camera_batch(
        camera_positions=positions,
        center=torch.zeros_like(positions),
        up=torch.tensor([0.0, 0.0, 1.0]).expand_as(positions),
        fovy_deg=torch.full((n_views,), fovy_deg),
        light_positions=FIXED_LIGHT.expand_as(positions),  # a real scene's light stays put as the camera moves
        elevation_deg=torch.zeros(n_views),
        azimuth_deg=torch.zeros(n_views),
        camera_distances=torch.full((n_views,), distance),
        height=size * s,
        width=size * s,
    )
    rgb, mask = procedural.render_cameras(*_ids(shape, colour, n_views), cameras, torch.zeros(n_views, dtype=torch.bool))
    rgba = _straight_rgba(rgb.permute(0, 2, 3, 1), mask.permute(0, 2, 3, 1))
    c2w = cameras["c2w"].clone()
    c2w[:, :3, 3] += torch.tensor(origin, dtype=torch.float32)
    held_out = sorted({int((k + 0.5) * n_views / holdout) for k in range(holdout)}) if holdout else []
    splits = {"train": [v for v in range(n_views) if v not in held_out], "val": held_out}
    angle = np.radians(fovy_deg)  # square images: fovx = fovy
    for split, views in splits.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for k, v in enumerate(views):
            Image.fromarray(rgba[v], "RGBA").save(folder / split / f"r_{k}.png")
            frames.append({"file_path": f"./{split}/r_{k}", "rotation": 0.0, "transform_matrix": c2w[v].tolist()})
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": float(angle), "frames": frames}, indent=1))
    focal = 0.5 * size / np.tan(np.radians(fovy_deg) / 2)
    return {"c2w": c2w, "fovy_deg": fovy_deg, "focal": float(focal), "rgba": rgba, **splits}


def write_nerfstudio_capture(
    folder: Path,
    shape: str = "mug",
    colour: str = "blue",
    n_views: int = 8,
    width: int = 40,
    height: int = 32,
    seed: int = 1,
    distance: float = 2.2,
    distortion: Optional[Sequence[float]] = None,
    with_extension: bool = True,
) -> dict:
    """RGB PNGs under ``images/`` and one ``transforms.json`` with per-frame ``fl_x fl_y cx cy``
    (varied between frames) and, given ``distortion`` (k1 k2 p1 p2 [k3]), OPENCV coefficients with
    the images rendered through that lens. Returns ``c2w``, ``fx``, ``fy``, ``cx``, ``cy`` [N] and
    the ``rgb`` float [N,H,W,3] written."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    positions = orbit_positions(n_views, distance, seed)
    c2w = look_at_c2w(positions, torch.zeros_like(positions), torch.tensor([0.0, 0.0, 1.0]).expand_as(positions))
    i = torch.arange(n_views, dtype=torch.float32)
    fx = 38.0 * (1 + 0.15 * (i % 3))
    fy = fx * 1.02
    cx = width / 2 + 2.0 * ((i % 2) * 2 - 1)
    cy = height / 2 - 1.5 * ((i % 2) * 2 - 1)

    s = procedural.SUPERSAMPLE
    rows, cols = torch.meshgrid(torch.arange(height * s) + 0.5, torch.arange(width * s) + 0.5, indexing="ij")
    u, v = cols / s, rows / s  # sub-pixel centres in output pixel units
    col = lambda t: t[:, None, None]  # noqa: E731
    if distortion is None:
        directions = directions_from_pixels(u[None], v[None], col(fx), col(fy), col(cx), col(cy))
    else:  # the lens put pinhole point undistort(x_d) at distorted pixel (u, v)
        xy_d = torch.stack([(u[None] - col(cx)) / col(fx), (v[None] - col(cy)) / col(fy)], dim=-1)
        xy = undistort_points(xy_d, torch.tensor(distortion, dtype=torch.float32))
        directions = torch.stack([xy[..., 0], -xy[..., 1], -torch.ones_like(xy[..., 0])], dim=-1)
    rays_o, rays_d = get_rays(directions, c2w)
    albedo = torch.tensor([procedural.COLOURS[colour]]).expand(n_views, 3)
    rgb, _ = procedural.render_rays(_ids(shape, colour, n_views)[0], albedo, rays_o, rays_d, FIXED_LIGHT.expand_as(positions), torch.zeros(n_views, dtype=torch.bool))
    rgb = procedural.downsample(rgb).permute(0, 2, 3, 1)
    pixels = (rgb * 255).round().to(torch.uint8).numpy()

    frames = []
    for k in range(n_views):
        name = f"images/frame_{k:03d}"
        Image.fromarray(pixels[k], "RGB").save(folder / f"{name}.png")
        frames.append(
            {
                "file_path": f"{name}.png" if with_extension else name,
                "transform_matrix": c2w[k].tolist(),
                "fl_x": float(fx[k]), "fl_y": float(fy[k]), "cx": float(cx[k]), "cy": float(cy[k]),
                "w": width, "h": height,
            }
        )
    meta: dict = {"frames": frames, "aabb_scale": 2}
    if distortion is not None:
        meta.update({"camera_model": "OPENCV", **dict(zip(("k1", "k2", "p1", "p2", "k3"), map(float, distortion)))})
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    return {"c2w": c2w, "fx": fx, "fy": fy, "cx": cx, "cy": cy, "rgb": torch.from_numpy(pixels).float() / 255}
