"""Tetrahedral grids generated in code (no downloaded tet files), cached in memory.

``tetrahedral_grid(R)`` splits each cell of an ``R x R x R`` cube grid over ``[-1, 1]^3`` into
six tetrahedra that share the cell's main diagonal (corner ``(0,0,0)`` to ``(1,1,1)``), the
Freudenthal / Kuhn subdivision. Every cell is split the same way, so the split is a translation
of one pattern; a face between two cells is cut by the same diagonal from both sides, which
makes the tetrahedralisation conforming: every interior triangle belongs to exactly two
tetrahedra and every boundary triangle to one. All tetrahedra are positively oriented
(``det[v1 - v0, v2 - v0, v3 - v0] > 0``).

Layout (relied on by ``candidate_tets`` and by the DMTet geometry):

- vertex ``(i, j, k)`` (``x`` index ``i``, ``z`` fastest) is row ``i (R+1)^2 + j (R+1) + k`` at
  ``-1 + 2 (i, j, k) / R``, the same order as ``mesh.isosurface.sample_grid`` at ``R + 1`` samples;
- the six tetrahedra of cell ``c = i R^2 + j R + k`` are rows ``6c .. 6c + 5``.

Generation is vectorised arithmetic and cheap (~0.1 s at R = 64, ~0.6 s at R = 128 on one
CPU thread), faster than reading a stored table (27 MB / 217 MB) on this kind of machine, so
grids live only in an in-memory cache. The DMTet geometry never builds the full table: it needs only
``grid_vertices`` and the tetrahedra of the cells the surface crosses (``surface_tets``).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from threestudio_like.utils.typing import Bool, Float, Int, Tensor

_MEMORY: dict[int, tuple[Tensor, Tensor]] = {}
_MEMORY_MAX = 3  # grids kept in memory (a 128 grid is ~430 MB of int64 indices)


def _kuhn_tets() -> np.ndarray:
    """The six tetrahedra of the unit cube around its main diagonal, as corner bit patterns.

    A corner is a 3-bit number ``x*4 + y*2 + z``. Each tetrahedron walks from corner 0 to
    corner 7 adding one axis at a time, in the order given by a permutation of the axes; odd
    permutations give negatively oriented tetrahedra, fixed by swapping their last two corners.
    """
    bits = {0: 4, 1: 2, 2: 1}  # axis -> bit in the corner number
    unit = {0: (1, 0, 0), 1: (0, 1, 0), 2: (0, 0, 1)}
    tets = []
    for perm in itertools.permutations(range(3)):
        corners, pos, corner = [0], [np.zeros(3)], 0
        point = np.zeros(3)
        for axis in perm:
            corner += bits[axis]
            point = point + np.array(unit[axis], dtype=float)
            corners.append(corner)
            pos.append(point)
        det = np.linalg.det(np.stack([pos[1] - pos[0], pos[2] - pos[0], pos[3] - pos[0]]))
        if det < 0:
            corners[2], corners[3] = corners[3], corners[2]
        tets.append(corners)
    return np.asarray(tets, dtype=np.int64)  # [6, 4]


KUHN_TETS = _kuhn_tets()


def generate_tetrahedral_grid(resolution: int) -> tuple[Float[Tensor, "N 3"], Int[Tensor, "T 4"]]:
    """Build the grid without any cache (see the module docstring for the layout)."""
    if resolution < 1:
        raise ValueError(f"tetrahedral grid resolution must be at least 1 cell per axis, got {resolution}")
    return grid_vertices(resolution), cell_tets(torch.arange(resolution**3, dtype=torch.int64), resolution)


def grid_vertices(resolution: int) -> Float[Tensor, "N 3"]:
    """Just the vertices of ``tetrahedral_grid(resolution)`` (cheap; no tetrahedra built)."""
    if resolution < 1:
        raise ValueError(f"tetrahedral grid resolution must be at least 1 cell per axis, got {resolution}")
    axis = torch.arange(resolution + 1, dtype=torch.float64) * (2.0 / resolution) - 1.0  # exact 0 at the centre
    axis[-1] = 1.0
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3).float()


def cell_tets(cells: Int[Tensor, " K"], resolution: int) -> Int[Tensor, "6*K 4"]:
    """The six tetrahedra of each given cell (flat index ``i R^2 + j R + k``), in grid order.

    ``cell_tets(arange(R^3), R)`` is the whole grid's ``tets``; a subset of cells gives the
    matching rows without building the full ``[6 R^3, 4]`` table.
    """
    r, n = resolution, resolution + 1
    cells = cells.long()
    i, j, k = cells // (r * r), (cells // r) % r, cells % r
    base = i * (n * n) + j * n + k  # the cell's corner (0, 0, 0)
    # corner offsets in the flat vertex index, by corner bit pattern x*4 + y*2 + z
    corner = torch.tensor([(c >> 2) * n * n + ((c >> 1) & 1) * n + (c & 1) for c in range(8)], device=cells.device)
    local = corner[torch.from_numpy(KUHN_TETS).to(cells.device)].reshape(1, 24)
    return (base[:, None] + local).reshape(-1, 4)


def clear_memory_cache() -> None:
    _MEMORY.clear()


def tetrahedral_grid(resolution: int) -> tuple[Float[Tensor, "N 3"], Int[Tensor, "T 4"]]:
    """Vertices in ``[-1, 1]^3`` ``[(R+1)^3, 3]`` (float32) and tetrahedra ``[6 R^3, 4]`` (int64).

    Cached: the returned tensors are shared between callers, so do not modify them in place.
    """
    resolution = int(resolution)
    if resolution in _MEMORY:
        return _MEMORY[resolution]
    grid = generate_tetrahedral_grid(resolution)
    while len(_MEMORY) >= _MEMORY_MAX:
        _MEMORY.pop(next(iter(_MEMORY)))
    _MEMORY[resolution] = grid
    return grid


def grid_cube_corners(values: Tensor, resolution: int) -> Tensor:
    """Per-vertex values ``[(R+1)^3, ...]`` -> per-cell corner values ``[R^3, 8, ...]`` (corner ``x*4+y*2+z``)."""
    n = resolution + 1
    grid = values.reshape(n, n, n, *values.shape[1:])
    corners = [
        grid[dx : dx + resolution, dy : dy + resolution, dz : dz + resolution]
        for dx in (0, 1)
        for dy in (0, 1)
        for dz in (0, 1)
    ]
    return torch.stack(corners, dim=3).reshape(resolution**3, 8, *values.shape[1:])


def candidate_tets(inside: Bool[Tensor, " N"], resolution: int) -> Int[Tensor, " K"]:
    """Indices of the tetrahedra (in ``tetrahedral_grid`` order) that can hold surface: the six
    tetrahedra of every cell whose eight corners are not all inside or all outside.

    Lets marching tetrahedra skip the ~99% of a fine grid far from the surface without
    gathering per-tetrahedron values. Valid for any vertex positions (deformed or not), since
    it only uses the grid's connectivity.
    """
    cells = surface_cells(inside, resolution)
    return (cells[:, None] * 6 + torch.arange(6, device=cells.device)).reshape(-1)


def surface_cells(inside: Bool[Tensor, " N"], resolution: int) -> Int[Tensor, " K"]:
    """Flat indices of the cells whose eight corners are neither all inside nor all outside."""
    r, n = resolution, resolution + 1
    grid = inside.reshape(n, n, n)
    # a cell has surface unless all 8 corners agree: compare each corner with corner (0, 0, 0)
    first = grid[:r, :r, :r]
    mixed = torch.zeros_like(first)
    for dx, dy, dz in itertools.product((0, 1), repeat=3):
        if dx or dy or dz:
            mixed |= grid[dx : dx + r, dy : dy + r, dz : dz + r] != first
    return torch.nonzero(mixed.reshape(-1), as_tuple=False)[:, 0]


def surface_tets(inside: Bool[Tensor, " N"], resolution: int) -> Int[Tensor, "K 4"]:
    """``tets[candidate_tets(inside, R)]`` built directly from the cells, without the full table."""
    return cell_tets(surface_cells(inside, resolution), resolution)
