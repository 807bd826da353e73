"""Marching tetrahedra in PyTorch, differentiable with respect to SDF values and vertex positions.

Convention: ``sdf < 0`` is inside (a vertex with ``sdf == 0`` counts as outside). Each
tetrahedron edge whose ends are on different sides gets one surface vertex at the zero of the
linear interpolant, ``p = a + (b - a) * s_a / (s_a - s_b)``; the vertex is shared by every
tetrahedron around that edge, so the output is welded, and closed wherever the inside region
does not touch the grid's boundary. Gradients reach ``sdf`` and ``vertices`` through that
formula (the topology, i.e. which edges cross, is piecewise constant and has none).

Inside a tetrahedron the linear interpolant of the SDF is an affine function, so its zero set
is a plane: a triangle (one vertex apart from the other three) or a planar convex quad (two and
two, split into two triangles). The triangle table is derived below from a reference
tetrahedron rather than written out: for each of the 16 inside/outside patterns the crossing
edges are ordered around the polygon and each triangle is wound so that its normal points
along the SDF's gradient (outward). An affine map with positive determinant keeps that
winding, so the table holds for every positively oriented tetrahedron; negatively oriented
input tetrahedra are detected and their triangles flipped.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from threestudio_like.mesh.types import Mesh
from threestudio_like.utils.typing import Float, Int, Tensor

# the six edges of a tetrahedron as pairs of local vertex indices
TET_EDGES = np.array(list(itertools.combinations(range(4), 2)), dtype=np.int64)  # [6, 2]


def _derive_triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """``table[code]`` lists up to two triangles as local edge indices (-1 padded), ``count[code]`` how many.

    ``code = sum(inside_i << i)`` over the tetrahedron's four vertices.
    """
    ref = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])  # det[v1-v0, v2-v0, v3-v0] = 1 > 0
    edge_of = {tuple(e): i for i, e in enumerate(TET_EDGES.tolist())}
    table = np.full((16, 2, 3), -1, dtype=np.int64)
    count = np.zeros(16, dtype=np.int64)
    for code in range(16):
        inside = [v for v in range(4) if code >> v & 1]
        outside = [v for v in range(4) if not code >> v & 1]
        if not inside or not outside:
            continue
        sdf = np.where([code >> v & 1 for v in range(4)], -1.0, 1.0)
        # gradient of the affine interpolant on the reference tetrahedron (points outward)
        gradient = np.linalg.solve(ref[1:] - ref[0], sdf[1:] - sdf[0])

        def edge(a: int, b: int) -> int:
            return edge_of[(min(a, b), max(a, b))]

        if len(inside) == 1 or len(outside) == 1:
            apex, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            polygon = [edge(apex, o) for o in others]
        else:
            (a, b), (c, d) = inside, outside
            polygon = [edge(a, c), edge(a, d), edge(b, d), edge(b, c)]  # consecutive edges share a vertex
        triangles = [polygon[:3]] if len(polygon) == 3 else [polygon[:3], [polygon[0], polygon[2], polygon[3]]]
        for t, tri in enumerate(triangles):
            p = [ref[TET_EDGES[e]].mean(axis=0) for e in tri]  # crossings sit at edge midpoints here
            if np.dot(np.cross(p[1] - p[0], p[2] - p[0]), gradient) < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, t] = tri
        count[code] = len(triangles)
    return table, count


TRIANGLE_TABLE, TRIANGLE_COUNT = _derive_triangle_table()
_CODE_WEIGHTS = (1, 2, 4, 8)


def empty_mesh(vertices: Tensor) -> Mesh:
    return Mesh(vertices[:0] * 1.0, torch.zeros(0, 3, dtype=torch.long, device=vertices.device))


def marching_tetrahedra(
    vertices: Float[Tensor, "N 3"], sdf: Float[Tensor, " N"], tets: Int[Tensor, "T 4"]
) -> Mesh:
    """Triangle mesh of the zero level of ``sdf`` (negative inside) over the tetrahedra ``tets``.

    Faces are wound counter-clockwise seen from outside (outward normals). Returns an empty
    mesh (``[0, 3]`` vertices and faces) when no edge changes sign. ``sdf`` may be ``[N]`` or
    ``[N, 1]``. Passing only the tetrahedra that can hold surface (``tetgrid.surface_tets``) gives
    the same mesh, faster.
    """
    device = vertices.device
    sdf = sdf.reshape(-1)
    if sdf.shape[0] != vertices.shape[0]:
        raise ValueError(f"sdf has {sdf.shape[0]} values for {vertices.shape[0]} vertices")
    n = vertices.shape[0]
    with torch.no_grad():
        inside = sdf < 0
        occ = inside[tets]  # [T, 4]
        n_in = occ.sum(dim=1)
        crossing_tets = (n_in > 0) & (n_in < 4)
        tets = tets[crossing_tets].long()
        if tets.shape[0] == 0:
            return empty_mesh(vertices)
        occ = occ[crossing_tets]
        code = (occ.long() * torch.tensor(_CODE_WEIGHTS, device=device)).sum(dim=1)  # [Tc]

        # one surface vertex per distinct sign-changing edge
        ends = tets[:, torch.from_numpy(TET_EDGES).to(device)]  # [Tc, 6, 2]
        lo, hi = ends.min(dim=-1).values, ends.max(dim=-1).values
        crosses = inside[lo] != inside[hi]  # [Tc, 6]
        keys, edge_vertex = torch.unique(lo[crosses] * n + hi[crosses], return_inverse=True)
        local_to_vertex = torch.full_like(lo, -1)
        local_to_vertex[crosses] = edge_vertex

        # triangles from the table; flip those of negatively oriented tetrahedra
        table = torch.from_numpy(TRIANGLE_TABLE).to(device)[code]  # [Tc, 2, 3]
        count = torch.from_numpy(TRIANGLE_COUNT).to(device)[code]  # [Tc]
        corner = vertices.detach()[tets]  # [Tc, 4, 3]
        orientation = torch.linalg.det(corner[:, 1:] - corner[:, :1])
        faces = []
        for t in range(2):
            has = count > t
            local = table[has, t]  # [Tt, 3]
            tri = torch.gather(local_to_vertex[has], 1, local)
            flip = orientation[has] < 0
            tri[flip] = tri[flip][:, [0, 2, 1]]
            faces.append(tri)
        faces = torch.cat(faces, dim=0)

    a, b = keys // n, keys % n
    sa, sb = sdf[a], sdf[b]
    weight = (sa / (sa - sb)).unsqueeze(-1)  # in (0, 1]: signs differ, so sa - sb != 0
    positions = vertices[a] + (vertices[b] - vertices[a]) * weight
    return Mesh(positions, faces)


def face_components(mesh: Mesh) -> tuple[Int[Tensor, " F"], int]:
    """Connected component label of every face (faces sharing a vertex are connected)."""
    import scipy.sparse
    from scipy.sparse.csgraph import connected_components

    faces = mesh.t_pos_idx.detach().cpu().numpy()
    nv = mesh.n_vertices
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = scipy.sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(nv, nv))
    n_components, labels = connected_components(graph, directed=False)
    return torch.from_numpy(labels[faces[:, 0]]).to(mesh.t_pos_idx.device), int(n_components)


def remove_outliers(mesh: Mesh, outlier_n_faces_threshold: float = 0.01) -> Mesh:
    """Keep the connected components with at least ``threshold`` faces (a fraction of all faces
    if < 1, else a count); the largest component is always kept. Differentiable w.r.t. ``v_pos``."""
    if mesh.n_faces == 0:
        return mesh
    labels, n_components = face_components(mesh)
    if n_components <= 1:
        return mesh
    sizes = torch.bincount(labels, minlength=n_components)
    threshold = outlier_n_faces_threshold * mesh.n_faces if outlier_n_faces_threshold < 1 else outlier_n_faces_threshold
    keep_component = sizes >= threshold
    keep_component[sizes.argmax()] = True
    kept = Mesh(mesh.v_pos, mesh.t_pos_idx[keep_component[labels]], mesh.v_rgb)
    return kept.remove_unreferenced()
