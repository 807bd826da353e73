"""Does the embedded prior draw what it is asked for? Sample, classify, score.

    python -m lab.priors.sample_eval --model DIR [--per-pair 4] [--guidance 1 3]

For every colour x shape it draws ``--per-pair`` DDIM samples (50 steps) captioned
"a {colour} {shape}, {view} view" (views cycling front / side / back / overhead), at each
guidance scale, names them with the classifier in DIR/classifier, prints shape / colour / both
accuracies, and writes DIR/samples.png (one block per guidance scale, a row per shape, colours
left to right) and DIR/sample_eval.json.

A multi-view prior (MVDream-style, ``builtin:shapes32-mv``) is also asked whether it knows its
cameras: ``--camera-sides`` samples groups of 4 views of "a {colour} house / mug" at azimuths
start + k 90 (starts away from the side boundaries) and reports, with the view head, how many
samples show the side their camera faces (chance is about a third for the house).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Optional, Sequence

import torch

from lab import LAB_WEIGHTS_DIR, lab_side
from lab.priors.classifier import load_classifier
from lab.priors.procedural import COLOUR_NAMES, SHAPE_NAMES, VIEW_NAMES, caption, contact_sheet
from lab.priors.prior_model import PriorModel, sample_images
from threestudio_like.utils.io import atomic_write_text, save_image


def evaluation_prompts(per_pair: int) -> tuple[list[str], list[str], list[str]]:
    """(captions, shape labels, colour labels), grouped shape-major then colour."""
    captions, shapes, colours = [], [], []
    for shape in SHAPE_NAMES:
        for colour in COLOUR_NAMES:
            for k in range(per_pair):
                captions.append(caption(colour, shape, VIEW_NAMES[k % len(VIEW_NAMES)]))
                shapes.append(shape)
                colours.append(colour)
    return captions, shapes, colours


def evaluate(
    model_dir: str,
    per_pair: int = 4,
    guidance_scales: Sequence[float] = (1.0, 3.0),
    steps: int = 50,
    seed: int = 0,
    threads: Optional[int] = None,
    write_outputs: bool = True,
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model = PriorModel.load(model_dir).eval()
    classifier = load_classifier(model_dir)
    captions, shapes, colours = evaluation_prompts(per_pair)
    results: dict = {"per_pair": per_pair, "steps": steps, "seed": seed, "guidance": {}}
    blocks = []
    for scale in guidance_scales:
        start = time.time()
        images = sample_images(model, captions, guidance_scale=scale, steps=steps, generator=torch.Generator().manual_seed(seed))
        predicted_shapes, predicted_colours, _ = classifier.classify(images)
        shape_ok = torch.tensor([p == t for p, t in zip(predicted_shapes, shapes)])
        colour_ok = torch.tensor([p == t for p, t in zip(predicted_colours, colours)])
        scores = {
            "shape": shape_ok.float().mean().item(),
            "colour": colour_ok.float().mean().item(),
            "both": (shape_ok & colour_ok).float().mean().item(),
            "per_shape_both": {
                s: (shape_ok & colour_ok)[torch.tensor([t == s for t in shapes])].float().mean().item() for s in SHAPE_NAMES
            },
            "seconds": round(time.time() - start, 1),
        }
        results["guidance"][str(scale)] = scores
        print(
            f"guidance {scale:g}: shape {scores['shape']:.3f}  colour {scores['colour']:.3f}  both {scores['both']:.3f}  "
            f"({len(captions)} samples, {scores['seconds']:.0f} s)",
            flush=True,
        )
        blocks.append(contact_sheet(images, columns=len(COLOUR_NAMES) * per_pair, scale=2))
    if write_outputs:
        gap = torch.ones(blocks[0].shape[0], 12, 3)
        sheet = torch.cat([torch.cat([b, gap], dim=1) for b in blocks], dim=1)[:, :-12]
        save_image(os.path.join(lab_side(model_dir), "samples.png"), sheet.numpy())
        atomic_write_text(os.path.join(lab_side(model_dir), "sample_eval.json"), json.dumps(results, indent=2))
    return results


CAMERA_SIDE_STARTS_DEG = (0.0, 15.0, -15.0)  # group azimuths start + k 90 stay >= 30 degrees from side boundaries


def camera_side_accuracy(
    model_dir: str, groups_per_start: int = 8, guidance_scale: float = 3.0, steps: int = 30, seed: int = 0, colour: str = "red"
) -> dict[str, float]:
    """Per shape with a front, the fraction of a multi-view prior's samples that show the side
    their camera faces (judged by the view head; house left / right merged)."""
    from threestudio_like.data.cameras import make_camera_batch, spherical_to_cartesian
    from threestudio_like.guidance.multiview_unet import mvdream_camera
    from lab.priors.procedural import MULTIVIEW_CAMERA_CONFIG
    from lab.priors.view_head import SIDE_GROUPS, VIEW_SHAPES, load_view_head, side_of_azimuth

    model = PriorModel.load(model_dir).eval()
    # the view head judges renders of the procedural shapes, whichever prior drew them: the shipped one
    view_head = load_view_head(os.path.join(LAB_WEIGHTS_DIR, "shapes32", "classifier"))
    n_view = MULTIVIEW_CAMERA_CONFIG["n_view"]
    fovy = sum(MULTIVIEW_CAMERA_CONFIG["fovy_range"]) / 2
    elevation = 15.0
    result = {}
    for shape in VIEW_SHAPES:
        right = total = 0
        for start in CAMERA_SIDE_STARTS_DEG:
            azimuth = torch.tensor([start + 90.0 * k for k in range(n_view)])
            relative = sum(MULTIVIEW_CAMERA_CONFIG["camera_distance_range"]) / 2  # relative to the field of view
            distance = torch.full((n_view,), relative / math.tan(math.radians(fovy / 2)))
            positions = spherical_to_cartesian(torch.full((n_view,), elevation), azimuth, distance)
            cameras = make_camera_batch(
                camera_positions=positions, center=torch.zeros(n_view, 3), up=torch.tensor([0.0, 0.0, 1.0]).expand(n_view, 3),
                fovy_deg=torch.full((n_view,), fovy), light_positions=positions.clone(), elevation_deg=torch.full((n_view,), elevation),
                azimuth_deg=azimuth, camera_distances=distance, height=8, width=8,
            )
            images = sample_images(
                model, [f"a {colour} {shape}"] * n_view * groups_per_start, guidance_scale=guidance_scale, steps=steps,
                generator=torch.Generator().manual_seed(seed + int(start) % 360), batch_size=4 * n_view,
                cameras=mvdream_camera(cameras["c2w"]).repeat(groups_per_start, 1), num_frames=n_view,
            )
            seen = view_head.classify(images, shape).indices.tolist()
            expected = side_of_azimuth(azimuth.repeat(groups_per_start)).tolist()
            groups = SIDE_GROUPS[shape]
            right += sum(groups[s] == groups[e] for s, e in zip(seen, expected))
            total += len(seen)
        result[shape] = right / total
        print(f"{shape}: {right}/{total} multi-view samples show their camera's side", flush=True)
    return result


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="prior folder (with classifier/)")
    p.add_argument("--per-pair", type=int, default=4)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--camera-sides", action="store_true", help="a multi-view prior: does each view show its camera's side?")
    args = p.parse_args(argv)
    if args.camera_sides:
        torch.set_num_threads(args.threads)
        camera_side_accuracy(args.model, seed=args.seed)
        return
    evaluate(args.model, args.per_pair, args.guidance, args.steps, args.seed, args.threads)


if __name__ == "__main__":
    main()
