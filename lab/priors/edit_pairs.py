"""Procedural edit pairs for the built-in editing model ``builtin:edit32`` (InstructPix2Pix-style).

A pair is one object seen by one camera twice: in its source colour and in the colour an
instruction asks for ("make it blue"), on the same background, under the same light. Cameras
are drawn like the ``random-camera-datamodule`` (``procedural.CAMERA_CONFIG``); backgrounds
vary (plain, gradients, smooth noise), so the model learns to change the object and keep the
rest of the picture, as an edit of a reconstructed scene needs. The target colour may equal
the source one: then the edit is the identity, which is where an edited scene converges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from threestudio_like.data.random_camera import step_seed
from lab.priors import procedural
from threestudio_like.utils.typing import Float, Int, Tensor

# Instruction templates; every word is one token of the edit model's vocabulary.
INSTRUCTIONS: tuple[str, ...] = ("make it {colour}", "turn it {colour}")
INSTRUCTION_WORDS: tuple[str, ...] = ("make", "turn", "it")
# InstructPix2Pix's conditioning dropout: each condition alone, independently, for 3-way guidance.
EMPTY_INSTRUCTION_PROBABILITY = 0.05
EMPTY_IMAGE_PROBABILITY = 0.05
PLAIN_WHITE_PROBABILITY = 0.25  # the CPU recipes' white background, kept common


def instruction(colour: str, template: int = 0) -> str:
    """``"make it blue"``."""
    return INSTRUCTIONS[template].format(colour=colour)


@dataclass
class EditPairs:
    """N (source, target) renders in [0, 1], channels first, with their instructions."""

    sources: Float[Tensor, "N 3 32 32"]
    targets: Float[Tensor, "N 3 32 32"]
    masks: Float[Tensor, "N 1 32 32"]
    shape_ids: Int[Tensor, "N"]
    source_colour_ids: Int[Tensor, "N"]
    target_colour_ids: Int[Tensor, "N"]
    instructions: list[str]

    def __len__(self) -> int:
        return int(self.shape_ids.shape[0])


def random_backgrounds(n: int, size: int, generator: torch.Generator) -> Float[Tensor, "n 3 size size"]:
    """White, a plain colour, a linear gradient between two colours, or smooth colour noise."""
    kind = torch.rand(n, generator=generator)
    colours = torch.rand(n, 2, 3, 1, 1, generator=generator)
    ramp = torch.linspace(0, 1, size)
    angle = torch.rand(n, generator=generator) * 2 * torch.pi
    x, y = ramp[None, :, None], ramp[None, None, :]
    along = (x * torch.cos(angle)[:, None, None] + y * torch.sin(angle)[:, None, None]).abs().clamp(0, 1)[:, None]
    gradient = colours[:, 0] * (1 - along) + colours[:, 1] * along
    noise = F.interpolate(torch.rand(n, 3, 4, 4, generator=generator), size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)
    plain = colours[:, 0].expand(n, 3, size, size)
    out = torch.where((kind < 0.5)[:, None, None, None], plain, torch.where((kind < 0.8)[:, None, None, None], gradient, noise))
    white = torch.rand(n, generator=generator) < PLAIN_WHITE_PROBABILITY
    return torch.where(white[:, None, None, None], torch.ones_like(out), out)


def over_background(on_white: Float[Tensor, "N 3 h w"], mask: Float[Tensor, "N 1 h w"], background: Float[Tensor, "N 3 h w"]) -> Float[Tensor, "N 3 h w"]:
    """Move a render from the white background onto ``background`` (the mask is the pixel coverage)."""
    return on_white - (1.0 - mask) + (1.0 - mask) * background


def render_pairs(seed: int, index: int, batch_size: int) -> EditPairs:
    """Batch ``index`` of the pair set with ``seed``: a pure function of (seed, index)."""
    cameras = procedural.camera_sampler(batch_size, seed).sample(index)
    g = torch.Generator().manual_seed(step_seed(seed + 104729, index))
    n_colours = len(procedural.COLOUR_NAMES)
    shape_ids = torch.randint(len(procedural.SHAPE_NAMES), (batch_size,), generator=g)
    source_ids = torch.randint(n_colours, (batch_size,), generator=g)
    target_ids = torch.randint(n_colours, (batch_size,), generator=g)
    flat = torch.rand(batch_size, generator=g) < procedural.FLAT_SHADING_PROBABILITY
    templates = torch.randint(len(INSTRUCTIONS), (batch_size,), generator=g)
    backgrounds = random_backgrounds(batch_size, procedural.IMAGE_SIZE, g)
    source, mask = procedural.render_cameras(shape_ids, source_ids, cameras, flat)
    target, _ = procedural.render_cameras(shape_ids, target_ids, cameras, flat)
    return EditPairs(
        sources=over_background(source, mask, backgrounds).clamp(0, 1),
        targets=over_background(target, mask, backgrounds).clamp(0, 1),
        masks=mask,
        shape_ids=shape_ids,
        source_colour_ids=source_ids,
        target_colour_ids=target_ids,
        instructions=[instruction(procedural.COLOUR_NAMES[int(c)], int(t)) for c, t in zip(target_ids, templates)],
    )


def generate_pairs(n_pairs: int, seed: int = 0, batch_size: int = 256, progress=None) -> EditPairs:
    """``n_pairs`` edit pairs; deterministic in (n_pairs, seed, batch_size)."""
    batches = []
    for index, start in enumerate(range(0, n_pairs, batch_size)):
        batches.append(render_pairs(seed, index, min(batch_size, n_pairs - start)))
        if progress is not None:
            progress(start + len(batches[-1]), n_pairs)
    return EditPairs(
        **{k: torch.cat([getattr(b, k) for b in batches]) for k in EditPairs.__dataclass_fields__ if k != "instructions"},
        instructions=[text for b in batches for text in b.instructions],
    )
