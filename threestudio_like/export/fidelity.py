"""How faithfully an exported textured mesh reproduces the model it came from.

Both are rendered from the same orbit with plain albedo on white: the trained model through
its own renderer (``shading="albedo"``), the exported file as loaded by trimesh (its UVs and
texture image). The PSNR between them measures surface extraction, UV unwrapping, baking and
writing together.

    python -m threestudio_like.export.fidelity outputs/magic3d-refine-cpu/a_red_cube@LAST
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import Any, Callable

import numpy as np
import torch

from threestudio_like.mesh.types import Mesh
from threestudio_like.export.texture import sample_texture
from threestudio_like.export.writers import Z_UP_TO_Y_UP
from threestudio_like.mesh.rasterize import make_rasterizer
from threestudio_like.renderers.mesh_renderer import clip_positions
from threestudio_like.utils.metrics import psnr
from threestudio_like.utils.typing import CameraBatch, Float, Tensor

WHITE = (1.0, 1.0, 1.0)


def load_textured(path: str) -> tuple[Mesh, Float[Tensor, "H W 3"]]:
    """An exported OBJ or GLB as the mesh (world z-up coordinates, OBJ-convention UVs) and its texture."""
    import trimesh

    loaded = trimesh.load(path, force="mesh", process=False)
    visual = loaded.visual
    if not isinstance(visual, trimesh.visual.TextureVisuals) or visual.uv is None:
        raise ValueError(f"{path} has no texture coordinates; export with save_texture: true")
    material = visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None:
        raise ValueError(f"{path} has no texture image")
    vertices = np.asarray(loaded.vertices)
    if path.lower().endswith(".glb"):  # stored y-up; undo the writer's rotation
        vertices = vertices @ np.linalg.inv(Z_UP_TO_Y_UP)[:3, :3].T
    texture = torch.as_tensor(np.array(image.convert("RGB")), dtype=torch.float32) / 255.0
    mesh = Mesh(
        torch.as_tensor(vertices, dtype=torch.float32),
        torch.as_tensor(np.asarray(loaded.faces), dtype=torch.long),
        v_tex=torch.as_tensor(np.asarray(visual.uv), dtype=torch.float32),
    )
    return mesh, texture


@torch.no_grad()
def render_unlit(
    mesh: Mesh, attribute: Float[Tensor, "V A"], colour_of: Callable[[Tensor], Tensor], views: CameraBatch, rasterizer: Any
) -> Float[Tensor, "B H W 3"]:
    """Unlit colour on white, antialiased like the mesh renderer: ``colour_of`` maps the
    per-vertex ``attribute`` interpolated at covered pixels [N,A] to RGB [N,3]."""
    height, width = views["rays_d"].shape[1:3]
    faces = mesh.t_pos_idx.to(torch.int32)
    v_clip = clip_positions(mesh.v_pos, views["mvp_mtx"])
    rast, _ = rasterizer.rasterize(v_clip, faces, (height, width))
    values, _ = rasterizer.interpolate(attribute[None], rast, faces)
    mask = rast[..., 3] > 0
    image = torch.ones(*mask.shape, 3)
    image[mask] = colour_of(values[mask])
    return rasterizer.antialias(image, rast, v_clip, faces)


def render_textured(mesh: Mesh, texture: Float[Tensor, "H W 3"], views: CameraBatch, rasterizer: Any) -> Float[Tensor, "B H W 3"]:
    """The texture's colour, unlit, on white."""
    return render_unlit(mesh, mesh.v_tex, lambda uv: sample_texture(texture, uv), views, rasterizer)


@torch.no_grad()
def export_fidelity(system: Any, path: str, views: CameraBatch) -> tuple[float, list[float]]:
    """Mean and per-view PSNR of the exported file's renders against the model's albedo renders."""
    model = system.renderer(**views, shading="albedo", bg_color=WHITE)["comp_rgb"].clamp(0, 1)
    mesh, texture = load_textured(path)
    exported = render_textured(mesh, texture, views, make_rasterizer("auto", "cpu"))
    per_view = [psnr(model[i], exported[i]) for i in range(model.shape[0])]
    return psnr(model, exported), per_view


def main(argv: list[str] | None = None) -> None:
    from threestudio_like.systems.handover import orbit_views
    from threestudio_like.trials import load_trained_system, resolve_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trial", help="trial folder (LAST allowed) or checkpoint")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)

    ckpt = resolve_checkpoint(args.trial)
    trial = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    system, exp = load_trained_system(ckpt)
    views = orbit_views(exp.data, args.views, args.size)
    exports = sorted(glob.glob(os.path.join(trial, "save", "it*-export")), key=lambda p: int(os.path.basename(p)[2:-7]))
    if not exports:
        raise SystemExit(f"{trial} has no export folder; run --export with resume={ckpt}")
    for name in ("model.obj", "model.glb"):
        path = os.path.join(exports[-1], name)
        if os.path.isfile(path):
            mean, per_view = export_fidelity(system, path, views)
            print(f"{path}: PSNR {mean:.2f} dB vs the model's renders ({args.views} views; per view "
                  + ", ".join(f"{v:.1f}" for v in per_view) + ")")


if __name__ == "__main__":
    main()
