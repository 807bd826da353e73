"""Labelled renders of NeRFs fitted to procedural objects: the view head's NeRF-domain data.

The view head judges 32 px renders of NeRFs (janus.py), but the procedural renders it learns
from are sharp, exact images. The reference NeRFs of janus_floor.py, fitted to a house or a mug
by photometric loss alone, show what the representation makes of a correct object (soft
edges, a door or handle drawn at the hash grid's resolution) with the side known by
construction. Rendered from evaluator-like cameras, they give the head training views from the
domain it is used on.

The fits' prompts (``FIT_PROMPTS``) and seeds are kept apart from the Janus table's (a red house,
a blue mug; seeds from 0), so the table's reference-NeRF row stays a held-out measure.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from lab.priors import procedural
from lab.priors.view_head import VIEW_SHAPES, side_of_azimuth
from threestudio_like.utils.typing import Tensor

FIT_PROMPTS: tuple[str, ...] = ("a green house", "a purple mug", "a yellow house", "a green mug")
FIT_STEPS = 200
FIT_SEED_OFFSET = 100  # fit k uses seed 100 + k: apart from the Janus table's seeds
RENDER_BATCH = 16


def render_nerf_view_dataset(prompts: Sequence[str], views_per_fit: int, seed: int, work_dir: str,
                             fit_steps: Optional[int] = None) -> dict[str, Tensor]:
    """``views_per_fit`` labelled renders of a reference NeRF per prompt, in
    ``train_view_head.render_view_batch``'s fields. Each fit and its renders are kept in the
    prompt's folder under ``work_dir`` and reused by a call with the same settings, so adding a
    prompt fits and renders only that one."""
    parts = [_fit_views(prompt, FIT_SEED_OFFSET + k, views_per_fit, seed, work_dir, fit_steps or FIT_STEPS)
             for k, prompt in enumerate(prompts)]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _fit_views(prompt: str, fit_seed: int, views: int, seed: int, work_dir: str, fit_steps: int) -> dict[str, Tensor]:
    """One prompt's labelled renders (kept in its folder as ``views{n}_seed{s}.pt``)."""
    from lab import evaluation
    from lab.janus_floor import fit_reference_nerf, reference_folder
    from lab.priors.train_view_head import as_bytes, orbit_like_cameras
    from threestudio_like.utils.io import atomic_path

    shape, colour = evaluation.parse_prompt(prompt)
    if shape not in VIEW_SHAPES or colour is None:
        raise ValueError(f"NeRF views need a prompt naming a colour and one of {', '.join(VIEW_SHAPES)}, not {prompt!r}")
    folder = reference_folder(work_dir, prompt)
    settings = {"prompt": prompt, "fit_seed": fit_seed, "fit_steps": fit_steps, "views": views, "seed": seed, "relief": True}
    kept = os.path.join(folder, f"views{views}_seed{seed}.pt")
    if os.path.isfile(kept):
        saved = torch.load(kept, weights_only=True)
        if saved.get("settings") == settings:
            return saved["data"]
    system, _ = fit_reference_nerf(prompt, fit_steps, fit_seed, save_dir=folder)
    g = torch.Generator().manual_seed(seed * 1009 + fit_seed)  # each fit its own cameras, whatever the prompt list
    parts: list[dict[str, Tensor]] = []
    for start in range(0, views, RENDER_BATCH):
        n = min(RENDER_BATCH, views - start)
        cameras = orbit_like_cameras(n, g)
        with torch.no_grad():
            views_with_relief, opacity = evaluation.render_views_with_relief(system, [cameras])
        parts.append({
            **as_bytes(views_with_relief, opacity),
            "sides": side_of_azimuth(cameras["azimuth"]), "view_shapes": torch.full((n,), VIEW_SHAPES.index(shape)),
            "colour_ids": torch.full((n,), procedural.COLOUR_NAMES.index(colour)),
            "azimuth": cameras["azimuth"].float(), "elevation": cameras["elevation"].float(),
            "flat": torch.zeros(n, dtype=torch.bool), "orbit": torch.ones(n, dtype=torch.bool),
        })
    data = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    with atomic_path(kept) as tmp:
        torch.save({"settings": settings, "data": data}, tmp)
    return data
