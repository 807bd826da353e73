"""SDS against VSD on the built-in prior: ProlificDreamer's comparison, in miniature.

ProlificDreamer's claim: SDS at a normal CFG (7.5) gives blurry, washed-out results, SDS at a
large CFG (100) over-saturated ones, and VSD at CFG 7.5 beats both. Each row of the table is a
variant (a shipped recipe plus overrides) trained for every prompt and seed; the columns are

- shape / colour / geometry right: the evaluator's judges (classifier votes over 8 views, Chamfer);
- saturation: mean HSV saturation of the object pixels (opacity > 0.5) of those 8 renders;
- colour error: mean CIE76 distance (Delta E in CIE Lab, renders taken as sRGB) to the prior's own
  training render of the same shape and colour from the same camera, over the pixels that are
  object in both (the silhouette is the shape judges' business, not the colour's);
- diversity: 1 - SSIM and mean absolute difference between renders from the same camera of
  different seeds of the same prompt (higher: the seeds disagree more).

``python -m lab.evaluation --compare [--prompts ...] [--seeds 4] [--steps N]
[--variants sds-7.5 vsd-7.5 ...] [--out DIR] [key=value ...]`` trains what is missing (a trial whose
``ckpts/last.ckpt`` is at the requested step is reused, an interrupted one resumed), prints the
table and writes it to ``DIR/comparison.md``, with the renders in ``DIR/renders.png``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lab import evaluation
from lab.priors import procedural

RECIPES = {"sds": "dreamfusion-cpu", "vsd": "prolificdreamer-cpu"}  # method -> shipped recipe
DEFAULT_VARIANTS = ("sds-7.5", "sds", "sds-100", "vsd")  # "sds" / "vsd": the recipe's own scale
SCALE_KEY = "system.guidance.guidance_scale"
OBJECT_OPACITY = 0.5  # a pixel is object where the render's opacity (or the reference's coverage) exceeds this


# --------------------------------------------------------------------------- metrics
def hsv_saturation(images: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> [..., H, W] HSV saturation (max - min) / max; 0 for black."""
    high, low = images.max(dim=-3).values, images.min(dim=-3).values
    return torch.where(high > 0, (high - low) / high.clamp_min(1e-8), torch.zeros_like(high))


def mean_saturation(images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean saturation of the object pixels (``masks`` [V, 1, H, W] > 0.5); NaN when there are none."""
    inside = masks[:, 0] > OBJECT_OPACITY
    return float(hsv_saturation(images)[inside].mean()) if inside.any() else math.nan


def to_lab(images: torch.Tensor) -> np.ndarray:
    """[V, 3, H, W] sRGB in [0, 1] -> [V, H, W, 3] CIE Lab."""
    from skimage.color import rgb2lab

    return rgb2lab(images.clamp(0, 1).permute(0, 2, 3, 1).double().numpy())


def colour_error(images: torch.Tensor, masks: torch.Tensor, reference: torch.Tensor, reference_masks: torch.Tensor) -> float:
    """Mean CIE76 Delta E between ``images`` and ``reference`` over pixels that are object in both; NaN if none."""
    both = ((masks[:, 0] > OBJECT_OPACITY) & (reference_masks[:, 0] > OBJECT_OPACITY)).numpy()
    if not both.any():
        return math.nan
    delta = np.linalg.norm(to_lab(images) - to_lab(reference), axis=-1)
    return float(delta[both].mean())


def diversity(renders: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(mean 1 - SSIM, mean absolute difference) over pairs of [V, 3, H, W] renders from the same
    cameras, view by view; NaN for fewer than two renders."""
    from skimage.metrics import structural_similarity

    ssim_gaps, l1 = [], []
    for a, b in itertools.combinations(renders, 2):
        for view_a, view_b in zip(a.numpy(), b.numpy()):
            ssim = structural_similarity(view_a, view_b, channel_axis=0, data_range=1.0)
            ssim_gaps.append(1.0 - ssim)
            l1.append(float(np.abs(view_a - view_b).mean()))
    return (float(np.mean(ssim_gaps)), float(np.mean(l1))) if l1 else (math.nan, math.nan)


def reference_views(shape: str, colour: str, n_views: int = evaluation.N_VIEWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's training renders (lit, not flat) of ``colour shape`` from the evaluator's
    cameras: ([V, 3, 32, 32], coverage [V, 1, 32, 32])."""
    cameras = evaluation.orbit_cameras(n_views, batch_size=n_views)[0]
    shape_ids = torch.full((n_views,), procedural.SHAPE_NAMES.index(shape))
    colour_ids = torch.full((n_views,), procedural.COLOUR_NAMES.index(colour))
    return procedural.render_cameras(shape_ids, colour_ids, cameras, torch.zeros(n_views, dtype=torch.bool))


# --------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """A shipped recipe at a guidance scale (None: the recipe's own)."""

    method: str  # a key of RECIPES
    guidance_scale: Optional[float] = None

    @property
    def recipe(self) -> str:
        return RECIPES[self.method]

    @property
    def overrides(self) -> list[str]:
        return [] if self.guidance_scale is None else [f"{SCALE_KEY}={self.guidance_scale:g}"]

    @property
    def scale(self) -> float:
        """The scale it trains at: the override, else read from the recipe (not hard-coded)."""
        if self.guidance_scale is not None:
            return self.guidance_scale
        from threestudio_like.experiment import load_config

        return float(load_config(self.recipe).system.guidance.guidance_scale)

    @property
    def name(self) -> str:
        return f"{self.method}-{self.scale:g}"


def parse_variant(text: str) -> Variant:
    """``sds-7.5`` -> SDS recipe at CFG 7.5; a bare ``sds`` / ``vsd`` keeps the recipe's scale."""
    method, _, scale = text.partition("-")
    if method not in RECIPES:
        raise ValueError(f"variant {text!r}: the method must be one of {', '.join(RECIPES)} (e.g. sds-7.5, vsd)")
    try:
        return Variant(method, float(scale) if scale else None)
    except ValueError:
        raise ValueError(f"variant {text!r}: {scale!r} is not a guidance scale (e.g. sds-7.5)") from None


# --------------------------------------------------------------------------- trials
def trial_overrides(variant: Variant, prompt: str, seed: int, steps: Optional[int], out: str) -> list[str]:
    overrides = [f"system.prompt_processor.prompt={prompt}", f"seed={seed}", "use_timestamp=false",
                 f"exp_root_dir={os.path.join(out, variant.name, f'seed{seed}')}", "data.n_test_views=4",
                 *variant.overrides]
    if steps is not None:
        overrides.append(f"trainer.max_steps={steps}")
    if not sys.stderr.isatty():  # a log file gets no progress bar (it only shows the finished runs)
        overrides.append("trainer.enable_progress_bar=false")
    return overrides


def checkpoint_step(path: str) -> Optional[int]:
    """The training step a checkpoint was written at; None when there is no (readable) file."""
    from threestudio_like.trials import CheckpointError, load_checkpoint

    if not os.path.isfile(path):
        return None
    try:
        return int(load_checkpoint(path).get("global_step", -1))
    except CheckpointError:
        return None


def ensure_trial(variant: Variant, prompt: str, seed: int, steps: Optional[int], out: str, extra: Sequence[str]) -> str:
    """The trial folder of (variant, prompt, seed) trained to the requested step: reused when its
    last checkpoint is there, resumed when it stopped earlier, trained afresh otherwise."""
    from threestudio_like.cli import main as cli_main
    from threestudio_like.experiment import finalize_config, load_config

    overrides = [*trial_overrides(variant, prompt, seed, steps, out), *extra]
    exp = finalize_config(load_config(variant.recipe, cli_args=overrides))
    wanted = int(exp.trainer["max_steps"])
    ckpt = os.path.join(exp.trial_dir, "ckpts", "last.ckpt")
    done = checkpoint_step(ckpt)
    if done == wanted:
        return exp.trial_dir
    if done is not None and done > wanted:
        raise RuntimeError(f"{exp.trial_dir} is trained to step {done}, past the {wanted} asked for: use another --out")
    if done is not None:
        overrides.append(f"resume={ckpt}")  # continues exactly (optimiser, RNG and step are in it)
    elif os.path.isdir(exp.trial_dir):
        shutil.rmtree(exp.trial_dir)  # a run that died before its first checkpoint: nothing to keep
    started = time.time()
    code = cli_main(["--config", variant.recipe, "--train", *overrides])
    if code != 0:
        raise RuntimeError(f"training {variant.name} '{prompt}' seed {seed} failed (exit code {code})")
    print(f"trained {variant.name} '{prompt}' seed {seed} in {time.time() - started:.0f} s", flush=True)
    return exp.trial_dir


# --------------------------------------------------------------------------- results
@dataclass
class TrialResult:
    variant: str
    prompt: str
    seed: int
    score: evaluation.Score
    images: torch.Tensor  # [V, 3, 32, 32]
    saturation: float
    colour_error: float


def evaluate_trial(trial_dir: str, variant: str, seed: int, classifier: Any) -> TrialResult:
    system, prompt = evaluation.load_trial(trial_dir)
    images, opacity = evaluation.render_views_with_opacity(system)
    score = evaluation.evaluate_system(system, prompt, classifier, images=images)
    shape, colour = evaluation.parse_prompt(prompt)
    error = math.nan
    if shape is not None and colour is not None:
        error = colour_error(images, opacity, *reference_views(shape, colour))
    return TrialResult(variant, prompt, seed, score, images, mean_saturation(images, opacity), error)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _rate(flags: Sequence[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} ({sum(flags) / max(len(flags), 1):.0%})"


def _number(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def format_comparison(results: Sequence[TrialResult], variants: Sequence[Variant], prompts: Sequence[str]) -> str:
    """The markdown table: one row per variant, then the prior's own renders as the reference."""
    header = ["variant", "CFG", "shape right", "colour right", "geometry right", "saturation",
              "colour error (Lab dE)", "diversity (1-SSIM)", "diversity (L1)", "trials"]
    rows = []
    for variant in variants:
        mine = [r for r in results if r.variant == variant.name]
        by_prompt = [[r.images for r in mine if r.prompt == p] for p in prompts]
        spread = [diversity(renders) for renders in by_prompt if len(renders) > 1]
        rows.append([variant.name, f"{variant.scale:g}", _rate([r.score.shape_ok for r in mine]),
                     _rate([r.score.colour_ok for r in mine]), _rate([r.score.geometry_ok for r in mine]),
                     _number(_nanmean([r.saturation for r in mine])), _number(_nanmean([r.colour_error for r in mine]), 1),
                     _number(_nanmean([s for s, _ in spread])), _number(_nanmean([d for _, d in spread])), str(len(mine))])
    rows.append(["reference (prior's data)", "-", "-", "-", "-", _number(reference_saturation(prompts)), "0.0", "-", "-", "-"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def reference_saturation(prompts: Sequence[str]) -> float:
    """Mean saturation of the prior's training renders of the prompts (what 'not washed out' is)."""
    values = []
    for prompt in prompts:
        shape, colour = evaluation.parse_prompt(prompt)
        if shape is not None and colour is not None:
            values.append(mean_saturation(*reference_views(shape, colour)))
    return _nanmean(values)


def save_renders(results: Sequence[TrialResult], prompts: Sequence[str], path: str) -> list[str]:
    """One row of 8 views per trial, the reference first for each prompt, for looking at;
    returns the rows' labels, top to bottom."""
    from PIL import Image

    rows, labels = [], []
    rank = {name: i for i, name in enumerate(dict.fromkeys(r.variant for r in results))}  # the table's order
    for prompt in prompts:
        shape, colour = evaluation.parse_prompt(prompt)
        if shape is not None and colour is not None:
            rows.append(reference_views(shape, colour)[0])
            labels.append(f"'{prompt}' reference")
        for r in sorted((r for r in results if r.prompt == prompt), key=lambda r: (rank[r.variant], r.seed)):
            rows.append(r.images)
            labels.append(f"'{prompt}' {r.variant} seed {r.seed}")
    sheet = procedural.contact_sheet(torch.cat(rows), columns=evaluation.N_VIEWS, scale=3)
    Image.fromarray((sheet.numpy() * 255).round().astype(np.uint8)).save(path)
    return labels


# --------------------------------------------------------------------------- command line
def run_comparison(prompts: Sequence[str], seeds: int, steps: Optional[int], variants: Sequence[Variant], out: str,
                   extra: Sequence[str] = (), classifier_folder: Optional[str] = None) -> str:
    from threestudio_like.guidance.models import resolve_model_path
    from lab.priors.classifier import load_classifier

    classifier = load_classifier(classifier_folder or resolve_model_path(evaluation.DEFAULT_PRIOR))
    results = []
    # seeds outermost: an interrupted run already has every variant for the first seeds
    for seed, prompt, variant in itertools.product(range(seeds), prompts, variants):
        trial = ensure_trial(variant, prompt, seed, steps, out, extra)
        results.append(evaluate_trial(trial, variant.name, seed, classifier))
    table = format_comparison(results, variants, prompts)
    title = (f"SDS vs VSD on {evaluation.DEFAULT_PRIOR}: {len(prompts)} prompt(s) ({', '.join(prompts)}), "
             f"{seeds} seed(s), {steps if steps is not None else 'the recipes own'} steps; 8 views per trial")
    os.makedirs(out, exist_ok=True)
    labels = save_renders(results, prompts, os.path.join(out, "renders.png"))
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write(f"{title}\n\n{table}\n\nrenders.png, rows top to bottom (8 views each):\n")
        f.writelines(f"{i + 1}. {label}\n" for i, label in enumerate(labels))
    return f"{title}\n\n{table}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.evaluation --compare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", nargs="*", default=None, help="default: the evaluator's default_prompts()")
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 per prompt (diversity needs 2 or more)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: each recipe's own)")
    parser.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS),
                        help="rows: sds-<cfg> / vsd-<cfg>, or sds / vsd at the recipe's own scale")
    parser.add_argument("--out", default="outputs/comparison")
    parser.add_argument("--classifier", default=None, help="classifier folder (default: the built-in prior's)")
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (recipe overrides are written key=value)")
    # overrides after --prompts / --variants go to every recipe
    extra += [a for a in (args.prompts or []) + args.variants if "=" in a]
    prompts = [p for p in args.prompts or [] if "=" not in p] or evaluation.default_prompts()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    try:
        variants = list({v.name: v for v in map(parse_variant, (a for a in args.variants if "=" not in a))}.values())  # drops repeats
    except ValueError as e:
        parser.error(str(e))
    started = time.time()
    print(run_comparison(prompts, args.seeds, args.steps, variants, args.out, extra, args.classifier))
    print(f"\n(wall time {time.time() - started:.0f} s; table written to {os.path.join(args.out, 'comparison.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
