"""The Janus measure's floor: NeRFs fitted to correct objects, judged like the recipes' results.

The view head learns from clean procedural renders; a recipe's result is a NeRF rendered at
32 px. To tell the head's own mistakes from the recipe's, the recipe's representation (geometry,
material, renderer) is fitted by a photometric loss, no diffusion model involved, to procedural
renders of the prompt's object from the recipe's camera groups, then judged from the same 12
azimuths (janus.py). Its front is on its front by construction, so every wrong view is the
evaluator's: its rate is how often the measure errs on a correct object (a rough floor, itself
measured on few views and seeds). A fit runs as long as the trials it is a floor for.

SDS paints a surface darker and grainy, out of the plain floor's domain. The grainy floor
("reference NeRF, grainy") fits the same correct object painted so (``grain_texture``: clumps
about a pixel and a half across, darkened; its strength set to the grain and brightness of the
mvdream-cpu house at 400 steps, measured on its renders), so that the measure's error on a
correct but SDS-looking object is measured too.

``python -m lab.evaluation --janus --floor [--prompts ...] [--steps N]`` adds the
two rows per prompt to the Janus table. A fit is kept in its ``save_dir``
(``REFERENCE_FILE``) and reused by a later call with the same prompt, steps, seed and overrides,
so a table can be re-judged (``--view-head``) without fitting again.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from lab import evaluation
from lab.priors import procedural
from threestudio_like.utils.typing import Float, Tensor

FLOOR_RECIPE = "mvdream-cpu"  # its representation and camera groups; the fit ignores its guidance
FLOOR_LR = 0.01
FLOOR_VARIANT = "reference NeRF"  # the table rows' names
GRAINY_FLOOR_VARIANT = "reference NeRF, grainy"
GRAIN = 0.25  # the grainy floor's grain_texture strength
GRAIN_CELL = 0.06  # world units between the grain's lattice points
GRAIN_DARKENING = 0.8
FLOOR_KINDS: tuple[tuple[str, float], ...] = ((FLOOR_VARIANT, 0.0), (GRAINY_FLOOR_VARIANT, GRAIN))  # row name, grain
REFERENCE_FILE = "reference.ckpt"  # the fitted system in its save_dir
FIT_VERSION = 2  # kept fits of another version are fitted again


def reference_folder(root: str, prompt: str) -> str:
    """Where the fit for ``prompt`` is kept under ``root`` (one folder per prompt: fits of
    different prompts never share one)."""
    return os.path.join(root, re.sub(r"\W+", "_", prompt))


def grain_texture(strength: float, seed: int) -> Callable[[Tensor], Tensor]:
    """An albedo factor on surface points, darker and grainy in clumps of ``GRAIN_CELL`` (about a
    pixel and a half of the Janus views), as SDS paints a surface: ``GRAIN_DARKENING`` times
    1 + ``strength`` x smooth unit noise (trilinear on a random lattice over the bounding box)."""
    cells = int(round(2 * procedural._BOUND_RADIUS / GRAIN_CELL)) + 1
    lattice = torch.randn(1, 1, cells, cells, cells, generator=torch.Generator().manual_seed(seed))
    lattice = lattice / F.interpolate(lattice, scale_factor=4, mode="trilinear", align_corners=True).std()

    def factor(points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        unit = (points / procedural._BOUND_RADIUS).clamp(-1, 1).to(lattice.dtype)
        noise = F.grid_sample(lattice, unit.flip(-1).view(1, -1, 1, 1, 3), mode="bilinear", align_corners=True).view(-1)
        return (GRAIN_DARKENING * (1.0 + strength * noise)).clamp_min(0.0).to(points.dtype)

    return factor


def reference_views(shape: str, colour: str, cameras: dict[str, Tensor],
                    texture: Optional[Callable[[Tensor], Tensor]] = None) -> Float[Tensor, "B H W 3"]:
    """Procedural renders of ``colour`` ``shape`` (lit, on white) at the cameras' own resolution,
    with a further albedo ``texture`` on its surface if given."""
    n = len(cameras["rays_o"])
    shape_ids = torch.full((n,), procedural.SHAPE_NAMES.index(shape))
    albedo = torch.tensor([procedural.COLOURS[colour]] * n)
    rgb, _ = procedural.render_rays(shape_ids, albedo, cameras["rays_o"], cameras["rays_d"], cameras["light_positions"],
                                    torch.zeros(n, dtype=torch.bool), texture=texture)
    return rgb


def fit_reference_nerf(prompt: str, steps: Optional[int] = None, seed: int = 0, recipe: str = FLOOR_RECIPE,
                       overrides: Sequence[str] = (), save_dir: str = ".", grain: float = 0.0) -> tuple[Any, list[float]]:
    """The recipe's system, fitted to renders of the object ``prompt`` names; returns it (eval
    mode) and the MSE of each step, ``steps`` of them (default: as many as the recipe trains). A
    fit with the same settings in ``save_dir`` is loaded instead. With ``grain``, the object is
    painted grainy (``grain_texture``), as SDS paints it, and is otherwise as correct.

    The fit steps the system as training does (the renderer's occupancy grid, any schedule)
    with the material lit from step 0, as the targets are. (Fits before ``FIT_VERSION`` 2 were
    stepped once, past every phase: the grid was never kept, and where that one step fell on
    its update interval, in a 400-step fit, a partial first update left holes all over the
    object.)"""
    from threestudio_like.experiment import finalize_config, load_config
    from threestudio_like.experiment import find_part
    from threestudio_like.trials import check_state_matches, load_checkpoint, save_checkpoint

    shape, colour = evaluation.parse_prompt(prompt)
    if shape is None or colour is None:
        raise ValueError(f"a reference NeRF needs a prompt naming a colour and a shape of the built-in prior, not {prompt!r}")
    cli = [f"system.prompt_processor.prompt={prompt}", "system.guidance_type=null", "system.prompt_processor_type=null",
           "system.material.ambient_only_steps=0", f"seed={seed}", *overrides]
    exp = finalize_config(load_config(recipe, cli_args=cli))
    steps = int(exp.trainer["max_steps"]) if steps is None else steps
    torch.manual_seed(seed)
    system = find_part(exp.system_type)(exp.system, save_dir=save_dir)
    path = os.path.join(save_dir, REFERENCE_FILE)
    settings = {"prompt": prompt, "steps": steps, "seed": seed, "recipe": recipe, "overrides": list(overrides),
                "version": FIT_VERSION, "grain": grain}
    if os.path.isfile(path):
        saved = load_checkpoint(path)
        if saved.get("settings") == settings:
            check_state_matches(system, saved["state_dict"], path)
            system.load_state_dict(saved["state_dict"])
            return system.eval(), list(saved["losses"])
    texture = grain_texture(grain, seed) if grain else None
    optimizer = torch.optim.Adam(system.parameters(), lr=FLOOR_LR, betas=(0.9, 0.99), eps=1e-15)
    # the recipe's camera groups at its training size (the sampler's size is half its rays')
    groups = procedural.multiview_camera_sampler(int(exp.data["batch_size"]), seed, image_size=int(exp.data["width"]) // procedural.SUPERSAMPLE)
    losses = []
    system.train()
    for step in range(steps):
        system.update_step(step)
        cameras = groups.sample(step)
        with torch.no_grad():
            target = reference_views(shape, colour, cameras, texture)
        loss = F.mse_loss(system.renderer(**cameras)["comp_rgb"], target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    if all(map(math.isfinite, losses)):  # a diverged fit is returned, never kept
        save_checkpoint({"state_dict": system.state_dict(), "settings": settings, "losses": losses}, path)
    return system.eval(), losses
