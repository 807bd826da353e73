"""The triangle mesh record shared by rasterization, marching tetrahedra, isosurface extraction, baking and writers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from threestudio_like.utils.typing import Float, Int, Tensor

if TYPE_CHECKING:
    import trimesh


@dataclass
class Mesh:
    """Triangles ``t_pos_idx`` over vertices ``v_pos``; optional per-vertex colour in [0, 1]
    and texture coordinates ``v_tex`` (OBJ convention: v = 0 is the bottom row of the image).

    Faces are wound counter-clockwise seen from outside, so face normals point outward.
    A textured mesh has its vertices split along UV seams, so one index array serves both.
    """

    v_pos: Float[Tensor, "V 3"]
    t_pos_idx: Int[Tensor, "F 3"]
    v_rgb: Optional[Float[Tensor, "V 3"]] = None
    v_tex: Optional[Float[Tensor, "V 2"]] = None

    def __post_init__(self) -> None:
        if self.v_pos.ndim != 2 or self.v_pos.shape[-1] != 3:
            raise ValueError(f"Mesh.v_pos must be [V,3], got shape {tuple(self.v_pos.shape)}")
        if self.t_pos_idx.ndim != 2 or self.t_pos_idx.shape[-1] != 3:
            raise ValueError(f"Mesh.t_pos_idx must be [F,3], got shape {tuple(self.t_pos_idx.shape)}")
        if self.t_pos_idx.dtype != torch.long:
            self.t_pos_idx = self.t_pos_idx.long()
        if self.v_rgb is not None and self.v_rgb.shape != self.v_pos.shape:
            raise ValueError(
                f"Mesh.v_rgb must be [V,3] like v_pos {tuple(self.v_pos.shape)}, got {tuple(self.v_rgb.shape)}"
            )
        if self.v_tex is not None and self.v_tex.shape != (self.v_pos.shape[0], 2):
            raise ValueError(f"Mesh.v_tex must be [V,2] for {self.v_pos.shape[0]} vertices, got {tuple(self.v_tex.shape)}")

    @property
    def n_vertices(self) -> int:
        return int(self.v_pos.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.t_pos_idx.shape[0])

    def with_colors(self, v_rgb: Float[Tensor, "V 3"]) -> "Mesh":
        return replace(self, v_rgb=v_rgb)

    def to(self, device: torch.device | str) -> "Mesh":
        return Mesh(
            self.v_pos.to(device),
            self.t_pos_idx.to(device),
            None if self.v_rgb is None else self.v_rgb.to(device),
            None if self.v_tex is None else self.v_tex.to(device),
        )

    def face_normals(self, normalize: bool = True) -> Float[Tensor, "F 3"]:
        """Outward face normals; unnormalised they are twice the face areas."""
        a, b, c = (self.v_pos[self.t_pos_idx[:, i]] for i in range(3))
        normals = torch.linalg.cross(b - a, c - a, dim=-1)
        return torch.nn.functional.normalize(normals, dim=-1) if normalize else normals

    def vertex_normals(self) -> Float[Tensor, "V 3"]:
        """Area-weighted averages of the adjacent face normals, unit length (differentiable)."""
        face = self.face_normals(normalize=False)
        normals = torch.zeros_like(self.v_pos).index_add(0, self.t_pos_idx.reshape(-1), face.repeat_interleave(3, dim=0))
        return torch.nn.functional.normalize(normals, dim=-1)

    def to_trimesh(self) -> "trimesh.Trimesh":
        """A trimesh with the same vertex order (no merging), RGBA uint8 vertex colours if any."""
        import trimesh

        colors = None
        if self.v_rgb is not None:
            rgb = (self.v_rgb.detach().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
            colors = np.concatenate([rgb, np.full((rgb.shape[0], 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(
            vertices=self.v_pos.detach().cpu().numpy().astype(np.float64),
            faces=self.t_pos_idx.detach().cpu().numpy(),
            vertex_colors=colors,
            process=False,
        )

    @classmethod
    def from_trimesh(cls, mesh: "trimesh.Trimesh") -> "Mesh":
        v_rgb = None
        colors = getattr(mesh.visual, "vertex_colors", None)
        if mesh.visual.kind == "vertex" and colors is not None and len(colors) == len(mesh.vertices):
            v_rgb = torch.as_tensor(np.asarray(colors)[:, :3], dtype=torch.float32) / 255.0
        return cls(
            torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32),
            torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long),
            v_rgb,
        )

    @property
    def is_watertight(self) -> bool:
        """Every edge is shared by exactly two faces with consistent winding (closed, orientable)."""
        return bool(self.to_trimesh().is_watertight)

    def signed_volume(self) -> float:
        """Enclosed volume (divergence theorem); positive when faces are wound outward."""
        v = self.v_pos.detach().double()
        a, b, c = (v[self.t_pos_idx[:, i]] for i in range(3))
        return float((a * torch.linalg.cross(b, c, dim=-1)).sum() / 6.0)

    def flip_faces(self) -> "Mesh":
        return replace(self, t_pos_idx=self.t_pos_idx[:, [0, 2, 1]])

    def remove_unreferenced(self) -> "Mesh":
        """Drop vertices no face uses, reindexing faces."""
        used = torch.zeros(self.n_vertices, dtype=torch.bool, device=self.v_pos.device)
        used[self.t_pos_idx.reshape(-1)] = True
        new_index = torch.cumsum(used.long(), 0) - 1
        return Mesh(
            self.v_pos[used],
            new_index[self.t_pos_idx],
            None if self.v_rgb is None else self.v_rgb[used],
            None if self.v_tex is None else self.v_tex[used],
        )

    def merge_duplicate_vertices(self, decimals: int = 6) -> "Mesh":
        """Weld vertices equal after rounding to ``decimals``; drops faces that collapse.

        Each welded vertex is the first of its group (exact position and colour), and the
        welded vertices keep the order of those first occurrences. Texture coordinates are
        dropped: welding undoes the seams they need.
        """
        device = self.v_pos.device
        key = torch.round(self.v_pos.detach() * 10**decimals)
        _, group = torch.unique(key, dim=0, return_inverse=True)
        n_groups = int(group.max()) + 1 if group.numel() else 0
        first = torch.full((n_groups,), self.n_vertices, dtype=torch.long, device=device)
        first.scatter_reduce_(0, group, torch.arange(self.n_vertices, device=device), reduce="amin")
        order = torch.argsort(first)  # torch.unique sorts by position; restore input order
        first = first[order]
        new_index = torch.empty_like(order)
        new_index[order] = torch.arange(n_groups, device=device)
        faces = new_index[group][self.t_pos_idx]
        keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
        return Mesh(
            self.v_pos[first],
            faces[keep],
            None if self.v_rgb is None else self.v_rgb[first],
        )
