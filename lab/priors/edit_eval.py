"""Does the editing model do what it is told? Edit held-out procedural pairs, score the colours.

    python -m lab.priors.edit_eval --model DIR [--per-colour 32]

For every colour, ``--per-colour`` pairs the model never saw (``edit_pairs`` with seed 999) are
edited by "make it <colour>" through ``stable-diffusion-instructpix2pix-guidance`` at the recipe's
settings (the render is the source image itself, as at an edit's start; an edit from a small t
can hardly change anything, so ``--min-step-percent 0.5`` measures what a decisive edit does). Scores: the share of
edits whose mean foreground colour is nearest in hue to the asked colour (among the eight), and
the PSNR of the background (what must not change) against the source. Writes DIR/edit_eval.json
and DIR/edits.png (a row per colour: eight sources, then their edits).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
from typing import Optional

import torch

from lab.priors import edit_pairs, procedural
from threestudio_like.utils.io import atomic_write_text, save_image

EVAL_SEED = 999  # training pairs use other seeds


def nearest_colour_by_hue(rgb: torch.Tensor) -> str:
    """The procedural colour whose albedo hue is nearest (circularly) to ``rgb``'s."""
    hue = colorsys.rgb_to_hsv(*rgb.tolist())[0]
    def distance(name: str) -> float:
        h = colorsys.rgb_to_hsv(*procedural.COLOURS[name])[0]
        return min(abs(hue - h), 1 - abs(hue - h))
    return min(procedural.COLOUR_NAMES, key=distance)


def evaluate(model: str, per_colour: int = 32, seed: int = 0, min_step_percent: float = 0.02, max_step_percent: float = 0.98, write_outputs: bool = True) -> dict:
    from threestudio_like.guidance.instructpix2pix import InstructPix2PixGuidance
    from threestudio_like.experiment import find_part

    guidance = InstructPix2PixGuidance({"ip2p_name_or_path": model, "min_step_percent": min_step_percent, "max_step_percent": max_step_percent})
    n = per_colour * len(procedural.COLOUR_NAMES)
    pairs = edit_pairs.render_pairs(EVAL_SEED, 0, n)
    generator = torch.Generator().manual_seed(seed)
    correct, background_psnr, sheet = 0, [], []
    for c, colour in enumerate(procedural.COLOUR_NAMES):
        rows = slice(c * per_colour, (c + 1) * per_colour)
        source = pairs.sources[rows].permute(0, 2, 3, 1)
        prompt = find_part("stable-diffusion-prompt-processor")({"pretrained_model_name_or_path": model, "prompt": edit_pairs.instruction(colour), "spawn": False})()
        edited = guidance(source, source, prompt, generator=generator)["edit_images"].permute(0, 3, 1, 2)
        mask = (pairs.masks[rows] > 0.99).float()
        for i in range(per_colour):
            foreground = (edited[i] * mask[i]).sum((1, 2)) / mask[i].sum().clamp_min(1)
            correct += nearest_colour_by_hue(foreground) == colour
            outside = 1 - (pairs.masks[rows][i] > 0.01).float()
            mse = ((edited[i] - pairs.sources[rows][i]) ** 2 * outside).sum() / (3 * outside.sum()).clamp_min(1)
            background_psnr.append(float(-10 * torch.log10(mse.clamp_min(1e-10))))
        sheet.append(torch.cat([pairs.sources[rows][:8], edited[:8]]))
    result = {
        "model": model, "pairs": n, "colour_accuracy": correct / n,
        "background_psnr_db": sum(background_psnr) / len(background_psnr), "seed": seed,
        "settings": {"diffusion_steps": guidance.cfg.diffusion_steps, "guidance_scale": guidance.cfg.guidance_scale,
                     "condition_scale": guidance.cfg.condition_scale, "step_percent": [min_step_percent, max_step_percent]},
    }
    if write_outputs:
        from threestudio_like.guidance.models import resolve_model_path

        from lab import lab_side

        folder = lab_side(resolve_model_path(model))  # builtin:edit32's go to lab/weights/edit32
        atomic_write_text(os.path.join(folder, "edit_eval.json"), json.dumps(result, indent=2))
        save_image(os.path.join(folder, "edits.png"), procedural.contact_sheet(torch.cat(sheet), columns=16, scale=2).numpy())
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an editing model folder or builtin:edit32")
    parser.add_argument("--per-colour", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-step-percent", type=float, default=0.02, help="the edit starts at t drawn from [min, max] x 1000")
    parser.add_argument("--max-step-percent", type=float, default=0.98)
    args = parser.parse_args(argv)
    r = evaluate(args.model, args.per_colour, args.seed, args.min_step_percent, args.max_step_percent)
    print(f"{r['pairs']} held-out edits: colour right (nearest hue) {r['colour_accuracy']:.1%}; background kept: {r['background_psnr_db']:.1f} dB PSNR")


if __name__ == "__main__":
    main()
