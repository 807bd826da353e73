"""Does the embedded prior draw what it is asked for? Sample, classify, score.

    python -m threestudio_like.priors.sample_eval --model DIR [--per-pair 4] [--guidance 1 3]

For every colour x shape it draws ``--per-pair`` DDIM samples (50 steps) captioned
"a {colour} {shape}, {view} view" (views cycling front / side / back / overhead), at each
guidance scale, names them with the classifier in DIR/classifier, prints shape / colour / both
accuracies, and writes DIR/samples.png (one block per guidance scale, a row per shape, colours
left to right) and DIR/sample_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional, Sequence

import torch

from threestudio_like.priors.classifier import load_classifier
from threestudio_like.priors.procedural import COLOUR_NAMES, SHAPE_NAMES, VIEW_NAMES, caption, contact_sheet
from threestudio_like.priors.prior_model import PriorModel, sample_images
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
        save_image(os.path.join(model_dir, "samples.png"), sheet.numpy())
        atomic_write_text(os.path.join(model_dir, "sample_eval.json"), json.dumps(results, indent=2))
    return results


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="prior folder (with classifier/)")
    p.add_argument("--per-pair", type=int, default=4)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    evaluate(args.model, args.per_pair, args.guidance, args.steps, args.seed, args.threads)


if __name__ == "__main__":
    main()
