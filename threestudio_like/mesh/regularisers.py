"""Mesh regularisers: uniform Laplacian smoothness and normal consistency (vectorised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.utils.typing import Float, Int


def unique_edges(t_pos_idx: Int[Tensor, "F 3"]) -> Int[Tensor, "E 2"]:
    """Undirected edges of a triangle mesh, each once, as ``(lo, hi)`` vertex index pairs."""
    faces = t_pos_idx.long()
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    lo, hi = torch.minimum(edges[:, 0], edges[:, 1]), torch.maximum(edges[:, 0], edges[:, 1])
    n_vert = int(faces.max().item()) + 1 if faces.numel() else 1
    key = torch.unique(lo * n_vert + hi)  # 1-D unique: much faster than unique(dim=0)
    return torch.stack([torch.div(key, n_vert, rounding_mode="floor"), key % n_vert], dim=-1)


def laplacian_smoothness_loss(v_pos: Float[Tensor, "V 3"], t_pos_idx: Int[Tensor, "F 3"]) -> Float[Tensor, ""]:
    """Mean over vertices of ``|v_i - mean_{j in N(i)} v_j|^2`` (uniform Laplacian over mesh edges).

    Vertices that belong to no edge contribute 0; a mesh without vertices (empty DMTet) gives 0, not NaN.
    """
    if v_pos.shape[0] == 0:
        return v_pos.sum() * 0.0  # keeps the graph, so a weighted sum of losses still backpropagates
    edges = unique_edges(t_pos_idx)
    n_vert = v_pos.shape[0]
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    degree = torch.zeros(n_vert, dtype=v_pos.dtype, device=v_pos.device).index_add_(0, src, torch.ones_like(src, dtype=v_pos.dtype))
    neighbour_sum = torch.zeros_like(v_pos).index_add(0, src, v_pos[dst])
    has = degree > 0
    lap = torch.where(has[:, None], v_pos - neighbour_sum / degree.clamp_min(1.0)[:, None], torch.zeros_like(v_pos))
    return (lap**2).sum(dim=-1).mean()


def face_normals(v_pos: Float[Tensor, "V 3"], t_pos_idx: Int[Tensor, "F 3"]) -> Float[Tensor, "F 3"]:
    """Unit face normals (right-handed with the face's vertex order)."""
    faces = t_pos_idx.long()
    v0, v1, v2 = v_pos[faces[:, 0]], v_pos[faces[:, 1]], v_pos[faces[:, 2]]
    return F.normalize(torch.linalg.cross(v1 - v0, v2 - v0, dim=-1), dim=-1, eps=1e-12)


def interior_edge_faces(t_pos_idx: Int[Tensor, "F 3"]) -> Int[Tensor, "E 2"]:
    """Pairs of faces that share an edge (one pair per interior edge; on a non-manifold edge,
    consecutive faces around it are paired)."""
    faces = t_pos_idx.long()
    n_faces = faces.shape[0]
    edges = torch.sort(torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0), dim=1).values
    face_of = torch.arange(n_faces, device=faces.device).repeat(3)
    n_vert = int(faces.max().item()) + 1 if n_faces else 1
    key = edges[:, 0] * n_vert + edges[:, 1]
    order = torch.argsort(key)
    same = key[order][1:] == key[order][:-1]
    return torch.stack([face_of[order[:-1][same]], face_of[order[1:][same]]], dim=-1)


def normal_consistency_loss(v_pos: Float[Tensor, "V 3"], t_pos_idx: Int[Tensor, "F 3"]) -> Float[Tensor, ""]:
    """Mean over interior edges of ``1 - cos`` of the angle between the two adjacent face normals.

    0 for a flat (consistently oriented) mesh; grows with creases and noise. A mesh without
    interior edges gives 0.
    """
    pairs = interior_edge_faces(t_pos_idx)
    if pairs.shape[0] == 0:
        return v_pos.sum() * 0.0
    normals = face_normals(v_pos, t_pos_idx)
    cos = (normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(dim=-1)
    return (1.0 - cos).mean()
