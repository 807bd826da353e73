"""The Janus problem, measured: how often a result shows its front from the wrong side.

Single-view SDS can make an object that shows its front from every side. Two procedural shapes
have a front: the house (door on its +x face) and the mug (handle on its -y side). For a finished
trial whose prompt names one of them, the result is rendered from ``JANUS_AZIMUTHS_DEG`` at the
evaluator's elevation, distance and fovy, with its depth, and the view head (priors/view_head.py,
shipped beside the shape / colour classifier; the one that also sees the relief where there is
one) says which side each render shows. A view is wrong when that side
is not the camera's side; the house's left and right count as one side (``SIDE_GROUPS``: with its
door edge-on, a house seen from +90 and from -90 is the same image).

- Janus rate: the share of wrong views. A correct object scores ~0; an object that is all
  front scores 9/12 = 0.75.
- Seen as front: the share of views the head calls "front" (3/12 = 0.25 for a correct object,
  1.0 for a full Janus).

A second judge that does not look at renders, for the mug: ``handle_sides`` finds the sides its
exported surface (floaters left out) reaches out on, which for a mug are its handles; the
renders' legend gives it per trial. A correct mug has one, on the right.

Azimuths: the evaluator's orbit (0, 45, ...) puts half its views on side boundaries, where the
side is ambiguous by definition. Instead each class centre (0, 90, 180, 270) and 22.5 degrees to
either side of it: 12 views, three a side, each at least 22.5 degrees from a boundary.

``python -m lab.evaluation --janus [--prompts "a red house" ...] [--seeds N]
[--steps N] [--variants ...] [--out DIR] [key=value ...]`` trains what is missing with
comparison.ensure_trial (finished trials are reused, interrupted ones resumed), prints the table
and writes it to ``DIR/janus.md``, with the judged renders in ``DIR/janus_renders.png``.
A variant is a shipped recipe plus overrides: ``RECIPE`` or ``RECIPE,key=value,...`` (named
``RECIPE+<last key part>-<value>...``), or a name from ``VARIANT_ALIASES``. A variant that
cannot run (a recipe or model not there yet) is reported under the table and the others go on.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lab import evaluation
from threestudio_like.data.cameras import make_camera_batch, spherical_to_cartesian
from threestudio_like.mesh.types import Mesh
from lab.priors import procedural
from lab.priors.view_head import (
    RELIEF_FOLDER, SIDE_GROUPS, SIDE_NAMES, VIEW_FOLDER, VIEW_SHAPES, SideClassifier, side_of_azimuth,
)
from threestudio_like.utils.typing import CameraBatch, Float, Tensor

JANUS_AZIMUTHS_DEG: tuple[float, ...] = tuple(sorted(c + d for c in (0.0, 90.0, 180.0, 270.0) for d in (-22.5, 0.0, 22.5) if c + d >= 0) + [337.5])
VARIANT_ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dreamfusion-cpu+perp-neg": ("dreamfusion-cpu", ("system.prompt_processor.use_perp_neg=true",)),
}
DEFAULT_VARIANTS = ("dreamfusion-cpu", "dreamfusion-cpu+perp-neg", "mvdream-cpu")
DEFAULT_PROMPTS = ("a red house", "a blue mug")
DEFAULT_OUT = "outputs/janus"


# --------------------------------------------------------------------------- the measure
def janus_cameras(azimuths_deg: Sequence[float] = JANUS_AZIMUTHS_DEG) -> list[CameraBatch]:
    """One camera batch per azimuth, placed and lit like the evaluator's orbit (elevation,
    distance, fovy; light at the camera), at the prior's supersampled size."""
    azimuth = torch.tensor([float(a) for a in azimuths_deg])
    elevation = torch.full_like(azimuth, evaluation.EVAL_ELEVATION_DEG)
    distance = torch.full_like(azimuth, evaluation.EVAL_DISTANCE)
    positions = spherical_to_cartesian(elevation, azimuth, distance)
    size = procedural.IMAGE_SIZE * procedural.SUPERSAMPLE
    return [
        make_camera_batch(
            camera_positions=positions[i : i + 1], center=torch.zeros(1, 3), up=torch.tensor([[0.0, 0.0, 1.0]]),
            fovy_deg=torch.tensor([evaluation.EVAL_FOVY_DEG]), light_positions=positions[i : i + 1].clone(),
            elevation_deg=elevation[i : i + 1], azimuth_deg=azimuth[i : i + 1], camera_distances=distance[i : i + 1],
            height=size, width=size, index=torch.tensor([i]),
        )
        for i in range(len(azimuth))
    ]


def render_janus_views(system: Any, azimuths_deg: Sequence[float] = JANUS_AZIMUTHS_DEG) -> Float[Tensor, "V 4 32 32"]:
    """A trained system's renders from ``janus_cameras`` (in [0, 1]) and their relief
    (view_head.relief): RGB + relief channels, of which a view head reads what it was trained on."""
    return evaluation.render_views_with_relief(system, janus_cameras(azimuths_deg))[0]


@dataclass
class JanusScore:
    """The view head's verdict on one object's renders, view by view."""

    shape: str
    azimuths: list[float]
    seen: list[str]  # the side each render shows, by the view head
    expected: list[str]  # the camera's side

    @property
    def wrong(self) -> list[bool]:
        """Views whose seen side is not the camera's (up to ``SIDE_GROUPS``: the house's left = right)."""
        group = SIDE_GROUPS[self.shape]
        return [group[SIDE_NAMES.index(s)] != group[SIDE_NAMES.index(e)] for s, e in zip(self.seen, self.expected)]

    @property
    def rate(self) -> float:
        """Janus rate: the share of wrong views."""
        return sum(self.wrong) / len(self.wrong)

    @property
    def front_share(self) -> float:
        return sum(s == "front" for s in self.seen) / len(self.seen)


def judge_views(view_head: SideClassifier, images: Float[Tensor, "V C 32 32"], azimuths_deg: Sequence[float], shape: str) -> JanusScore:
    """The Janus verdict on renders of a ``shape`` (house or mug) from ``azimuths_deg``."""
    if shape not in VIEW_SHAPES:
        raise ValueError(f"the Janus measure needs a shape with a front ({', '.join(VIEW_SHAPES)}), not {shape!r}")
    if len(images) != len(azimuths_deg):
        raise ValueError(f"judge_views: {len(images)} images but {len(azimuths_deg)} azimuths")
    seen = view_head.classify(images, shape).sides
    expected = [SIDE_NAMES[i] for i in side_of_azimuth(list(azimuths_deg)).tolist()]
    return JanusScore(shape, [float(a) for a in azimuths_deg], seen, expected)


# --------------------------------------------------------------------------- geometry cross-check
FLOATER_SHARE = 0.05  # mesh pieces under this share of the faces are floaters, not the object


def reach_by_side(points: Float[Tensor, "N 3"]) -> dict[str, float]:
    """How far a surface reaches out from its upright axis toward each side (``SIDE_NAMES``): the
    99th percentile of the horizontal distance from the points' median, over the median distance
    (the body's radius, for a mug). A judge of the mug that does not look at renders: its handle
    is what stands off its round body, so a mug reaches out on its handle's side only (the
    right, -y) and a Janus mug on several."""
    centre = points[:, :2].median(0).values
    offset = points[:, :2] - centre
    distance = offset.norm(dim=-1)
    body = distance.median().clamp_min(1e-8)
    sides = side_of_azimuth(torch.rad2deg(torch.atan2(offset[:, 1], offset[:, 0])))
    return {name: round(float(distance[sides == k].quantile(0.99) / body), 3) if (sides == k).any() else 0.0
            for k, name in enumerate(SIDE_NAMES)}


@lru_cache(maxsize=1)
def handle_reach_threshold() -> float:
    """Halfway between the procedural mug's reach on its handle's side and on its other sides."""
    from threestudio_like.mesh.isosurface import extract_isosurface

    bound = procedural.OBJECT_RADIUS + 0.2
    mesh = extract_isosurface(lambda p: -procedural.sdf_mug(p)[..., None], torch.tensor([[-bound] * 3, [bound] * 3]), 64, 0.0)
    reach = reach_by_side(mesh.v_pos)
    return (reach.pop("right") + max(reach.values())) / 2


def handle_sides(mesh: Mesh) -> list[str]:
    """The sides a mug's surface reaches out on (``reach_by_side`` over ``handle_reach_threshold``),
    floaters (``FLOATER_SHARE``) left out."""
    threshold = handle_reach_threshold()
    return [side for side, reach in reach_by_side(object_surface(mesh)).items() if reach > threshold]


def object_surface(mesh: Mesh) -> Float[Tensor, "N 3"]:
    """The vertices of ``mesh`` without its floaters."""
    from threestudio_like.mesh.marching_tets import remove_outliers

    return remove_outliers(mesh, FLOATER_SHARE).v_pos.detach().float().cpu()


# --------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class RecipeVariant:
    """A shipped recipe plus overrides. Has what comparison.ensure_trial reads of a variant
    (``recipe``, ``overrides``, ``name``: the name is the trials' folder)."""

    name: str
    recipe: str
    extra: tuple[str, ...] = ()

    @property
    def overrides(self) -> list[str]:
        return list(self.extra)


def is_override(token: str) -> bool:
    """``key=value`` (a recipe override for every variant), not ``RECIPE,key=value`` (a variant)."""
    key, equals, _ = token.partition("=")
    return bool(equals) and "," not in key


def parse_variant(spec: str) -> RecipeVariant:
    """A name from ``VARIANT_ALIASES``, ``RECIPE`` or ``RECIPE,key=value,...``; the recipe must be there."""
    from threestudio_like.recipes import find_config

    if spec in VARIANT_ALIASES:
        recipe, extra = VARIANT_ALIASES[spec]
        find_config(recipe)
        return RecipeVariant(spec, recipe, extra)
    recipe, *extra = [part.strip() for part in spec.split(",")]
    bad = [e for e in extra if "=" not in e]
    if not recipe or bad:
        raise ValueError(f"variant {spec!r}: write RECIPE or RECIPE,key=value,... (or one of {', '.join(VARIANT_ALIASES)})")
    find_config(recipe)  # a ConfigError naming the shipped recipes, before anything trains
    # the name is a folder and goes into an exp_root_dir override: "+<last key part>-<value>", path-safe
    parts = [os.path.splitext(os.path.basename(recipe))[0]]
    for override in extra:
        key, _, value = override.partition("=")
        parts.append(re.sub(r"[^A-Za-z0-9_.-]", "_", f"{key.strip().rsplit('.', 1)[-1]}-{value.strip()}"))
    return RecipeVariant("+".join(parts), recipe, tuple(extra))


# --------------------------------------------------------------------------- results
@dataclass
class JanusResult:
    variant: str
    prompt: str
    seed: int
    score: evaluation.Score  # the evaluator's shape / colour / geometry judges
    janus: JanusScore
    images: Tensor = field(repr=False)  # [V, 4, 32, 32] the judged renders: RGB + relief
    handles: Optional[list[str]] = None  # a mug's: the sides its geometry reaches out on (handle_sides)


def evaluate_janus_trial(trial_dir: str, variant: str, seed: int, classifier: Any, view_head: SideClassifier) -> JanusResult:
    system, prompt = evaluation.load_trial(trial_dir)
    return evaluate_janus_system(system, prompt, variant, seed, classifier, view_head)


def evaluate_janus_system(system: Any, prompt: str, variant: str, seed: int, classifier: Any, view_head: SideClassifier) -> JanusResult:
    score = evaluation.evaluate_system(system, prompt, classifier)
    images = render_janus_views(system)
    handles = None
    if score.expected_shape == "mug":  # no surface: no handle
        handles = handle_sides(score.mesh) if score.mesh is not None else []
    return JanusResult(variant, prompt, seed, score, judge_views(view_head, images, JANUS_AZIMUTHS_DEG, score.expected_shape),
                       images, handles)


def _mean_sd(values: Sequence[float]) -> str:
    """``mean ± sample sd`` (just the mean for one value)."""
    if not values:
        return "-"
    mean = float(np.mean(values))
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {float(np.std(values, ddof=1)):.2f}"


def _count(flags: Sequence[bool]) -> str:
    return f"{sum(flags)}/{len(flags)}"


def format_janus_table(results: Sequence[JanusResult], variants: Sequence[str], prompts: Sequence[str],
                       failures: Optional[dict[str, str]] = None) -> str:
    """Markdown: per variant, one row per prompt and an "all prompts" row.

    A prompt row's mean ± sd is over seeds; the "all prompts" row's is over seeds of the mean
    over prompts (a seed's trials together), and its Janus-free count is over trials."""
    failures = failures or {}
    header = ["variant", "prompt", "Janus rate", "seen as front", "Janus-free", "shape right", "colour right",
              "geometry right", "one handle, right", "trials"]
    rows = []
    for variant in variants:
        mine = [r for r in results if r.variant == variant]
        if not mine and variant in failures:
            rows.append([variant, "(failed, see below)", *["-"] * 7, "0"])
            continue
        for prompt in prompts:
            trials = sorted((r for r in mine if r.prompt == prompt), key=lambda r: r.seed)
            if trials:
                rows.append([variant, prompt, *_cells(trials, [[r.janus.rate] for r in trials], [[r.janus.front_share] for r in trials])])
        seeds = sorted({r.seed for r in mine})
        if len(prompts) > 1 and mine:
            by_seed = [[r for r in mine if r.seed == s] for s in seeds]
            rows.append([variant, "all prompts", *_cells(mine, [[r.janus.rate for r in g] for g in by_seed],
                                                        [[r.janus.front_share for r in g] for g in by_seed])])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    table = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    if failures:
        table += ["", *(f"- {name} failed: {message}" for name, message in failures.items())]
    return "\n".join(table)


def _cells(trials: Sequence[JanusResult], rates: Sequence[Sequence[float]], fronts: Sequence[Sequence[float]]) -> list[str]:
    """The numeric cells for ``trials``; ``rates`` / ``fronts`` grouped by seed (averaged within a group)."""
    return [
        _mean_sd([float(np.mean(g)) for g in rates]), _mean_sd([float(np.mean(g)) for g in fronts]),
        _count([r.janus.rate == 0 for r in trials]), _count([r.score.shape_ok for r in trials]),
        _count([r.score.colour_ok for r in trials]), _count([r.score.geometry_ok for r in trials]),
        _count([r.handles == ["right"] for r in mugs]) if (mugs := [r for r in trials if r.handles is not None]) else "-",
        str(len(trials)),
    ]


def save_janus_renders(results: Sequence[JanusResult], path: str) -> list[str]:
    """One row of the judged views per trial; returns the rows' labels (with the seen sides)."""
    from PIL import Image

    sheet = procedural.contact_sheet(torch.cat([r.images[:, :3] for r in results]), columns=len(JANUS_AZIMUTHS_DEG), scale=3)
    Image.fromarray((sheet.numpy() * 255).round().astype(np.uint8)).save(path)
    return [f"{r.variant} '{r.prompt}' seed {r.seed}: Janus {r.janus.rate:.2f}, seen "
            + " ".join(f"{a:g}:{s}{'*' if w else ''}" for a, s, w in zip(r.janus.azimuths, r.janus.seen, r.janus.wrong))
            + _handle_note(r) for r in results]


def _handle_note(result: JanusResult) -> str:
    """For a mug with a judged surface: the sides its geometry reaches out on (its handles)."""
    if result.handles is None:
        return ""
    if result.score.mesh is None:
        return "; geometry: no surface"
    reach = reach_by_side(object_surface(result.score.mesh))
    return (f"; geometry: handle on {', '.join(result.handles) or 'no side'} (reach: "
            + " ".join(f"{k} {v:.2f}" for k, v in reach.items()) + f"; a handle over {handle_reach_threshold():.2f})")


# --------------------------------------------------------------------------- command line
def run_janus(prompts: Sequence[str], seeds: int, steps: Optional[int], variants: Sequence[RecipeVariant], out: str,
              extra: Sequence[str] = (), classifier_folder: Optional[str] = None, view_head_folder: Optional[str] = None,
              floor: bool = False) -> tuple[str, dict[str, str]]:
    """Train what is missing, judge every trial (and, with ``floor``, a reference NeRF per prompt
    and seed: janus_floor.py), write ``out/janus.md``; returns (title + table, failures)."""
    from lab.comparison import ensure_trial
    from threestudio_like.guidance.models import resolve_model_path
    from lab.priors.classifier import load_classifier
    from lab.priors.view_head import load_view_head

    prior = resolve_model_path(evaluation.DEFAULT_PRIOR)
    classifier = load_classifier(classifier_folder or prior)
    view_head = load_view_head(view_head_folder or classifier_folder or prior, kinds=(RELIEF_FOLDER, VIEW_FOLDER))
    results: list[JanusResult] = []
    failures: dict[str, str] = {}
    # seeds outermost: an interrupted run already has every variant for the first seeds
    for seed, prompt, variant in itertools.product(range(seeds), prompts, variants):
        if variant.name in failures:
            continue
        try:
            trial = ensure_trial(variant, prompt, seed, steps, out, extra)
        except Exception as error:  # one variant that cannot run (recipe / model not there yet) must not stop the rest
            failures[variant.name] = f"{type(error).__name__}: {error}".splitlines()[0]
            print(f"warning: variant {variant.name} failed on '{prompt}' seed {seed}; skipping it\n"
                  + "".join(traceback.format_exception_only(type(error), error)), file=sys.stderr)
            continue
        results.append(evaluate_janus_trial(trial, variant.name, seed, classifier, view_head))
    if floor:  # the evaluator's own error on correct objects, plain and painted grainy as SDS paints (janus_floor.py)
        from lab.janus_floor import FLOOR_KINDS, fit_reference_nerf, reference_folder

        for (name, grain), seed, prompt in itertools.product(FLOOR_KINDS, range(seeds), prompts):
            folder = os.path.join(reference_folder(os.path.join(out, "reference" + ("_grainy" if grain else "")), prompt), f"seed{seed}")
            system, _ = fit_reference_nerf(prompt, steps, seed, save_dir=folder, grain=grain)  # as long as the trials
            results.append(evaluate_janus_system(system, prompt, name, seed, classifier, view_head))
    names = [v.name for v in variants] + ([name for name, _ in FLOOR_KINDS] if floor else [])
    table = format_janus_table(results, names, prompts, failures)
    title = (f"Janus rate on {evaluation.DEFAULT_PRIOR}: {len(prompts)} prompt(s), {seeds} seed(s), "
             f"{steps if steps is not None else 'the recipes own'} steps; {len(JANUS_AZIMUTHS_DEG)} views per trial at azimuths "
             f"{', '.join(f'{a:g}' for a in JANUS_AZIMUTHS_DEG)} (a correct object: rate ~0, seen as front 0.25; all front: 0.75, 1.0)")
    os.makedirs(out, exist_ok=True)
    labels = save_janus_renders(results, os.path.join(out, "janus_renders.png")) if results else []
    with open(os.path.join(out, "janus.md"), "w") as f:
        f.write(f"{title}\n\n{table}\n")
        if labels:
            f.write("\njanus_renders.png, rows top to bottom (views in the azimuth order above; * = wrong side):\n")
            f.writelines(f"{i + 1}. {label}\n" for i, label in enumerate(labels))
    return f"{title}\n\n{table}", failures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.evaluation --janus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", nargs="*", default=None,
                        help=f"prompts naming a {' or a '.join(VIEW_SHAPES)} (default: {', '.join(DEFAULT_PROMPTS)})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per prompt and variant")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: each recipe's own)")
    parser.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS),
                        help=f"rows: RECIPE, RECIPE,key=value,... or {', '.join(VARIANT_ALIASES)}")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--classifier", default=None, help="classifier folder (default: the built-in prior's)")
    parser.add_argument("--view-head", default=None, help="view head folder (default: the classifier's view_relief/, else its view/)")
    parser.add_argument("--floor", action="store_true",
                        help="add a 'reference NeRF' row: NeRFs fitted to the correct objects, the evaluator's own error")
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if not is_override(e)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (recipe overrides are written key=value)")
    # overrides after --prompts / --variants go to every recipe
    extra += [a for a in (args.prompts or []) + args.variants if is_override(a)]
    prompts = [p for p in args.prompts or [] if not is_override(p)] or list(DEFAULT_PROMPTS)
    no_front = [p for p in prompts if evaluation.parse_prompt(p)[0] not in VIEW_SHAPES]
    if no_front:
        parser.error(f"the Janus measure needs prompts naming a {' or a '.join(VIEW_SHAPES)}; not: {', '.join(map(repr, no_front))}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    try:
        variants = list({v.name: v for v in map(parse_variant, (a for a in args.variants if not is_override(a)))}.values())
    except Exception as e:  # ValueError, or the recipe finder's ConfigError
        parser.error(str(e))
    if not variants:
        parser.error("no --variants given")
    started = time.time()
    text, failures = run_janus(prompts, args.seeds, args.steps, variants, args.out, extra, args.classifier, args.view_head,
                               args.floor)
    print(text)
    print(f"\n(wall time {time.time() - started:.0f} s; table written to {os.path.join(args.out, 'janus.md')})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
