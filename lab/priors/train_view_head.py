"""Train the view head (which side of a house / mug a render shows) for the Janus measure.

    python -m lab.priors.train_view_head --out PRIOR_DIR [--steps N] [--dataset-size N] [--seed S]
        [--nerf-views N [--nerf-share F] [--nerf-work-dir DIR] [--nerf-prompts P ...]] [--members K] [--relief SHAPE ...]

Fresh procedural renders of the house and the mug in every colour, flat and lit, from two camera
kinds: orbit-like cameras (the evaluator's: unperturbed, lit from the camera; elevation -10..80
and the training distance / fovy ranges, a little look-at jitter) and, for a quarter, the prior's
training distribution (procedural.camera_sampler: perturbed positions, look-at and up, random
lights). Augmentations mimic renders of an SDS-trained NeRF: tinted backgrounds and grey floater
blotches, shifts, darkened, shifted and washed-out colour, speckle, dark features grown by a
pixel, blur, pixel noise (without the blotches, speckle and darkening, the first head called the
plain back gable of an SDS house its front as often as not). Horizontal flips come with the label a mirror
implies: the house is symmetric about y = 0 (a flip swaps left and right), the mug about x = 0
(a flip swaps front and back). With ``--nerf-views N``, a share of each batch (``--nerf-share``)
comes from N renders of each of the NeRFs fitted to procedural houses and mugs (nerf_views.py):
the domain the head is used on, with the side known by construction. With ``--members K``, K
heads are trained alike from seeds SEED..SEED+K-1 and saved as one ensemble (view_head.py's
``ViewHeadEnsemble``: the verdict is their mean probability). With ``--relief mug`` the head
also sees the relief of mugs' views (view_head.relief, from the renders' depth; augmented as a
NeRF's depth differs: nearer or farther, deeper or shallower, grainy, with near parts grown and
faint floaters) and is saved to ``classifier/view_relief``.

Reports held-out accuracy on clean renders of a further seed (per class, per shape, on views
at least ``FAR_FROM_BOUNDARY_DEG`` from a side boundary, and on the evaluator's orbit cameras)
and the Janus rate of clean correct objects at the measure's cameras (0 for a head fit for it),
and writes PRIOR_DIR/classifier/view (or view_relief)/model.safetensors + view_head.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from threestudio_like.data.cameras import make_camera_batch, spherical_to_cartesian
from threestudio_like.data.random_camera import step_seed
from lab import lab_side
from lab.priors import procedural
from lab.priors import nerf_views as nerf_view_data
from lab.priors.view_head import (
    RELIEF_FOLDER, SIDE_GROUPS, SIDE_NAMES, VIEW_FOLDER, VIEW_SHAPES, SideClassifier, ViewHead, ViewHeadEnsemble,
    boundary_distance, relief, save_view_head, side_of_azimuth,
)
from threestudio_like.utils.typing import CameraBatch, Float, Tensor

TRAIN_DATASET_SEED = 21  # apart from the prior's (0) and the shape classifier's (1, 2)
HELD_OUT_DATASET_SEED = 22
HELD_OUT_SIZE = 2048
FAR_FROM_BOUNDARY_DEG = 15.0  # the Janus measure only asks about views at least this far from a boundary
ORBIT_SHARE = 0.75  # share of renders from orbit-like cameras (the rest: the prior's training cameras)
ORBIT_CENTER_JITTER = 0.05  # look-at noise: SDS objects sit a little off the origin
# The side a horizontally flipped render shows, per shape (rows: VIEW_SHAPES; the mirror symmetry
# of the house is y -> -y, azimuth -> -azimuth; of the mug x -> -x, azimuth -> 180 - azimuth).
MIRROR_SIDES = torch.tensor([[0, 3, 2, 1], [2, 1, 0, 3]])
assert VIEW_SHAPES == ("house", "mug")
# The evaluator's orbit elevation (evaluation.EVAL_ELEVATION_DEG; repeated, not imported:
# evaluation imports the whole system stack, and this stays a light training script).
EVAL_ELEVATION_DEG = 15.0
NERF_SHARE = 0.25  # share of each batch from reference-NeRF renders (--nerf-views; nerf_views.py)
NERF_WORK_DIR = os.path.join("outputs", "view_head_nerfs")  # where the fits are kept between runs


# --------------------------------------------------------------------------- data
def orbit_like_cameras(batch: int, g: torch.Generator) -> CameraBatch:
    """Evaluator-like cameras (lit from the camera, no position / up perturbation) at random
    azimuths, elevations in the training range, the training distance / fovy ranges, and a small
    look-at jitter. Supersampled size."""
    def uniform(key: str) -> Tensor:
        low, high = procedural.CAMERA_CONFIG[key]
        return torch.rand(batch, generator=g) * (high - low) + low

    elevation, distance, fovy = uniform("elevation_range"), uniform("camera_distance_range"), uniform("fovy_range")
    azimuth = torch.rand(batch, generator=g) * 360.0 - 180.0
    positions = spherical_to_cartesian(elevation, azimuth, distance)
    center = torch.randn(batch, 3, generator=g) * ORBIT_CENTER_JITTER
    size = procedural.IMAGE_SIZE * procedural.SUPERSAMPLE
    return make_camera_batch(
        camera_positions=positions, center=center, up=torch.tensor([0.0, 0.0, 1.0]).expand_as(positions),
        fovy_deg=fovy, light_positions=positions.clone(), elevation_deg=elevation,
        azimuth_deg=azimuth, camera_distances=distance, height=size, width=size,
    )


def render_with_relief(shape_ids: Tensor, colour_ids: Tensor, cameras: CameraBatch, flat: Tensor) -> tuple[Tensor, Tensor]:
    """Procedural renders with their relief channel: (views [B, 4, 32, 32], masks [B, 1, 32, 32])."""
    depth = torch.zeros(len(shape_ids), 1, procedural.IMAGE_SIZE, procedural.IMAGE_SIZE)
    images, masks = procedural.render_cameras(shape_ids, colour_ids, cameras, flat, depth=depth)
    return torch.cat([images, relief(depth, masks, cameras["camera_distances"])], dim=1), masks


def render_view_batch(seed: int, index: int, batch_size: int) -> dict[str, Tensor]:
    """Batch ``index`` of the view dataset with ``seed`` (a pure function of both): uint8 images
    [B, 3, 32, 32], relief and masks [B, 1, 32, 32], sides / view_shapes (index into VIEW_SHAPES) /
    colour_ids [B], azimuth / elevation [B], flat and orbit [B] flags."""
    g = torch.Generator().manual_seed(step_seed(seed + 104729, index))
    n_orbit = int(round(batch_size * ORBIT_SHARE))
    parts = [procedural.camera_sampler(batch_size - n_orbit, seed).sample(index)] if batch_size > n_orbit else []
    if n_orbit:
        parts.append(orbit_like_cameras(n_orbit, g))
    keys = ("rays_o", "rays_d", "light_positions", "azimuth", "elevation", "camera_distances")
    cameras = {k: torch.cat([p[k] for p in parts]) for k in keys}
    view_shapes = torch.randint(len(VIEW_SHAPES), (batch_size,), generator=g)
    shape_ids = torch.tensor([procedural.SHAPE_NAMES.index(s) for s in VIEW_SHAPES])[view_shapes]
    colour_ids = torch.randint(len(procedural.COLOUR_NAMES), (batch_size,), generator=g)
    flat = torch.rand(batch_size, generator=g) < procedural.FLAT_SHADING_PROBABILITY
    views, masks = render_with_relief(shape_ids, colour_ids, cameras, flat)
    return {
        **as_bytes(views, masks),
        "sides": side_of_azimuth(cameras["azimuth"]), "view_shapes": view_shapes, "colour_ids": colour_ids,
        "azimuth": cameras["azimuth"].float(), "elevation": cameras["elevation"].float(), "flat": flat,
        "orbit": torch.arange(batch_size) >= batch_size - n_orbit,
    }


def as_bytes(views: Float[Tensor, "B 4 32 32"], masks: Float[Tensor, "B 1 32 32"]) -> dict[str, Tensor]:
    """A dataset's stored image fields: uint8 "images" (RGB), "relief" and "masks"."""
    quantise = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    return {"images": quantise(views[:, :3]), "relief": quantise(views[:, 3:]), "masks": quantise(masks)}


def views_of(data: dict[str, Tensor], index: Tensor | slice, channels: int) -> Float[Tensor, "B C 32 32"]:
    """Float views of ``data[index]``: RGB, and the relief too for a 4-channel head."""
    images = data["images"][index].float() / 255.0
    return torch.cat([images, data["relief"][index].float() / 255.0], 1) if channels == 4 else images


def render_view_dataset(n: int, seed: int, batch_size: int = 256, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Tensor]:
    """``n`` labelled renders (``render_view_batch`` fields, concatenated); deterministic in (n, seed, batch_size)."""
    batches = []
    for index in range(math.ceil(n / batch_size)):
        batches.append(render_view_batch(seed, index, min(batch_size, n - index * batch_size)))
        if progress is not None:
            progress(min(n, (index + 1) * batch_size), n)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


# --------------------------------------------------------------------------- augmentation
def _blur(images: Float[Tensor, "B C H W"], sigma: Float[Tensor, "B"]) -> Float[Tensor, "B C H W"]:
    """Separable Gaussian blur, one sigma (pixels) per image; sigma 0 leaves an image as it is."""
    b, c, h, w = images.shape
    x = torch.arange(-2, 3, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(-1, keepdim=True)).repeat_interleave(c, 0)  # [B * C, 5]
    flat = F.pad(images.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def mirror(images: Float[Tensor, "B C H W"], sides: Tensor, view_shapes: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip half the images horizontally, with the side the mirrored object shows (``MIRROR_SIDES``)."""
    flip = torch.rand(len(images), generator=g) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images, torch.where(flip, MIRROR_SIDES[view_shapes, sides], sides)


def augment(images: Float[Tensor, "B C H W"], masks: Float[Tensor, "B 1 H W"], g: torch.Generator) -> Float[Tensor, "B C H W"]:
    """What an SDS-trained NeRF's render looks like next to a clean procedural one: a tinted or
    hazy background, shifted and darkened colour, speckle, features grown or blurred, noise.
    A fourth (relief) channel gets ``augment_relief`` and the same shifts and blur."""
    extra, images = images[:, 3:], images[:, :3]
    b, _, h, w = images.shape
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    chance = lambda p: (u(b, 1, 1, 1) < p).float()  # noqa: E731  (per image)
    # background: white, or (40%) a light grey with a slight tint, as fog / a learned background gives
    background = (0.82 + 0.18 * u(b, 1, 1, 1)) + 0.04 * (u(b, 3, 1, 1) - 0.5)
    images = images + chance(0.4) * (1.0 - masks) * (background.clamp(0, 1) - 1.0)
    # (50%) grey blotches of low-density floaters around the object: smooth noise, darkening only
    blotches = F.interpolate(torch.randn(b, 1, 5, 5, generator=g), (h, w), mode="bicubic", align_corners=True).clamp_min(0)
    images = images - chance(0.5) * 0.15 * u(b, 1, 1, 1) * (1.0 - masks) * blotches
    # object colour: per-channel gain, brightness (SDS colours run dark), washing-out toward grey
    gain = (1.0 + 0.08 * (2 * u(b, 3, 1, 1) - 1)) * (0.65 + 0.45 * u(b, 1, 1, 1))
    grey = images.mean(1, keepdim=True)
    washed = images + 0.3 * u(b, 1, 1, 1) * (grey - images)
    images = images + masks * (washed * gain - images)
    # (50%) speckle: SDS textures are grainy at the pixel scale
    speckle = 1.0 + chance(0.5) * 0.25 * u(b, 1, 1, 1) * torch.randn(b, 1, h, w, generator=g)
    images = images * (1.0 - masks + masks * speckle)
    # (30%) dark features grown by a pixel (a 3 x 3 minimum): SDS draws doors and handles coarse
    images = torch.lerp(images, -F.max_pool2d(-images, 3, stride=1, padding=1), chance(0.3))
    if extra.shape[1]:
        images = torch.cat([images, augment_relief(extra, masks, blotches, g)], dim=1)
    # shifts of up to 2 pixels (border replicated: the background continues)
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2, b), generator=g).tolist()
    images = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    # blur (60%) and pixel noise
    sigma = torch.where(u(b) < 0.6, 0.3 + 0.8 * u(b), torch.zeros(b))
    images = _blur(images, sigma)
    noise = u(b, 1, 1, 1) * 0.05
    return (images + noise * torch.randn(images.shape, generator=g)).clamp(0, 1)


def augment_relief(near: Float[Tensor, "B 1 H W"], masks: Float[Tensor, "B 1 H W"], blotches: Float[Tensor, "B 1 H W"],
                   g: torch.Generator) -> Float[Tensor, "B 1 H W"]:
    """How a NeRF's relief differs from an exact one: the object nearer or farther (off the
    origin), deeper or shallower (bigger or smaller), depth noise on its surface, (30%) near
    parts grown by a pixel (SDS draws a handle chunky), and (50%) faint floaters where the RGB
    has its grey blotches."""
    b = len(near)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    nearness = near / masks.clamp_min(1e-3)
    nearness = 0.5 + (0.8 + 0.5 * u(b, 1, 1, 1)) * (nearness - 0.5) + 0.05 * (2 * u(b, 1, 1, 1) - 1)
    nearness = nearness + 0.03 * u(b, 1, 1, 1) * torch.randn(near.shape, generator=g)
    near = masks * nearness.clamp(0, 1)
    near = torch.lerp(near, F.max_pool2d(near, 3, stride=1, padding=1) * masks, (u(b, 1, 1, 1) < 0.3).float())
    floaters = (u(b, 1, 1, 1) < 0.5).float() * 0.2 * u(b, 1, 1, 1) * (1.0 - masks) * blotches
    return (near + floaters).clamp(0, 1)


def draw(data: dict[str, Tensor], n: int, g: torch.Generator, channels: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` random views of ``data``, augmented: (images [n, C, 32, 32], sides [n], view_shapes [n])."""
    index = torch.randint(len(data["sides"]), (n,), generator=g)
    images = augment(views_of(data, index, channels), data["masks"][index].float() / 255.0, g)
    return images, data["sides"][index], data["view_shapes"][index]


# --------------------------------------------------------------------------- accuracy
@torch.no_grad()
def predict(model: SideClassifier, images: Float[Tensor, "N C 32 32"], view_shapes: Tensor) -> Tensor:
    """Predicted side indices [N] (eval mode, in chunks)."""
    model.eval()
    return torch.cat([model(images[s : s + 512], view_shapes[s : s + 512]).argmax(-1) for s in range(0, len(images), 512)])


def held_out_accuracy(model: SideClassifier, data: dict[str, Tensor], augmented: bool = False) -> dict:
    """Accuracy on ``data`` (clean, or augmented with a fixed generator), broken down by side,
    shape, shading, camera kind, elevation and distance from a side boundary; ``*_house_sides_merged``
    counts the house's left / right as one side (``SIDE_GROUPS``), as the Janus measure does."""
    images = views_of(data, slice(None), model.channels)
    if augmented:
        images = augment(images, data["masks"].float() / 255.0, torch.Generator().manual_seed(0))
    predicted = predict(model, images, data["view_shapes"])
    ok = predicted == data["sides"]
    groups = torch.tensor([SIDE_GROUPS[s] for s in VIEW_SHAPES])[data["view_shapes"]]  # [N, 4]
    ok_grouped = groups.gather(1, predicted[:, None])[:, 0] == groups.gather(1, data["sides"][:, None])[:, 0]

    def rate(mask: Tensor, hits: Tensor = ok) -> Optional[float]:
        return round(float(hits[mask].float().mean()), 4) if mask.any() else None

    lit = ~data["flat"]
    far = boundary_distance(data["azimuth"]) >= FAR_FROM_BOUNDARY_DEG
    eval_band = data["orbit"] & ((data["elevation"] - EVAL_ELEVATION_DEG).abs() <= 10)  # the evaluator's elevation +- 10
    everything = torch.ones_like(ok)
    far_key = f"at_least_{FAR_FROM_BOUNDARY_DEG:g}_deg_from_boundary"
    return {
        "all": rate(everything),
        "per_side": {name: rate(data["sides"] == i) for i, name in enumerate(SIDE_NAMES)},
        "per_shape": {name: rate(data["view_shapes"] == i) for i, name in enumerate(VIEW_SHAPES)},
        "lit": rate(lit), "flat": rate(data["flat"]),
        "orbit_cameras": rate(data["orbit"]), "prior_training_cameras": rate(~data["orbit"]),
        "elevation_above_60": rate(data["elevation"] > 60),
        far_key: rate(far),
        "all_house_sides_merged": rate(everything, ok_grouped),
        f"{far_key}_house_sides_merged": rate(far, ok_grouped),
        "janus_setting": {  # what the Janus measure sees: lit, orbit cameras near the evaluator's elevation, off the boundaries
            "all": rate(lit & eval_band & far),
            "per_side": {name: rate(lit & eval_band & far & (data["sides"] == i)) for i, name in enumerate(SIDE_NAMES)},
            "per_shape": {name: rate(lit & eval_band & far & (data["view_shapes"] == i)) for i, name in enumerate(VIEW_SHAPES)},
            "house_sides_merged": rate(lit & eval_band & far, ok_grouped),
            "n": int((lit & eval_band & far).sum()),
        },
        "n": int(len(ok)),
    }


@torch.no_grad()
def clean_janus_rates(model: SideClassifier) -> dict[str, float]:
    """Per shape, the Janus rate of clean procedural renders of the correct object (every colour,
    lit) at the Janus measure's 12 cameras: what the head itself adds to the measure, 0 for a
    head fit for it."""
    from lab import janus  # the measure's cameras (janus imports the evaluator stack)

    cameras = janus.janus_cameras()
    rates = {}
    for shape in VIEW_SHAPES:
        views = []
        for colour in procedural.COLOUR_NAMES:
            ids = torch.tensor([procedural.SHAPE_NAMES.index(shape)]), torch.tensor([procedural.COLOUR_NAMES.index(colour)])
            views += [render_with_relief(*ids, camera, torch.zeros(1, dtype=torch.bool))[0] for camera in cameras]
        scores = [janus.judge_views(model, torch.cat(views[i : i + len(cameras)]), janus.JANUS_AZIMUTHS_DEG, shape)
                  for i in range(0, len(views), len(cameras))]
        rates[shape] = round(sum(score.rate for score in scores) / len(scores), 4)
    return rates


# --------------------------------------------------------------------------- training
def train_one_head(data: dict[str, Tensor], nerf: Optional[dict[str, Tensor]], n_nerf: int, steps: int, batch_size: int,
                   seed: int, lr: float, width: int, log: Callable[[str], None], relief_shapes: Sequence[str] = ()) -> ViewHead:
    """One view head trained from ``seed`` on batches of ``data`` (``n_nerf`` of each from ``nerf``)."""
    torch.manual_seed(seed)
    model = ViewHead(width, relief_shapes=relief_shapes)
    channels = model.channels
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = warmup_steps(steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    for step in range(steps):
        model.train()
        g = torch.Generator().manual_seed(step_seed(seed, step))
        parts = [draw(data, batch_size - n_nerf, g, channels)] + ([draw(nerf, n_nerf, g, channels)] if n_nerf else [])
        images, sides, view_shapes = (torch.cat(p) for p in zip(*parts))
        images, sides = mirror(images, sides, view_shapes, g)
        loss = F.cross_entropy(model(images, view_shapes), sides, label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"seed {seed}: step {step + 1}/{steps} loss {loss.item():.4f}")
    return model.eval()


def warmup_steps(steps: int) -> int:
    return max(1, steps // 15)  # a cold start at full rate sat at chance level for a few hundred steps


def train_view_head(
    out: str, steps: int = 1500, batch_size: int = 64, seed: int = 0, dataset_size: int = 10000, lr: float = 2e-3,
    width: int = 16, threads: int = 1, command: Optional[str] = None, held_out_size: int = HELD_OUT_SIZE,
    nerf_views: int = 0, nerf_share: float = NERF_SHARE, nerf_work_dir: str = NERF_WORK_DIR, members: int = 1,
    nerf_prompts: Sequence[str] = nerf_view_data.FIT_PROMPTS, relief_shapes: Sequence[str] = (),
) -> dict:
    """Train ``members`` heads (seeds ``seed``, ``seed + 1``, ...; more than one are saved as a
    ``ViewHeadEnsemble``), seeing RGB, and the relief of ``relief_shapes``, and save to
    ``out/classifier/view`` (``view_relief`` with a relief); returns the saved training info."""
    torch.set_num_threads(threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    data = render_view_dataset(dataset_size, TRAIN_DATASET_SEED)
    held_out = render_view_dataset(held_out_size, HELD_OUT_DATASET_SEED)
    log(f"rendered {dataset_size} training and {held_out_size} held-out views")
    nerf = None
    if nerf_views:
        nerf = nerf_view_data.render_nerf_view_dataset(nerf_prompts, nerf_views, TRAIN_DATASET_SEED, nerf_work_dir)
        log(f"rendered {len(nerf['sides'])} views of {len(nerf_prompts)} reference NeRFs (fits kept in {nerf_work_dir})")
    render_seconds = time.time() - start
    n_nerf = int(round(batch_size * nerf_share)) if nerf is not None else 0
    heads = []
    for member in range(members):
        heads.append(train_one_head(data, nerf, n_nerf, steps, batch_size, seed + member, lr, width, log, relief_shapes))
    model: SideClassifier = heads[0] if members == 1 else ViewHeadEnsemble(heads)
    clean, augmented = held_out_accuracy(model, held_out), held_out_accuracy(model, held_out, augmented=True)
    log(f"held-out accuracy, clean: {clean['all']:.3f} (per side {clean['per_side']}, per shape {clean['per_shape']}), "
        f"augmented: {augmented['all']:.3f}")
    log(f"clean, house left/right merged: {clean['all_house_sides_merged']}; Janus setting: {clean['janus_setting']}")
    janus_rates = clean_janus_rates(model)
    log(f"Janus rate of clean correct objects at the measure's cameras (all colours): {janus_rates}")
    info = {
        "command": command or f"python -m lab.priors.train_view_head --out {out} --steps {steps} --batch-size {batch_size} "
                              f"--seed {seed} --dataset-size {dataset_size} --width {width} --threads {threads} --members {members}"
                              + (f" --relief {' '.join(relief_shapes)}" if relief_shapes else ""),
        "held_out_accuracy_clean": clean,
        "held_out_accuracy_augmented": augmented,
        "clean_janus_rate": janus_rates,
        "steps": steps, "batch_size": batch_size, "lr": lr, "width": width, "seed": seed, "threads": threads,
        "label_smoothing": 0.05, "warmup_steps": warmup_steps(steps), "members": members, "relief_shapes": list(relief_shapes), "orbit_camera_share": ORBIT_SHARE,
        "orbit_center_jitter": ORBIT_CENTER_JITTER, "flips": "mirror with MIRROR_SIDES labels",
        "train_dataset": {"size": dataset_size, "seed": TRAIN_DATASET_SEED, "shapes": list(VIEW_SHAPES)},
        "nerf_views": {"per_fit": nerf_views, "batch_share": nerf_share if nerf_views else 0.0,
                       "fit_prompts": list(nerf_prompts) if nerf_views else [],
                       "fit_steps": nerf_view_data.FIT_STEPS if nerf_views else 0},
        "held_out_dataset": {"size": held_out_size, "seed": HELD_OUT_DATASET_SEED},
        "render_seconds": round(render_seconds, 1),
        "wall_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
    }
    # a built-in prior's heads: lab/weights/<name>/classifier/...
    folder = os.path.join(lab_side(out), "classifier", RELIEF_FOLDER if relief_shapes else VIEW_FOLDER)
    save_view_head(folder, model.eval(), info)
    log(f"saved {folder}")
    return info


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="prior folder; the view head goes to OUT/classifier/view")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset-size", type=int, default=10000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nerf-views", type=int, default=0,
                   help="also train on this many renders of each reference NeRF (nerf_views.py; 0: procedural renders only)")
    p.add_argument("--nerf-share", type=float, default=NERF_SHARE, help="share of each batch from the NeRF renders")
    p.add_argument("--nerf-work-dir", default=NERF_WORK_DIR, help="where the reference NeRFs are fitted and kept")
    p.add_argument("--nerf-prompts", nargs="+", default=list(nerf_view_data.FIT_PROMPTS),
                   help="the reference NeRFs' prompts (a colour and a house or mug; keep the Janus table's own apart)")
    p.add_argument("--members", type=int, default=1, help="heads trained from seeds SEED, SEED+1, ...; more than one: their mean verdict")
    p.add_argument("--relief", nargs="+", default=[], choices=VIEW_SHAPES, metavar="SHAPE",
                   help="the head also sees the relief (depth) of these shapes' views (mug: its handle); saved to classifier/view_relief")
    args = p.parse_args(argv)
    command = "python -m lab.priors.train_view_head " + " ".join(argv)
    train_view_head(args.out, args.steps, args.batch_size, args.seed, args.dataset_size, args.lr, args.width, args.threads, command,
                    nerf_views=args.nerf_views, nerf_share=args.nerf_share, nerf_work_dir=args.nerf_work_dir, members=args.members,
                    nerf_prompts=args.nerf_prompts, relief_shapes=args.relief)


if __name__ == "__main__":
    main()
