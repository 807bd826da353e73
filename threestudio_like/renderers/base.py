"""What every renderer shares: the parts it draws with and how the background fills the image."""

from __future__ import annotations

from typing import Any, Optional

import torch

from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Tensor


class RenderParts:
    """Geometry, material and background seen by the renderer.

    A plain object rather than module attributes: the system owns these parts, and
    registering them here too would duplicate their parameters in the state dict.
    """

    def __init__(self, geometry: Any, material: Any, background: Any) -> None:
        self.geometry = geometry
        self.material = material
        self.background = background


class BaseRenderer(BaseModule):
    """A renderer built as ``Renderer(cfg, geometry=..., material=..., background=...)``."""

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        if geometry is None or material is None or background is None:
            name = type(self).__name__
            raise ValueError(
                f"{name} needs geometry=, material= and background= parts: "
                f"build it as {name}(cfg, geometry=..., material=..., background=...)"
            )
        self.parts = RenderParts(geometry, material, background)

    @property
    def geometry(self) -> Any:
        return self.parts.geometry

    @property
    def material(self) -> Any:
        return self.parts.material

    @property
    def background(self) -> Any:
        return self.parts.background

    def background_color(
        self, rays_d: Float[Tensor, "B H W 3"], bg_color: Optional[Any] = None
    ) -> Float[Tensor, "B H W 3"]:
        """The background part's colour along ``rays_d``, or ``bg_color`` when given:
        anything broadcastable to [B, H, W, 3], or one colour per view [B, 3]."""
        if bg_color is None:
            return self.background(dirs=rays_d)
        batch, height, width, _ = rays_d.shape
        color = torch.as_tensor(bg_color, dtype=rays_d.dtype, device=rays_d.device)
        if color.ndim == 2 and color.shape[0] == batch:  # one colour per view
            color = color[:, None, None, :]
        try:
            return torch.broadcast_to(color, (batch, height, width, 3))
        except RuntimeError as e:
            raise ValueError(
                f"bg_color of shape {tuple(color.shape)} cannot be broadcast to the image shape "
                f"{(batch, height, width, 3)}; pass [3], [B, 3] or [B, H, W, 3]"
            ) from e
