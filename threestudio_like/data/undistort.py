"""OpenCV's radial-tangential lens model (k1, k2, p1, p2[, k3]) and image undistortion.

Coordinates are OpenCV's normalised image coordinates: ``x = (u - cx) / fx``, ``y = (v - cy) / fy``
with ``v`` growing downwards (the tangential terms' signs depend on that). Distortion maps an
ideal pinhole point to where the lens puts it:

    r2 = x^2 + y^2,  radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3
    x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
    y_d = y radial + p1 (r2 + 2 y^2) + 2 p2 x y

Coefficients are ``[..., 4]`` (k3 = 0) or ``[..., 5]`` in OpenCV's order ``k1 k2 p1 p2 k3``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from threestudio_like.utils.typing import Float, Tensor


def _coefficients(k: Float[Tensor, "... K"], like: Tensor) -> tuple[Tensor, ...]:
    """(k1, k2, p1, p2, k3), each shaped to broadcast against ``like[..., 0]``."""
    k = torch.as_tensor(k, dtype=like.dtype, device=like.device)
    if k.shape[-1] not in (4, 5):
        raise ValueError(f"distortion coefficients must be [..., 4] or [..., 5] (k1 k2 p1 p2 [k3]), got {tuple(k.shape)}")
    if k.shape[-1] == 4:
        k = torch.cat([k, torch.zeros_like(k[..., :1])], dim=-1)
    return tuple(k[..., i] for i in range(5))


def distort_normalized(xy: Float[Tensor, "... 2"], k: Float[Tensor, "... K"]) -> Float[Tensor, "... 2"]:
    """Forward distortion of normalised pinhole coordinates (OpenCV's ``projectPoints`` model)."""
    k1, k2, p1, p2, k3 = _coefficients(k, xy)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    x_d = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    y_d = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([x_d, y_d], dim=-1)


def undistort_points(
    xy_d: Float[Tensor, "... 2"], k: Float[Tensor, "... K"], iterations: int = 20
) -> Float[Tensor, "... 2"]:
    """Inverse of ``distort_normalized`` by OpenCV's fixed-point iteration
    (``x = (x_d - tangential(x)) / radial(x)``); converges for the mild distortion of real lenses."""
    k1, k2, p1, p2, k3 = _coefficients(k, xy_d)
    x, y = xy_d[..., 0], xy_d[..., 1]
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (xy_d[..., 0] - dx) / radial
        y = (xy_d[..., 1] - dy) / radial
    return torch.stack([x, y], dim=-1)


def undistort_image(
    image: Float[Tensor, "H W C"] | Float[Tensor, "C H W"],
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    k: Float[Tensor, "K"],
    channels_last: Optional[bool] = None,
) -> Float[Tensor, "H W C"] | Float[Tensor, "C H W"]:
    """The pinhole image with the same intrinsics: each output pixel centre ``(i + 0.5, j + 0.5)``
    is distorted to find where the lens imaged it, and the input is sampled there bilinearly.

    ``channels_last`` None guesses from the shape (``[C,H,W]`` only if C <= 4 < W). Output pixels
    whose source lies outside the input repeat the nearest edge pixel.
    """
    if image.ndim != 3:
        raise ValueError(f"undistort_image: expected [H,W,C] or [C,H,W], got shape {tuple(image.shape)}")
    if channels_last is None:
        channels_last = not image.shape[0] <= 4 < image.shape[-1]
    chw = image.permute(2, 0, 1) if channels_last else image
    _, H, W = chw.shape
    # float64 grid: pixel coordinates of large photos lose sub-pixel precision in float32
    rows, cols = torch.meshgrid(
        torch.arange(H, dtype=torch.float64, device=image.device) + 0.5,
        torch.arange(W, dtype=torch.float64, device=image.device) + 0.5,
        indexing="ij",
    )
    xy = torch.stack([(cols - cx) / fx, (rows - cy) / fy], dim=-1)
    xy_d = distort_normalized(xy, torch.as_tensor(k, dtype=torch.float64, device=image.device))
    u, v = xy_d[..., 0] * fx + cx, xy_d[..., 1] * fy + cy
    # align_corners=False: -1 / +1 are the outer edges of the first / last pixel
    grid = torch.stack([2 * u / W - 1, 2 * v / H - 1], dim=-1).to(chw.dtype)
    out = F.grid_sample(chw[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]
    return out.permute(1, 2, 0) if channels_last else out
