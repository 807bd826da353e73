"""Score text-to-3D results made with the built-in prior (our stand-in for CLIP R-precision).

Two independent judges per result:

- appearance: the classifier shipped beside the prior labels renders from 8 views around the
  object by shape and colour; the majority vote is the answer;
- geometry: the exported mesh, centred and scaled, is matched to the nearest ground-truth
  procedural shape by Chamfer distance.

``python -m lab.evaluation TRIAL_DIR ...`` scores finished runs;
``python -m lab.evaluation --train [--prompts ...]`` first runs the recipe for each
prompt (by default one prompt per shape, covering every colour) and prints the table.
``python -m lab.evaluation --compare ...`` compares SDS and VSD variants
(lab/comparison.py); ``--janus ...`` measures how often results show their front
from the wrong side (lab/janus.py).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional, Sequence

import numpy as np
import torch

from threestudio_like.data.random_camera import OrbitCameraDataset
from threestudio_like.mesh.isosurface import extract_isosurface
from threestudio_like.mesh.types import Mesh
from lab.priors import procedural
from lab.priors.classifier import ShapeColourClassifier, load_classifier
from threestudio_like.recipes import RECIPES_DIR
from threestudio_like.experiment import find_part

DEFAULT_PRIOR = "builtin:shapes32"
DEFAULT_RECIPE = os.path.join(RECIPES_DIR, "dreamfusion-cpu.yaml")  # shipped in the package
N_VIEWS = 8
CHAMFER_POINTS = 4096


def default_prompts() -> list[str]:
    """One prompt per shape; colours rotate so every colour appears at least once."""
    shapes, colours = procedural.SHAPE_NAMES, procedural.COLOUR_NAMES
    n = max(len(shapes), len(colours))
    return [procedural.caption(colours[i % len(colours)], shapes[i % len(shapes)]) for i in range(n)]


def parse_prompt(prompt: str) -> tuple[Optional[str], Optional[str]]:
    """The (shape, colour) a prompt asks for, or None where it names none the prior knows."""
    words = re.findall(r"[a-z]+", prompt.lower())
    shape = next((w for w in words if w in procedural.SHAPE_NAMES), None)
    colour = next((w for w in words if w in procedural.COLOUR_NAMES), None)
    return shape, colour


@dataclass
class Score:
    prompt: str
    expected_shape: Optional[str]
    expected_colour: Optional[str]
    shape_votes: Counter = field(default_factory=Counter)
    colour_votes: Counter = field(default_factory=Counter)
    chamfer: dict[str, float] = field(default_factory=dict)
    mesh: Optional[Mesh] = field(default=None, repr=False)  # the surface the geometry judge saw

    @property
    def shape(self) -> str:
        return self.shape_votes.most_common(1)[0][0]

    @property
    def colour(self) -> str:
        return self.colour_votes.most_common(1)[0][0]

    @property
    def nearest_shape(self) -> Optional[str]:
        return min(self.chamfer, key=self.chamfer.get) if self.chamfer else None

    @property
    def shape_ok(self) -> bool:
        return self.shape == self.expected_shape

    @property
    def colour_ok(self) -> bool:
        return self.colour == self.expected_colour

    @property
    def geometry_ok(self) -> bool:
        return self.nearest_shape == self.expected_shape

    @property
    def correct(self) -> bool:
        return self.shape_ok and self.colour_ok and self.geometry_ok


# --------------------------------------------------------------------------- appearance
EVAL_ELEVATION_DEG, EVAL_DISTANCE, EVAL_FOVY_DEG = 15.0, 1.75, 50.0  # the CPU recipes' eval camera


def orbit_cameras(n_views: int = N_VIEWS, batch_size: int = 1) -> OrbitCameraDataset:
    """The judged views, at the prior's supersampled size (shared with the reference renders)."""
    size = procedural.IMAGE_SIZE * procedural.SUPERSAMPLE
    return OrbitCameraDataset(n_views, elevation_deg=EVAL_ELEVATION_DEG, camera_distance=EVAL_DISTANCE,
                              fovy_deg=EVAL_FOVY_DEG, height=size, width=size, batch_size=batch_size)


@torch.no_grad()
def render_views_with_depth(system: Any, n_views: int = N_VIEWS, views: Optional[Sequence[Any]] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([V, 3, 32, 32] renders in [0, 1], [V, 1, 32, 32] opacity, [V, 1, 32, 32] depth blended
    onto 0) around the object, supersampled like the training data; ``views`` (camera batches at
    the supersampled size) replace the ``n_views`` orbit."""
    views = orbit_cameras(n_views) if views is None else views
    system.eval()
    images, opacity, depth = [], [], []
    for i in range(len(views)):
        batch = {k: (v.to(system.device) if torch.is_tensor(v) else v) for k, v in views[i].items()}
        out = system.renderer(**batch)
        images.append(out["comp_rgb"].float().cpu())
        opacity.append(out["opacity"].float().cpu())
        depth.append(out["depth"].float().cpu())
    return (procedural.downsample(torch.cat(images).clamp(0, 1)), procedural.downsample(torch.cat(opacity).clamp(0, 1)),
            procedural.downsample(torch.cat(depth)))


def render_views_with_opacity(system: Any, n_views: int = N_VIEWS, views: Optional[Sequence[Any]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``render_views_with_depth`` without the depth."""
    return render_views_with_depth(system, n_views, views)[:2]


def render_views_with_relief(system: Any, views: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """([V, 4, 32, 32] each view's render and its relief (view_head.relief), what a relief view
    head reads; [V, 1, 32, 32] opacity)."""
    from lab.priors.view_head import relief

    images, opacity, depth = render_views_with_depth(system, views=views)
    distance = torch.cat([torch.as_tensor(v["camera_distances"]).reshape(-1).float() for v in views])
    return torch.cat([images, relief(depth, opacity, distance)], dim=1), opacity


def render_views(system: Any, n_views: int = N_VIEWS) -> torch.Tensor:
    """[V, 3, 32, 32] renders in [0, 1] around the object, supersampled like the training data."""
    return render_views_with_opacity(system, n_views)[0]


def vote(classifier: ShapeColourClassifier, images: torch.Tensor) -> tuple[Counter, Counter]:
    result = classifier.classify(images)
    return Counter(result.shapes), Counter(result.colours)


# --------------------------------------------------------------------------- geometry
def normalised_surface_points(mesh: Mesh, n_points: int = CHAMFER_POINTS, seed: int = 0) -> torch.Tensor:
    """Points sampled uniformly on the surface, centred at their mean, scaled to unit RMS radius."""
    import trimesh

    tm = mesh.to_trimesh()
    points, _ = trimesh.sample.sample_surface(tm, n_points, seed=seed)
    points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    points = points - points.mean(0)
    return points / points.norm(dim=-1).pow(2).mean().sqrt().clamp_min(1e-8)


@lru_cache(maxsize=1)
def reference_shapes(resolution: int = 96) -> dict[str, torch.Tensor]:
    """Normalised surface samples of every ground-truth procedural shape."""
    bound = procedural.OBJECT_RADIUS + 0.2
    bbox = torch.tensor([[-bound] * 3, [bound] * 3])
    references = {}
    for name, sdf in procedural.SHAPE_SDFS.items():
        mesh = extract_isosurface(lambda p, sdf=sdf: -sdf(p)[..., None], bbox, resolution, 0.0)
        references[name] = normalised_surface_points(mesh)
    return references


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetric mean nearest-neighbour distance between point sets [N, 3] and [M, 3]."""
    d = torch.cdist(a, b)
    return float(d.min(1).values.mean() + d.min(0).values.mean())


def chamfer_to_references(mesh: Mesh) -> dict[str, float]:
    points = normalised_surface_points(mesh)
    return {name: chamfer_distance(points, ref) for name, ref in reference_shapes().items()}


# --------------------------------------------------------------------------- runs
def evaluate_system(
    system: Any, prompt: str, classifier: ShapeColourClassifier, images: Optional[torch.Tensor] = None
) -> Score:
    """Both judges; ``images`` are the system's ``render_views`` when the caller already has them."""
    shape, colour = parse_prompt(prompt)
    score = Score(prompt, shape, colour)
    images = render_views(system) if images is None else images
    score.shape_votes, score.colour_votes = vote(classifier, images)
    exporter = find_part(system.cfg.exporter_type)(system.cfg.exporter)
    with torch.no_grad():
        try:
            mesh = exporter.surface(system.geometry)  # what an export would write (NeRF or DMTet)
            score.chamfer = chamfer_to_references(mesh)
            score.mesh = mesh
        except ValueError as e:  # an empty field scores as a wrong shape, not a crash
            print(f"warning: no surface for '{prompt}': {e}", file=sys.stderr)
    return score


def load_trial(trial_dir: str) -> tuple[Any, Optional[str]]:
    """The trained system of a trial folder (its parsed config + last checkpoint) and its prompt
    (None for a recipe without one, e.g. a reconstruction)."""
    from threestudio_like.experiment import load_trained_system

    system, exp = load_trained_system(trial_dir)
    return system, (exp.system.get("prompt_processor") or {}).get("prompt")


def evaluate_trials(trial_dirs: Sequence[str], classifier_folder: str) -> list[Score]:
    classifier = load_classifier(classifier_folder)
    scores = []
    for trial in trial_dirs:
        system, prompt = load_trial(trial)
        scores.append(evaluate_system(system, prompt, classifier))
    return scores


def format_table(scores: Sequence[Score]) -> str:
    mark = {True: "yes", False: "NO"}
    rows = [f"{'prompt':<22}{'classifier (8 views)':<28}{'nearest by Chamfer':<24}{'shape':>6}{'colour':>7}{'geom':>6}"]
    for s in scores:
        votes = f"{s.shape} {s.shape_votes[s.shape]}/{N_VIEWS}, {s.colour} {s.colour_votes[s.colour]}/{N_VIEWS}"
        nearest = f"{s.nearest_shape} ({s.chamfer[s.nearest_shape]:.3f})" if s.chamfer else "no surface"
        rows.append(f"{s.prompt:<22}{votes:<28}{nearest:<24}{mark[s.shape_ok]:>6}{mark[s.colour_ok]:>7}{mark[s.geometry_ok]:>6}")
    n = max(len(scores), 1)
    rows.append(
        f"shape {sum(s.shape_ok for s in scores)}/{n}, colour {sum(s.colour_ok for s in scores)}/{n}, "
        f"geometry {sum(s.geometry_ok for s in scores)}/{n}, all three {sum(s.correct for s in scores)}/{n} "
        f"({sum(s.correct for s in scores) / n:.0%})"
    )
    return "\n".join(rows)


def train_prompts(prompts: Sequence[str], config: str, overrides: Sequence[str], out_root: str) -> list[str]:
    """Run the recipe once per prompt; returns the trial folders."""
    from threestudio_like.cli import main

    trials = []
    for prompt in prompts:
        tag = prompt.replace(" ", "_")
        args = ["--config", config, "--train", f"system.prompt_processor.prompt={prompt}", f"exp_root_dir={out_root}",
                "use_timestamp=false", *overrides]
        if main(args) != 0:
            raise RuntimeError(f"training failed for '{prompt}'")
        name = _config_name(config)
        trials.append(os.path.join(out_root, name, tag))
    return trials


def _config_name(config: str) -> str:
    from omegaconf import OmegaConf

    return str(OmegaConf.load(config).get("name", "default"))


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--compare" in argv:  # its own options; comparison.py holds that mode
        from lab.comparison import main as compare

        return compare([a for a in argv if a != "--compare"])
    if "--janus" in argv:  # likewise janus.py
        from lab.janus import main as janus

        return janus([a for a in argv if a != "--janus"])
    parser = argparse.ArgumentParser(prog="python -m lab.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("trials", nargs="*", help="trial folders to score")
    parser.add_argument("--compare", action="store_true",
                        help="compare SDS / VSD variants over prompts and seeds (options: --compare --help)")
    parser.add_argument("--janus", action="store_true",
                        help="Janus rate of recipe variants over prompts and seeds (options: --janus --help)")
    parser.add_argument("--train", action="store_true", help="first run the recipe for each prompt")
    parser.add_argument("--prompts", nargs="*", default=None, help="prompts for --train (default: every shape and colour)")
    parser.add_argument("--config", default=DEFAULT_RECIPE)
    parser.add_argument("--out", default="outputs/evaluation")
    parser.add_argument("--classifier", default=None, help="classifier folder (default: the built-in prior's)")
    args, overrides = parser.parse_known_args(argv)
    # key=value words are config overrides for --train, wherever they stand
    overrides += [t for t in args.trials + (args.prompts or []) if "=" in t]
    trials = [t for t in args.trials if "=" not in t]
    prompts = [p for p in args.prompts or [] if "=" not in p]
    if args.train:
        trials += train_prompts(prompts or default_prompts(), args.config, overrides, args.out)
    if not trials:
        parser.error("give trial folders, or --train")
    from threestudio_like.guidance.models import resolve_model_path

    classifier = args.classifier or resolve_model_path(DEFAULT_PRIOR)
    print(format_table(evaluate_trials(trials, classifier)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
