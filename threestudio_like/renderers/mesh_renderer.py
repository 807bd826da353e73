"""Mesh renderer: the geometry's triangle mesh, rasterised, shaded by the same materials and
backgrounds as the volume renderer.

Registered as ``nvdiff-rasterizer`` (threestudio's name, so its configs load unchanged) and
``mesh-rasterizer``. ``backend: auto`` uses nvdiffrast when it imports and the device is
CUDA (``context_type`` picks its CUDA rasteriser, the default, or its OpenGL one, which needs a
display / EGL: when a context cannot be created it falls back ``gl -> cuda -> PyTorch`` with one
warning); otherwise the built-in PyTorch rasteriser, whose antialiasing gives silhouette
gradients just like nvdiffrast's. Moving the renderer to a CUDA device sets the rasteriser up
(nvdiffrast builds its plugin on first use), so that happens before training, not in step 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.mesh.rasterize import CONTEXT_TYPES, clip_positions, make_rasterizer
from threestudio_like.registry import register
from threestudio_like.renderers.base import BaseRenderer
from threestudio_like.representations.base import BaseGeometry
from threestudio_like.utils import backends
from threestudio_like.utils.typing import Float, RenderOutput, Tensor


@register("nvdiff-rasterizer", "mesh-rasterizer")
class MeshRasterizer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        context_type: str = "cuda"  # nvdiffrast context when nvdiffrast is used: cuda | gl (falls back to cuda)
        backend: str = "auto"  # auto | torch | nvdiffrast

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        if self.cfg.context_type not in CONTEXT_TYPES:
            raise ConfigError(f"renderer.context_type: expected 'cuda' or 'gl', got {self.cfg.context_type!r}")
        # every geometry has the method; the base class's only says it has no surface
        if not hasattr(geometry, "isosurface") or type(geometry).isosurface is BaseGeometry.isosurface:
            raise ConfigError(
                f"renderer nvdiff-rasterizer draws a triangle mesh, but geometry {type(geometry).__name__} "
                "cannot produce one (no isosurface()); use tetrahedra-sdf-grid or an implicit geometry."
            )
        self._rasterizers: dict[str, Any] = {}  # per device; plain dict, never in the state dict
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)  # where .to() put the renderer

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "MeshRasterizer":
        module = super()._apply(fn, *args, **kwargs)
        device = self._device_probe.device
        if self.cfg.backend != "torch" and backends.is_cuda_device(device):
            self.rasterizer(device)  # create (and build) nvdiffrast's context now, not inside a training step
        return module

    def rasterizer(self, device: torch.device) -> Any:
        key = str(device)
        if key not in self._rasterizers:
            self._rasterizers[key] = make_rasterizer(self.cfg.backend, device, self.cfg.context_type, part="mesh rasteriser")
        return self._rasterizers[key]

    def forward(
        self,
        mvp_mtx: Float[Tensor, "B 4 4"],
        camera_positions: Float[Tensor, "B 3"],
        rays_d: Float[Tensor, "B H W 3"],
        light_positions: Optional[Float[Tensor, "B 3"]] = None,
        bg_color: Optional[Any] = None,
        render_rgb: bool = True,
        **kwargs: Any,
    ) -> RenderOutput:
        """Render B views of the mesh at the resolution of ``rays_d``.

        Returns comp_rgb / comp_rgb_fg / comp_rgb_bg [B,H,W,3], opacity [B,H,W,1], depth
        [B,H,W,1] (distance from the camera, 0 on the background), comp_normal [B,H,W,3]
        (in [0, 1], black background) and the rendered ``mesh`` (for mesh regularisers).
        Extra keyword arguments go to the material. Silhouettes are antialiased, so opacity,
        colours and normals have gradients with respect to the vertex positions.
        """
        batch, height, width, _ = rays_d.shape
        mesh = self.geometry.isosurface()  # at the geometry's own level and resolution
        if mesh.n_faces == 0:  # before any backend: nvdiffrast rejects meshes without triangles
            return self._render_empty(mesh, rays_d, bg_color, render_rgb)
        faces = mesh.t_pos_idx.to(torch.int32)
        rasterizer = self.rasterizer(mesh.v_pos.device)
        v_clip = clip_positions(mesh.v_pos, mvp_mtx)
        rast, _ = rasterizer.rasterize(v_clip, faces, (height, width))
        mask = rast[..., 3:] > 0
        selector = mask[..., 0]

        def antialias(image: Tensor) -> Tensor:
            return rasterizer.antialias(image, rast, v_clip, faces)

        out: dict[str, Any] = {"mesh": mesh, "opacity": antialias(mask.to(v_clip.dtype))}
        gb_normal, _ = rasterizer.interpolate(mesh.vertex_normals()[None], rast, faces)
        gb_normal = F.normalize(gb_normal, dim=-1)
        out["comp_normal"] = antialias(torch.where(mask, (gb_normal + 1.0) / 2.0, torch.zeros_like(gb_normal)))
        gb_pos, _ = rasterizer.interpolate(mesh.v_pos[None], rast, faces)
        distance = (gb_pos - camera_positions[:, None, None, :]).norm(dim=-1, keepdim=True)
        out["depth"] = torch.where(mask, distance, torch.zeros_like(distance))
        if not render_rgb:
            return out  # type: ignore[return-value]

        positions = gb_pos[selector]
        cameras = camera_positions[:, None, None, :].expand(batch, height, width, 3)[selector]
        if light_positions is None:
            lights = cameras  # a headlight, as in the volume renderer
        else:
            lights = light_positions[:, None, None, :].expand(batch, height, width, 3)[selector]
        rgb_fg = gb_pos.new_zeros(batch, height, width, 3)
        if positions.shape[0] > 0:
            features = self.geometry(positions, output_normal=False)["features"]
            rgb_fg[selector] = self.material(
                features=features,
                viewdirs=F.normalize(positions - cameras, dim=-1),
                positions=positions,
                light_positions=lights,
                shading_normal=gb_normal[selector],
                **kwargs,
            ).to(rgb_fg.dtype)
        comp_rgb_bg = self.background_color(rays_d, bg_color)
        out["comp_rgb_fg"] = antialias(rgb_fg)
        out["comp_rgb_bg"] = comp_rgb_bg
        out["comp_rgb"] = antialias(torch.where(mask, rgb_fg, comp_rgb_bg))
        return out  # type: ignore[return-value]

    def _render_empty(
        self, mesh: Any, rays_d: Float[Tensor, "B H W 3"], bg_color: Optional[Any], render_rgb: bool
    ) -> RenderOutput:
        """No surface (e.g. DMTet before any sign change): zero opacity / depth / normals and the
        background everywhere, still differentiable with respect to a learned background."""
        batch, height, width, _ = rays_d.shape
        out: dict[str, Any] = {
            "mesh": mesh,
            "opacity": rays_d.new_zeros(batch, height, width, 1),
            "comp_normal": rays_d.new_zeros(batch, height, width, 3),
            "depth": rays_d.new_zeros(batch, height, width, 1),
        }
        if render_rgb:
            comp_rgb_bg = self.background_color(rays_d, bg_color)
            out["comp_rgb_fg"] = torch.zeros_like(comp_rgb_bg)
            out["comp_rgb_bg"] = comp_rgb_bg
            out["comp_rgb"] = comp_rgb_bg.clone()
        return out  # type: ignore[return-value]
