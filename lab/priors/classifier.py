"""A small CNN that names the shape and the colour in a 32 x 32 image of a procedural object.

It judges the embedded prior: samples drawn for "a red cube" should be classified (cube, red).
Trained on fresh procedural renders (``train_classifier.py``) and saved next to the prior in
``classifier/`` as ``model.safetensors`` + ``labels.json``.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like.utils.typing import Float, Tensor

WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"


class Classification(NamedTuple):
    """Predicted names and the probability tables for a batch of images; unpacks as
    ``shape_names, colour_names, probs`` with ``probs = {"shape": [B, S], "colour": [B, C]}``."""

    shapes: list[str]
    colours: list[str]
    probs: dict[str, Tensor]


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ShapeColourClassifier(nn.Module):
    """Conv trunk 32 -> 4 pixels, then two linear heads (shape, colour) on the flattened map."""

    def __init__(self, shape_names: Sequence[str], colour_names: Sequence[str], width: int = 32) -> None:
        super().__init__()
        self.shape_names = list(shape_names)
        self.colour_names = list(colour_names)
        self.width = width
        self.trunk = nn.Sequential(
            _conv_block(3, width), _conv_block(width, 2 * width), _conv_block(2 * width, 4 * width), nn.Flatten()
        )
        features = 4 * width * 4 * 4
        self.dropout = nn.Dropout(0.2)
        self.shape_head = nn.Linear(features, len(self.shape_names))
        self.colour_head = nn.Linear(features, len(self.colour_names))

    def forward(self, images: Float[Tensor, "B 3 32 32"]) -> tuple[Float[Tensor, "B S"], Float[Tensor, "B C"]]:
        """Logits for shape and colour; ``images`` in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"classifier: expected images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, (32, 32), mode="area")
        h = self.dropout(self.trunk(images * 2.0 - 1.0))
        return self.shape_head(h), self.colour_head(h)

    @torch.no_grad()
    def classify(self, images: Float[Tensor, "B 3 32 32"]) -> Classification:
        """Most likely shape and colour names for each image (``images`` in [0, 1])."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        shape_logits, colour_logits = self(images.to(device=device, dtype=torch.float32))
        self.train(was_training)
        shape_probs, colour_probs = shape_logits.softmax(-1).cpu(), colour_logits.softmax(-1).cpu()
        return Classification(
            shapes=[self.shape_names[i] for i in shape_probs.argmax(-1).tolist()],
            colours=[self.colour_names[i] for i in colour_probs.argmax(-1).tolist()],
            probs={"shape": shape_probs, "colour": colour_probs},
        )


def save_classifier(folder: str, model: ShapeColourClassifier, info: dict | None = None) -> None:
    """``folder/model.safetensors`` and ``folder/labels.json`` (label names, width, training info)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, WEIGHTS_FILE))
    labels = {"shapes": model.shape_names, "colours": model.colour_names, "width": model.width, "info": info or {}}
    with open(os.path.join(folder, LABELS_FILE), "w") as f:
        json.dump(labels, f, indent=2)


def load_classifier(folder: str) -> ShapeColourClassifier:
    """The classifier saved in ``folder`` (a prior folder's ``classifier/`` or the prior folder itself), in eval mode."""
    from safetensors.torch import load_file

    from lab import lab_side

    folder = lab_side(folder)  # a built-in prior's classifier is in lab/weights/<name>
    if not os.path.isfile(os.path.join(folder, LABELS_FILE)) and os.path.isdir(os.path.join(folder, "classifier")):
        folder = os.path.join(folder, "classifier")
    labels_path = os.path.join(folder, LABELS_FILE)
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(
            f"No classifier in {folder} (expected {LABELS_FILE} and {WEIGHTS_FILE}). Train one with "
            f"`python -m lab.priors.train_classifier --out <prior folder>`."
        )
    with open(labels_path) as f:
        labels = json.load(f)
    model = ShapeColourClassifier(labels["shapes"], labels["colours"], width=labels.get("width", 32))
    model.load_state_dict(load_file(os.path.join(folder, WEIGHTS_FILE)))
    return model.eval()
