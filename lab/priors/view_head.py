"""The evaluator's view head: which side of a house or a mug a 32 x 32 render shows.

Two procedural shapes have a front (procedural.py): the house (door on its +x face) and the mug
(handle on its -y side). A camera's side is set by its azimuth relative to the object, in four
classes (``SIDE_NAMES``, azimuth order): front |az| < 45, left 45..135 (the object's left, +y),
back |az| > 135, right -135..-45. A Janus object shows its front from every side; the head
tells which side a render *looks like*, and ``lab/janus.py`` compares that with
the camera's side. The caller says which of the two shapes the render is meant to be (the
prompt names it): the head has one 4-way output per shape on a shared trunk, so it never has to
guess the shape, and a house with a door on every face is judged as a house.

The house is mirror-symmetric about its y = 0 plane and, but for the door, about x = 0: seen
from near azimuth +-90 the door is edge-on and the left and right views are the same image. Its
left / right answer is only as good as a door seen at a glancing angle; ``SIDE_GROUPS`` merges
them for the house wherever a decision needs a side that the image determines.

It is a separate small network, not a third head on ``ShapeColourClassifier``, so the shipped
shape / colour classifier's weights stay as they are. It is saved beside it in
``classifier/view/`` (``model.safetensors`` + ``view_head.json``) and trained by
``python -m lab.priors.train_view_head``; a folder may hold an ensemble of heads
trained alike from several seeds (``ViewHeadEnsemble``, ``"members"`` in the json), judged by
their mean probability.

A head may also see the relief (``relief``): per pixel, how far in front of the look-at point
the surface is, for the shapes it names (``relief_shapes``; the others' relief is zeroed).
Colour alone cannot always tell a mug's handle pointing at the camera from one hidden behind it
at 32 px once a NeRF has softened the ring; depth can. (The house's front is its door, a colour;
its relief is the same from the front and, mirrored, from behind.) Such a head is saved in
``classifier/view_relief/`` and the Janus measure, which renders depth, prefers it; the RGB
head judges images that have no depth (the prior's samples, sample_eval.py).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like.utils.typing import Float, Int, Tensor

SIDE_NAMES: tuple[str, ...] = ("front", "left", "back", "right")  # class i is centred on azimuth 90 * i
SIDE_CENTRES_DEG: tuple[float, ...] = (0.0, 90.0, 180.0, -90.0)
VIEW_SHAPES: tuple[str, ...] = ("house", "mug")  # the procedural shapes whose front shows
# Per shape, the sides a render can tell apart: the house's left and right are one group.
SIDE_GROUPS: dict[str, tuple[int, ...]] = {"house": (0, 1, 2, 1), "mug": (0, 1, 2, 3)}
VIEW_FOLDER = "view"  # inside the classifier folder: the RGB head
RELIEF_FOLDER = "view_relief"  # the RGB + relief head
RELIEF_RANGE = 1.0  # world units either side of the look-at point that the relief spans (objects reach ~0.7)
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "view_head.json"


def side_of_azimuth(azimuth_deg: Union[float, Sequence[float], Tensor]) -> Int[Tensor, "B"]:
    """Index into ``SIDE_NAMES`` of the side a camera at ``azimuth_deg`` (any range) sees.
    Boundaries (45 + 90 k) go to the class counter-clockwise of them; callers avoid them."""
    az = torch.as_tensor(azimuth_deg, dtype=torch.float64)
    return (torch.remainder(az + 45.0, 360.0) // 90.0).long() % len(SIDE_NAMES)


def boundary_distance(azimuth_deg: Union[float, Sequence[float], Tensor]) -> Float[Tensor, "B"]:
    """Degrees from ``azimuth_deg`` to the nearest side boundary (45 + 90 k): 45 at a class centre."""
    d = torch.remainder(torch.as_tensor(azimuth_deg, dtype=torch.float64) - 45.0, 90.0)
    return torch.minimum(d, 90.0 - d)


def relief(depth: Float[Tensor, "B 1 H W"], opacity: Float[Tensor, "B 1 H W"], camera_distance: Float[Tensor, "B"]) -> Float[Tensor, "B 1 H W"]:
    """How near each pixel's surface is: 0.5 at the look-at point's depth, 1 at ``RELIEF_RANGE``
    nearer, 0 as far behind it; times the pixel's opacity, so the background is 0. ``depth`` is
    blended onto 0 by opacity, as the renderers give it."""
    surface = depth / opacity.clamp_min(1e-3)
    nearness = (camera_distance.view(-1, 1, 1, 1) - surface) / (2.0 * RELIEF_RANGE) + 0.5
    return opacity * nearness.clamp(0.0, 1.0)


class ViewClassification(NamedTuple):
    """Predicted side names, their indices [B] and the probability table [B, 4]."""

    sides: list[str]
    indices: Tensor
    probs: Tensor


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SideClassifier(nn.Module):
    """What the Janus measure calls: ``forward(images, shape_ids)`` gives side log-probabilities
    (or logits) [B, 4] of each image's shape, ``classify`` the verdict. ``images`` have
    ``channels`` channels: RGB (3), or RGB and relief (4) for a head that sees the relief of
    ``relief_shapes``."""

    side_names: list[str]
    shapes: list[str]
    relief_shapes: list[str]

    @property
    def channels(self) -> int:
        return 4 if self.relief_shapes else 3

    def shape_ids(self, shapes: Union[str, Sequence[str]], n: int) -> Int[Tensor, "B"]:
        """Indices into ``self.shapes`` of one name (for all ``n`` images) or one name per image."""
        names = [shapes] * n if isinstance(shapes, str) else list(shapes)
        unknown = sorted(set(names) - set(self.shapes))
        if unknown or len(names) != n:
            raise ValueError(f"view head: needs one of {self.shapes} per image (or one for all {n}); got {shapes!r}")
        return torch.tensor([self.shapes.index(name) for name in names], dtype=torch.long)

    @torch.no_grad()
    def classify(self, images: Float[Tensor, "B C 32 32"], shapes: Union[str, Sequence[str]]) -> ViewClassification:
        """The side each image shows (``images`` in [0, 1]), as a render of ``shapes`` (one name, or
        one per image). Views may carry more channels than the head reads (RGB + relief for an RGB
        head): it takes the first ``channels``."""
        if images.ndim != 4 or images.shape[1] < self.channels:
            raise ValueError(f"view head: expected images [B, {self.channels}, H, W] in [0, 1] "
                             f"({'RGB' if self.channels == 3 else 'RGB + relief'}), got shape {tuple(images.shape)}")
        images = images[:, : self.channels]
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        ids = self.shape_ids(shapes, len(images))
        probs = self(images.to(device=device, dtype=torch.float32), ids).softmax(-1).cpu()
        self.train(was_training)
        indices = probs.argmax(-1)
        return ViewClassification([self.side_names[i] for i in indices.tolist()], indices, probs)


class ViewHead(SideClassifier):
    """Conv trunk 32 -> 4 pixels (widths w, 2w, 4w), one linear layer to 4 sides per shape.

    No global pooling: where the door / handle sits in the frame is the answer, so the
    linear layer sees the spatial map."""

    def __init__(self, width: int = 16, side_names: Sequence[str] = SIDE_NAMES, shapes: Sequence[str] = VIEW_SHAPES,
                 relief_shapes: Sequence[str] = ()) -> None:
        super().__init__()
        if set(relief_shapes) - set(shapes):
            raise ValueError(f"view head: relief_shapes {list(relief_shapes)} must be among its shapes {list(shapes)}")
        self.side_names = list(side_names)
        self.shapes = list(shapes)
        self.relief_shapes = list(relief_shapes)
        self.width = width
        # per shape: 1 where the head sees the relief, 0 where it is zeroed
        self.register_buffer("sees_relief", torch.tensor([float(s in relief_shapes) for s in self.shapes]), persistent=False)
        self.trunk = nn.Sequential(_block(self.channels, width), _block(width, 2 * width), _block(2 * width, 4 * width), nn.Flatten())
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(4 * width * 4 * 4, len(self.shapes) * len(self.side_names))

    def forward(self, images: Float[Tensor, "B C 32 32"], shape_ids: Int[Tensor, "B"]) -> Float[Tensor, "B 4"]:
        """Side logits of each image's shape (``shape_ids`` index ``self.shapes``); ``images`` in
        [0, 1] with ``self.channels`` channels (other sizes are area-resized to 32 x 32)."""
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"view head: expected images [B, {self.channels}, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if self.relief_shapes:
            seen = self.sees_relief[shape_ids.to(images.device)].view(-1, 1, 1, 1)
            images = torch.cat([images[:, :3], images[:, 3:] * seen], dim=1)
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, (32, 32), mode="area")
        logits = self.head(self.dropout(self.trunk(images * 2.0 - 1.0))).view(len(images), len(self.shapes), -1)
        return logits[torch.arange(len(images), device=logits.device), shape_ids.to(logits.device)]


class ViewHeadEnsemble(SideClassifier):
    """View heads trained alike from different seeds; the verdict is their mean probability.
    On NeRF renders, out of the training domain, much of one head's error is its own (two seeds
    of the same training disagree on different views), and averaging cancels that part."""

    def __init__(self, members: Sequence[ViewHead]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a view head ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.side_names, self.shapes, self.width = members[0].side_names, members[0].shapes, members[0].width
        self.relief_shapes = members[0].relief_shapes

    def forward(self, images: Float[Tensor, "B C 32 32"], shape_ids: Int[Tensor, "B"]) -> Float[Tensor, "B 4"]:
        """Log of the members' mean side probability (so its softmax is that mean)."""
        probs = torch.stack([m(images, shape_ids).softmax(-1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def view_head_folder(folder: str, kinds: Sequence[str] = (VIEW_FOLDER,)) -> str:
    """The view head's folder, given it, a classifier folder or a prior folder; ``kinds`` are the
    head folders to look for (``VIEW_FOLDER``, ``RELIEF_FOLDER``), the first found wins."""
    from lab import lab_side

    folder = lab_side(folder)  # a built-in prior's heads are in lab/weights/<name>
    candidates = [folder] + [os.path.join(folder, *parent, kind) for kind in kinds for parent in ((), ("classifier",))]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, INFO_FILE)):
            return candidate
    raise FileNotFoundError(
        f"No view head in {folder} (looked for {INFO_FILE} there, in {'/, '.join(kinds)}/ and in classifier/<the same>/). "
        f"Train one with `python -m lab.priors.train_view_head --out <prior folder>`."
    )


def save_view_head(folder: str, model: Union[ViewHead, ViewHeadEnsemble], info: dict | None = None) -> None:
    """``folder/model.safetensors`` and ``folder/view_head.json`` (side names, shapes, width, the
    shapes whose relief it sees, number of ensemble members, training info)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, os.path.join(folder, WEIGHTS_FILE))
    members = len(model.members) if isinstance(model, ViewHeadEnsemble) else 1
    meta = {"sides": model.side_names, "shapes": model.shapes, "width": model.width, "relief_shapes": model.relief_shapes,
            "members": members, "info": info or {}}
    with open(os.path.join(folder, INFO_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load_view_head(folder: str, kinds: Sequence[str] = (VIEW_FOLDER,)) -> Union[ViewHead, ViewHeadEnsemble]:
    """The view head (or ensemble of them) in ``folder`` (see ``view_head_folder``), in eval mode."""
    from safetensors.torch import load_file

    folder = view_head_folder(folder, kinds)
    with open(os.path.join(folder, INFO_FILE)) as f:
        meta = json.load(f)
    heads = [ViewHead(meta.get("width", 16), meta["sides"], meta.get("shapes", VIEW_SHAPES), meta.get("relief_shapes", ()))
             for _ in range(meta.get("members", 1))]
    model = heads[0] if len(heads) == 1 else ViewHeadEnsemble(heads)
    model.load_state_dict(load_file(os.path.join(folder, WEIGHTS_FILE)))
    return model.eval()
