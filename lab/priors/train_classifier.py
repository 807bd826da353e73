"""Train the shape / colour classifier that judges the embedded prior's samples.

    python -m lab.priors.train_classifier --out DIR [--steps N] [--seed S]

Trains on procedural renders with a dataset seed different from the prior's (the prior's
images are never used to judge it), with augmentations that mimic imperfect diffusion samples
(pixel noise, small shifts), and reports accuracy on a further held-out set. Writes
DIR/classifier/model.safetensors and DIR/classifier/labels.json.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Optional

import torch
import torch.nn.functional as F

from threestudio_like.data.random_camera import step_seed
from lab import lab_side
from lab.priors.classifier import ShapeColourClassifier, save_classifier
from lab.priors.procedural import COLOUR_NAMES, SHAPE_NAMES
from lab.priors.train_prior import load_or_render_dataset
from threestudio_like.utils.typing import Float, Tensor

TRAIN_DATASET_SEED = 1  # the prior trains on seed 0
HELD_OUT_DATASET_SEED = 2


def augment(images: Float[Tensor, "B 3 H W"], g: torch.Generator) -> Float[Tensor, "B 3 H W"]:
    """Random shifts of up to 2 pixels (white fill), horizontal flips, and Gaussian pixel noise."""
    b = images.shape[0]
    padded = F.pad(images, (2, 2, 2, 2), value=1.0)
    dx, dy = torch.randint(0, 5, (2, b), generator=g).tolist()
    h, w = images.shape[-2:]
    shifted = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=g) < 0.5
    shifted[flip] = shifted[flip].flip(-1)
    sigma = torch.rand(b, 1, 1, 1, generator=g) * 0.08
    return (shifted + sigma * torch.randn(shifted.shape, generator=g)).clamp(0, 1)


@torch.no_grad()
def accuracy(model: ShapeColourClassifier, images: Tensor, shape_ids: Tensor, colour_ids: Tensor) -> dict[str, float]:
    model.eval()
    shape_ok, colour_ok = [], []
    for start in range(0, len(images), 512):
        s_logits, c_logits = model(images[start : start + 512].float() / 255.0)
        shape_ok.append(s_logits.argmax(-1) == shape_ids[start : start + 512])
        colour_ok.append(c_logits.argmax(-1) == colour_ids[start : start + 512])
    s, c = torch.cat(shape_ok), torch.cat(colour_ok)
    return {"shape": s.float().mean().item(), "colour": c.float().mean().item(), "both": (s & c).float().mean().item()}


def train_classifier(
    out: str, steps: int = 2000, batch_size: int = 96, seed: int = 0, dataset_size: int = 16000, lr: float = 2e-3, threads: int = 1,
    bf16: bool = True,
) -> dict:
    torch.set_num_threads(threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    data = load_or_render_dataset(dataset_size, TRAIN_DATASET_SEED, log)
    held_out = load_or_render_dataset(2048, HELD_OUT_DATASET_SEED, log)
    torch.manual_seed(seed)
    model = ShapeColourClassifier(SHAPE_NAMES, COLOUR_NAMES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    for step in range(steps):
        model.train()
        g = torch.Generator().manual_seed(step_seed(seed, step))
        index = torch.randint(dataset_size, (batch_size,), generator=g)
        images = augment(data["images"][index].float() / 255.0, g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            shape_logits, colour_logits = model(images)
        shape_logits, colour_logits = shape_logits.float(), colour_logits.float()
        loss = F.cross_entropy(shape_logits, data["shape_ids"][index]) + F.cross_entropy(colour_logits, data["colour_ids"][index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    scores = accuracy(model, held_out["images"], held_out["shape_ids"], held_out["colour_ids"])
    log(f"held-out accuracy: shape {scores['shape']:.3f} colour {scores['colour']:.3f} both {scores['both']:.3f}")
    info = {
        "held_out_accuracy": scores,
        "steps": steps,
        "batch_size": batch_size,
        "bf16": bf16,
        "seed": seed,
        "train_dataset": {"size": dataset_size, "seed": TRAIN_DATASET_SEED},
        "held_out_dataset": {"size": 2048, "seed": HELD_OUT_DATASET_SEED},
        "wall_seconds": round(time.time() - start, 1),
    }
    folder = os.path.join(lab_side(out), "classifier")  # a built-in prior's: lab/weights/<name>/classifier
    save_classifier(folder, model.eval(), info)
    log(f"saved {folder}")
    return info


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="prior folder; the classifier goes to OUT/classifier")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset-size", type=int, default=16000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    args = p.parse_args(argv)
    train_classifier(args.out, args.steps, args.batch_size, args.seed, args.dataset_size, threads=args.threads, bf16=not args.no_bf16)


if __name__ == "__main__":
    main()
