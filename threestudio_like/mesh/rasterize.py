"""Triangle rasterization with nvdiffrast's API shape: ``rasterize``, ``interpolate``, ``antialias``.

Two backends with the same three methods, so renderer code never asks which one it has:

- :class:`TorchRasterizer`: pure PyTorch, any device, differentiable (including silhouette
  gradients through :meth:`TorchRasterizer.antialias`).
- :class:`NvdiffrastRasterizer`: a thin wrapper over ``nvdiffrast.torch`` (CUDA only).

:func:`make_rasterizer` picks one (``backend: auto | torch | nvdiffrast``); ``auto`` uses
nvdiffrast when it imports and the device is CUDA. nvdiffrast's context defaults to ``cuda``
(its OpenGL context needs a display / EGL, which a headless machine lacks); a context that
cannot be created falls back, with one warning, ``gl -> cuda -> the PyTorch rasteriser`` (the
last step only under ``auto``: a recipe naming ``nvdiffrast`` fails loudly without it).

Conventions (the same as nvdiffrast's):

- ``pos`` holds homogeneous clip-space positions ``[B, V, 4]`` (see :func:`vertex_transform`),
  ``tri`` holds vertex indices ``[F, 3]`` shared by the batch.
- ``rast[b, i, j] = (u, v, z/w, triangle_id + 1)``; ``triangle_id + 1 == 0`` is background (all
  four channels 0 there). The surface point is ``u * v0 + v * v1 + (1 - u - v) * v2`` with
  perspective-correct barycentrics.
- Pixel (row ``i``, column ``j``) has its centre at NDC ``x = (2j + 1) / W - 1``,
  ``y = (2i + 1) / H - 1``: row 0 is NDC ``y = -1`` (the bottom, as in OpenGL). Flip the rows
  yourself if you want row 0 at the top.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor

from threestudio_like.utils import backends
from threestudio_like.utils.typing import Float, Int

_INT64_MAX = torch.iinfo(torch.int64).max
_DEPTH_SCALE = float(2**29)  # z/w in [-1, 1] -> integer in [0, 2^30], the upper half of the z-buffer key
_W_EPS = 1e-8


def at_least_float32(*dtypes: torch.dtype) -> torch.dtype:
    """The promoted dtype of ``dtypes``, raised to float32 if lower (fp16 / bf16)."""
    result = torch.float32
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def vertex_transform(v_pos: Float[Tensor, "V 3"], mvp: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B V 4"]:
    """World-space vertices -> homogeneous clip-space positions for every view: ``mvp @ [v, 1]``.

    At least float32 (float64 stays), with autocast off: an fp16 product keeps 11 bits, and with
    near 0.01 and far 100 an object then spans about a dozen depth steps, so nearby surfaces swap order.
    """
    if mvp.ndim == 2:
        mvp = mvp[None]
    dtype = at_least_float32(v_pos.dtype, mvp.dtype)
    with torch.autocast(device_type=v_pos.device.type, enabled=False):
        v_pos, mvp = v_pos.to(dtype), mvp.to(dtype)
        v_h = torch.cat([v_pos, torch.ones_like(v_pos[:, :1])], dim=-1)
        return torch.matmul(v_h[None], mvp.transpose(-1, -2))


def clip_positions(v_pos: Float[Tensor, "V 3"], mvp_mtx: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B V 4"]:
    """Clip-space vertices for a rasteriser, rows ordered like our camera rays (row 0 on top).

    Our projection keeps +y up in clip space while rasterisers put NDC y = -1 in image row 0,
    so clip y is negated. Float32 whatever the autocast state (see ``vertex_transform``).
    """
    clip = vertex_transform(v_pos, mvp_mtx)
    return clip * torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=clip.dtype, device=clip.device)


def _screen_xy(pos: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Clip-space ``pos[..., 4]`` -> screen coordinates in pixel units (pixel centre ``(j, i)`` is ``(j, i)``)."""
    inv_w = 1.0 / pos[..., 3]
    return (pos[..., 0] * inv_w + 1.0) * (0.5 * width) - 0.5, (pos[..., 1] * inv_w + 1.0) * (0.5 * height) - 0.5


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for a 1-D index along dim 0 (index_select: much faster than advanced indexing on CPU)."""
    return x.index_select(0, idx.reshape(-1)).reshape(*idx.shape, *x.shape[1:])


def _batched_rows(x: Tensor, b_idx: Tensor, idx: Tensor) -> Tensor:
    """``x[b_idx[..., None], idx]`` for ``x`` of shape ``[B, N, ...]`` (``b_idx [M]``, ``idx [M, K]``)."""
    flat_idx = b_idx[:, None] * x.shape[1] + idx if idx.ndim == 2 else b_idx * x.shape[1] + idx
    return _rows(x.reshape(-1, *x.shape[2:]), flat_idx)


def build_edge_neighbours(tri: Int[Tensor, "F 3"]) -> Int[Tensor, "F 3"]:
    """For each triangle ``f`` and edge ``k`` (from vertex ``k`` to vertex ``(k + 1) % 3``), the other
    triangle that shares that edge, or -1 for a boundary edge.

    This is the torch backend's "topology hash" (nvdiffrast's ``antialias_construct_topology_hash``
    plays the same role). On a non-manifold edge (three or more triangles) one of the others is kept.
    """
    tri = tri.long()
    n_faces = tri.shape[0]
    a = tri
    b = tri.roll(-1, dims=1)
    lo, hi = torch.minimum(a, b).reshape(-1), torch.maximum(a, b).reshape(-1)
    n_vert = int(tri.max().item()) + 1 if n_faces else 1
    key = lo * n_vert + hi  # [3F], edge slot e = 3 * f + k
    order = torch.argsort(key)
    sorted_key = key[order]
    same = sorted_key[1:] == sorted_key[:-1]  # slots order[s] and order[s + 1] share an edge
    first, second = order[:-1][same], order[1:][same]
    neighbours = torch.full((3 * n_faces,), -1, dtype=torch.long, device=tri.device)
    neighbours[first] = second // 3
    neighbours[second] = first // 3
    return neighbours.reshape(n_faces, 3)


class TorchRasterizer:
    """Differentiable triangle rasterizer in pure PyTorch (any device), nvdiffrast-shaped.

    Rasterization is a vectorised two-pass scheme, with no Python loop over triangles or pixels:

    1. (no autograd) Every triangle with all ``w > 0`` is projected to the screen; its pixel
       bounding box (clamped to the image) gives its candidate pixels. The (triangle, pixel)
       pairs are enumerated by a flat pair index in chunks of at most ``max_pairs`` (a single
       triangle near the camera may cover the whole screen), tested with edge functions at
       the pixel centre, depth-tested against ``[-1, 1]``, and written into a z-buffer with
       ``scatter_reduce("amin")`` on the packed int64 key ``(quantised z/w << 32) | triangle_id``
       (z/w quantised to 30 bits): the nearest fragment wins, and on equal quantised depth the
       smaller triangle id wins, so the result does not depend on chunking or thread order. The
       inside test is inclusive, so a pixel centre exactly on a shared edge is never a crack.
    2. (autograd) For the winning (pixel, triangle) pairs only, perspective-correct barycentrics
       and ``z/w`` are recomputed from ``pos`` in homogeneous coordinates, so ``u``, ``v`` and
       ``z/w`` are differentiable w.r.t. ``pos``. Visibility itself is discrete: moving a
       silhouette gets its gradient from :meth:`antialias`.

    Clipping: a triangle with any vertex at ``w <= 0`` (on or behind the camera plane) is
    skipped whole (nvdiffrast would clip it against the near plane instead; keep meshes in front
    of the near plane). Fragments whose ``z/w`` lies outside ``[-1, 1]`` (in front of the near
    or beyond the far plane) are discarded per pixel, which is what clipping against those
    planes gives. Both facings are drawn (no back-face culling), as in nvdiffrast.

    ``max_pairs`` bounds the (triangle, pixel) pairs tested at once (memory ~ 100 bytes per pair);
    ``last_stats`` holds the candidate-pair and covered-pixel counts of the last call.
    """

    backend = "torch"

    def __init__(self, max_pairs: Optional[int] = None) -> None:
        # pairs per chunk: small chunks stay in the CPU cache (2^17 is ~20% faster than 2^22 here);
        # on a GPU fewer, larger launches win
        self.max_pairs = None if max_pairs is None else int(max_pairs)
        self._topology_cache: Optional[tuple[Tensor, int, Tensor]] = None
        self.last_stats: dict[str, int] = {}

    # ------------------------------------------------------------------ rasterize
    def rasterize(
        self,
        pos: Float[Tensor, "B V 4"],
        tri: Int[Tensor, "F 3"],
        resolution: Union[tuple[int, int], list[int]],
        ranges: None = None,
        grad_db: bool = True,
    ) -> tuple[Float[Tensor, "B H W 4"], None]:
        """Rasterize ``tri`` for every view in ``pos``; returns ``(rast, None)``.

        There are no image-space derivatives (``rast_db``): ``grad_db`` is accepted for nvdiffrast's
        signature and ignored, and ``ranges`` (range mode) is not supported.
        """
        if ranges is not None:
            raise NotImplementedError("TorchRasterizer supports instanced mode only (pos [B,V,4]); ranges is not supported")
        if pos.ndim != 3 or pos.shape[-1] != 4:
            raise ValueError(f"rasterize: pos must be [B,V,4] clip-space positions, got {tuple(pos.shape)}")
        if tri.ndim != 2 or tri.shape[-1] != 3:
            raise ValueError(f"rasterize: tri must be [F,3], got {tuple(tri.shape)}")
        height, width = int(resolution[0]), int(resolution[1])
        batch = pos.shape[0]
        tri = tri.long()
        n_pix = height * width
        device = pos.device

        pix, face = self._visible_faces(pos.detach(), tri, height, width)

        # pass 2: differentiable perspective-correct barycentrics for the winners only
        b_idx = torch.div(pix, n_pix, rounding_mode="floor")
        rem = pix - b_idx * n_pix
        row = torch.div(rem, width, rounding_mode="floor")
        col = rem - row * width
        ndc_x = (2.0 * col.to(pos.dtype) + 1.0) / width - 1.0
        ndc_y = (2.0 * row.to(pos.dtype) + 1.0) / height - 1.0
        vtx = _batched_rows(pos, b_idx, _rows(tri, face))  # [N,3,4]
        qx = vtx[..., 0] - ndc_x[:, None] * vtx[..., 3]
        qy = vtx[..., 1] - ndc_y[:, None] * vtx[..., 3]
        # b_k proportional to q_{k+1} x q_{k+2}: the point sum_k b_k V_k projects onto the pixel centre
        c0 = qx[:, 1] * qy[:, 2] - qx[:, 2] * qy[:, 1]
        c1 = qx[:, 2] * qy[:, 0] - qx[:, 0] * qy[:, 2]
        c2 = qx[:, 0] * qy[:, 1] - qx[:, 1] * qy[:, 0]
        total = c0 + c1 + c2
        bary_u, bary_v = c0 / total, c1 / total
        bary_w = 1.0 - bary_u - bary_v
        z = bary_u * vtx[:, 0, 2] + bary_v * vtx[:, 1, 2] + bary_w * vtx[:, 2, 2]
        w = bary_u * vtx[:, 0, 3] + bary_v * vtx[:, 1, 3] + bary_w * vtx[:, 2, 3]
        values = torch.stack([bary_u, bary_v, z / w, (face + 1).to(pos.dtype)], dim=-1)
        rast = torch.zeros(batch * n_pix, 4, dtype=pos.dtype, device=device)
        rast.index_put_((pix,), values)  # in place on a fresh buffer: autograd routes the gradient to ``values``
        return rast.reshape(batch, height, width, 4), None

    @torch.no_grad()
    def _visible_faces(self, pos: Tensor, tri: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Pass 1: flat indices of the covered pixels (over ``B*H*W``) and the triangle that wins each."""
        batch, n_faces = pos.shape[0], tri.shape[0]
        device = pos.device
        n_pix = height * width
        # per vertex: screen position (pixel units), z/w, and whether it is in front of the camera
        p = pos.float()
        w = p[..., 3]
        vert_ok = w > _W_EPS
        inv_w = torch.where(vert_ok, 1.0 / w, torch.zeros_like(w))
        vsx = (p[..., 0] * inv_w + 1.0) * (0.5 * width) - 0.5
        vsy = (p[..., 1] * inv_w + 1.0) * (0.5 * height) - 0.5
        vsz = p[..., 2] * inv_w
        vert_ok &= torch.isfinite(vsx) & torch.isfinite(vsy) & torch.isfinite(vsz)
        corners = [tri[:, k] for k in range(3)]
        sx = [vsx.index_select(1, c) for c in corners]  # 3 x [B,F]
        sy = [vsy.index_select(1, c) for c in corners]
        sz = [vsz.index_select(1, c) for c in corners]
        ok = vert_ok.index_select(1, corners[0]) & vert_ok.index_select(1, corners[1]) & vert_ok.index_select(1, corners[2])
        ok &= ~(((sz[0] > 1) & (sz[1] > 1) & (sz[2] > 1)) | ((sz[0] < -1) & (sz[1] < -1) & (sz[2] < -1)))
        x0 = torch.ceil(torch.minimum(torch.minimum(sx[0], sx[1]), sx[2]).clamp(-1.0, width)).long().clamp_min(0)
        x1 = torch.floor(torch.maximum(torch.maximum(sx[0], sx[1]), sx[2]).clamp(-1.0, width)).long().clamp_max(width - 1)
        y0 = torch.ceil(torch.minimum(torch.minimum(sy[0], sy[1]), sy[2]).clamp(-1.0, height)).long().clamp_min(0)
        y1 = torch.floor(torch.maximum(torch.maximum(sy[0], sy[1]), sy[2]).clamp(-1.0, height)).long().clamp_max(height - 1)
        ok &= (x0 <= x1) & (y0 <= y1)
        bf = ok.reshape(-1).nonzero().squeeze(1)  # flat (b, f) of candidate triangles

        def pick(x: Tensor) -> Tensor:
            return x.reshape(-1).index_select(0, bf)

        ox, oy = pick(x0), pick(y0)
        # vertices relative to the bounding-box corner: small numbers, so float32 set-up is accurate
        ex = [pick(s) - ox for s in sx]
        ey = [pick(s) - oy for s in sy]
        ez = [pick(s) for s in sz]
        area = (ex[1] - ex[0]) * (ey[2] - ey[0]) - (ex[2] - ex[0]) * (ey[1] - ey[0])
        good = (area != 0) & torch.isfinite(area)
        inv_area = torch.where(good, 1.0 / area, torch.zeros_like(area))
        # barycentric l_k(dx, dy) = cross(v_{k+1} - p, v_{k+2} - p) / area = A_k dx + B_k dy + C_k
        coef = []  # [A0, B0, C0, A1, B1, C1, A2, B2, C2], each [T]
        for k in range(3):
            i, j = (k + 1) % 3, (k + 2) % 3
            coef += [(ey[i] - ey[j]) * inv_area, (ex[j] - ex[i]) * inv_area, (ex[i] * ey[j] - ex[j] * ey[i]) * inv_area]
        zplane = [sum(coef[3 * k + m] * ez[k] for k in range(3)) for m in range(3)]  # z/w = Az dx + Bz dy + Cz
        box_w = pick(x1 - x0 + 1)
        counts = box_w * pick(y1 - y0 + 1) * good
        ends = torch.cumsum(counts, 0)
        n_pairs = int(ends[-1].item()) if ends.numel() else 0
        starts = ends - counts
        b_of = torch.div(bf, n_faces, rounding_mode="floor")
        base = b_of * n_pix + oy * width + ox
        face_of = bf - b_of * n_faces

        zbuf = torch.full((batch * n_pix,), _INT64_MAX, dtype=torch.int64, device=device)
        chunk = self.max_pairs or (2**17 if device.type == "cpu" else 2**22)
        for start in range(0, n_pairs, chunk):
            stop = min(n_pairs, start + chunk)
            # candidates overlapping the pair range [start, stop), and how many of their pairs it holds
            bounds = torch.searchsorted(ends, torch.tensor([start, stop - 1], device=device), right=True).tolist()
            lo = starts[bounds[0] : bounds[1] + 1].clamp_min(start)
            hi = ends[bounds[0] : bounds[1] + 1].clamp_max(stop)
            t = torch.repeat_interleave(torch.arange(bounds[0], bounds[1] + 1, device=device), hi - lo, output_size=stop - start)
            local = torch.arange(start, stop, device=device) - starts.index_select(0, t)
            bw = box_w.index_select(0, t)
            dyi = torch.div(local, bw, rounding_mode="floor")
            dxi = local - dyi * bw
            dx, dy = dxi.float(), dyi.float()

            def plane(a: Tensor, b: Tensor, c: Tensor, idx: Tensor, px: Tensor, py: Tensor) -> Tensor:
                return torch.addcmul(torch.addcmul(c.index_select(0, idx), a.index_select(0, idx), px), b.index_select(0, idx), py)

            inside = torch.minimum(plane(*coef[0:3], t, dx, dy), plane(*coef[3:6], t, dx, dy)) >= 0
            inside &= plane(*coef[6:9], t, dx, dy) >= 0
            sel = inside.nonzero().squeeze(1)
            t, dx, dy, dxi, dyi = (x.index_select(0, sel) for x in (t, dx, dy, dxi, dyi))
            z = plane(*zplane, t, dx, dy)
            in_range = (z >= -1) & (z <= 1)
            zq = ((z + 1.0) * _DEPTH_SCALE).long().clamp(0, 2**31 - 1)
            key = torch.where(in_range, (zq << 32) | face_of.index_select(0, t), torch.full_like(zq, _INT64_MAX))
            target = base.index_select(0, t) + dyi * width + dxi
            zbuf.scatter_reduce_(0, target, key, reduce="amin", include_self=True)
        pix = (zbuf != _INT64_MAX).nonzero().squeeze(1)
        face = zbuf.index_select(0, pix) & 0xFFFFFFFF
        self.last_stats = {"candidate_triangles": int(bf.numel()), "candidate_pairs": n_pairs, "covered_pixels": int(pix.numel())}
        return pix, face

    # ------------------------------------------------------------------ interpolate
    def interpolate(
        self,
        attr: Union[Float[Tensor, "#B V C"], Float[Tensor, "V C"]],
        rast: Float[Tensor, "B H W 4"],
        tri: Int[Tensor, "F 3"],
        rast_db: None = None,
        diff_attrs: None = None,
    ) -> tuple[Float[Tensor, "B H W C"], None]:
        """Barycentric interpolation of per-vertex ``attr`` at every pixel; background pixels get 0.

        Differentiable w.r.t. ``attr`` and, through ``rast``'s ``u, v``, w.r.t. ``pos``.
        ``attr`` is ``[V, C]`` (shared by the batch), ``[1, V, C]`` or ``[B, V, C]``.
        """
        if diff_attrs is not None:
            raise NotImplementedError("TorchRasterizer.interpolate: attribute pixel derivatives (diff_attrs) are not supported")
        batch, height, width, _ = rast.shape
        flat = rast.reshape(-1, 4)
        face = flat[:, 3].detach().round().long() - 1
        pix = (face >= 0).nonzero().squeeze(1)
        vidx = _rows(tri.long(), face.index_select(0, pix))  # [N,3]
        if attr.ndim == 2:
            a = _rows(attr, vidx)
        elif attr.ndim == 3 and attr.shape[0] in (1, batch):
            b_idx = torch.div(pix, height * width, rounding_mode="floor") if attr.shape[0] > 1 else torch.zeros_like(pix)
            a = _batched_rows(attr, b_idx, vidx)
        else:
            raise ValueError(f"interpolate: attr must be [V,C], [1,V,C] or [{batch},V,C], got {tuple(attr.shape)}")
        hit = _rows(flat, pix)
        u = hit[:, 0:1]
        v = hit[:, 1:2]
        values = u * a[:, 0] + v * a[:, 1] + (1.0 - u - v) * a[:, 2]
        out = torch.zeros(batch * height * width, attr.shape[-1], dtype=values.dtype, device=values.device)
        out.index_put_((pix,), values)
        return out.reshape(batch, height, width, attr.shape[-1]), None

    # ------------------------------------------------------------------ antialias
    def construct_topology_hash(self, tri: Int[Tensor, "F 3"]) -> Int[Tensor, "F 3"]:
        """Edge adjacency for :meth:`antialias` (compute once per mesh topology and pass it in)."""
        return build_edge_neighbours(tri)

    def _neighbours(self, tri: Tensor) -> Tensor:
        cache = self._topology_cache
        if cache is not None and cache[0] is tri and cache[1] == tri._version:
            return cache[2]
        neighbours = build_edge_neighbours(tri)
        self._topology_cache = (tri, tri._version, neighbours)  # holds ``tri``, so identity stays meaningful
        return neighbours

    def antialias(
        self,
        color: Float[Tensor, "B H W C"],
        rast: Float[Tensor, "B H W 4"],
        pos: Float[Tensor, "B V 4"],
        tri: Int[Tensor, "F 3"],
        topology_hash: Optional[Tensor] = None,
        pos_gradient_boost: float = 1.0,
    ) -> Float[Tensor, "B H W C"]:
        """Analytic silhouette antialiasing; gives gradients w.r.t. ``pos`` at silhouettes.

        Method. Look at every pair of horizontally or vertically adjacent pixels whose triangle ids
        differ. The occluder ``O`` is the triangle with the smaller ``z/w`` of the two (background
        is farthest); ``a`` is its pixel, ``b`` the other. Walking from ``a``'s centre to ``b``'s,
        the segment leaves ``O`` through one of its edges, at fraction ``t`` in ``[0, 1]`` of the
        way. The pair is used only if that edge is a silhouette edge (a boundary edge of the mesh,
        or one whose neighbouring triangle faces the other way on screen) and if the edge runs
        mostly across the pair's direction (``|dy| >= |dx|`` for horizontal pairs, ``|dx| > |dy|``
        for vertical ones), so every edge is counted in one direction only. The edge covers the
        segment up to ``t`` while the pixel boundary sits at 0.5, so the colour of one pixel
        moves towards the other's by the excess: with ``d = (t - 0.5) * (color_a - color_b)``,
        ``b`` gets ``+d`` when ``t > 0.5`` (``O`` spills into ``b``), else ``a`` gets ``+d``
        (``O`` does not reach ``a``'s boundary). ``t`` is recomputed with autograd from the
        edge's screen-space end points, so moving a silhouette edge by ``delta`` pixels along the
        pair changes the image by ``delta * (color_a - color_b)`` at that pair: the image sum
        changes by the swept area times the colour step, which is the silhouette gradient.
        Gradients also flow into ``color`` (the blend is linear in it).

        Limitations: only the edge through which the segment leaves ``O`` is considered, so a
        silhouette made of sub-pixel triangles (not rendered at either pixel) gives no gradient
        there; ``pos_gradient_boost`` multiplies only the gradient that reaches ``pos``.
        """
        batch, height, width, channels = color.shape
        if rast.shape[:3] != color.shape[:3]:
            raise ValueError(f"antialias: color {tuple(color.shape)} and rast {tuple(rast.shape)} disagree")
        tri = tri.long()
        neighbours = topology_hash if topology_hash is not None else self._neighbours(tri)
        n_pix = height * width
        with torch.no_grad():
            face = rast[..., 3].round().long() - 1  # [B,H,W]
            n_faces = tri.shape[0]
            sil_edge = self._silhouette_edges(pos, tri, neighbours, height, width)  # [B*F, 3]
            # pixels showing a triangle that has a silhouette edge in this view: only they can be occluders
            flat_face = face.reshape(-1)
            covered = (flat_face >= 0).nonzero().squeeze(1)
            view_face = torch.div(covered, n_pix, rounding_mode="floor") * n_faces + flat_face.index_select(0, covered)
            sil_pix = torch.zeros(batch * n_pix, dtype=torch.bool, device=face.device)
            sil_pix[covered] = sil_edge.any(1).index_select(0, view_face)
            sil_pix = sil_pix.reshape(batch, height, width)
            depth = torch.where(face >= 0, rast[..., 2].float(), torch.full_like(rast[..., 2].float(), float("inf")))
            pairs = []
            for horizontal in (True, False):
                if horizontal:
                    diff = (face[:, :, :-1] != face[:, :, 1:]) & (sil_pix[:, :, :-1] | sil_pix[:, :, 1:])
                    b_i, i_i, j_i = diff.nonzero(as_tuple=True)
                    p = (b_i * height + i_i) * width + j_i
                    q = p + 1
                else:
                    diff = (face[:, :-1, :] != face[:, 1:, :]) & (sil_pix[:, :-1, :] | sil_pix[:, 1:, :])
                    b_i, i_i, j_i = diff.nonzero(as_tuple=True)
                    p = (b_i * height + i_i) * width + j_i
                    q = p + width
                pairs.append(self._silhouette_pairs(p, q, horizontal, flat_face, depth.reshape(-1), pos, tri, sil_edge, height, width))
            a_pix = torch.cat([x[0] for x in pairs])
            b_pix = torch.cat([x[1] for x in pairs])
            o_face = torch.cat([x[2] for x in pairs])
            edge = torch.cat([x[3] for x in pairs])
            is_h = torch.cat([torch.full_like(x[0], int(h), dtype=torch.bool) for x, h in zip(pairs, (True, False))])

        # differentiable crossing fraction t of the silhouette edge along the segment a -> b
        b_idx = torch.div(a_pix, n_pix, rounding_mode="floor")
        rem_a = a_pix - b_idx * n_pix
        rem_b = b_pix - b_idx * n_pix
        ya = torch.div(rem_a, width, rounding_mode="floor")
        xa = rem_a - ya * width
        yb = torch.div(rem_b, width, rounding_mode="floor")
        xb = rem_b - yb * width
        tri_flat = tri.reshape(-1)
        v0 = tri_flat.index_select(0, o_face * 3 + edge)
        v1 = tri_flat.index_select(0, o_face * 3 + (edge + 1) % 3)
        p0 = _batched_rows(pos, b_idx, v0)
        p1 = _batched_rows(pos, b_idx, v1)
        if pos_gradient_boost != 1.0:
            p0, p1 = _scale_grad(p0, pos_gradient_boost), _scale_grad(p1, pos_gradient_boost)
        x0, y0 = _screen_xy(p0, height, width)
        x1, y1 = _screen_xy(p1, height, width)
        dx, dy = x1 - x0, y1 - y0
        xa_f, ya_f = xa.to(x0.dtype), ya.to(x0.dtype)
        safe_dy = torch.where(is_h, dy, torch.ones_like(dy))
        safe_dx = torch.where(is_h, torch.ones_like(dx), dx)
        cross_h = (x0 + (ya_f - y0) * dx / safe_dy - xa_f) * (xb - xa).to(x0.dtype)
        cross_v = (y0 + (xa_f - x0) * dy / safe_dx - ya_f) * (yb - ya).to(x0.dtype)
        t = torch.where(is_h, cross_h, cross_v).clamp(0.0, 1.0)

        flat = color.reshape(-1, channels)
        delta = (t - 0.5)[:, None] * (_rows(flat, a_pix) - _rows(flat, b_pix))
        target = torch.where(t.detach() > 0.5, b_pix, a_pix)
        return flat.index_add(0, target, delta.to(flat.dtype)).reshape(batch, height, width, channels)

    @torch.no_grad()
    def _silhouette_edges(self, pos: Tensor, tri: Tensor, neighbours: Tensor, height: int, width: int) -> Tensor:
        """``[B*F, 3]``: is edge k of face f a silhouette edge in view b? True for a boundary edge, or when
        the triangle across it faces the other way on screen or cannot be drawn (a vertex at w <= 0)."""
        p = pos.float()
        w = p[..., 3]
        vert_ok = w > _W_EPS
        inv_w = torch.where(vert_ok, 1.0 / w, torch.zeros_like(w))
        vx, vy = p[..., 0] * inv_w * width, p[..., 1] * inv_w * height  # screen scale; offsets cancel in the area
        c = [tri[:, k] for k in range(3)]
        x = [vx.index_select(1, ck) for ck in c]
        y = [vy.index_select(1, ck) for ck in c]
        area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
        drawable = vert_ok.index_select(1, c[0]) & vert_ok.index_select(1, c[1]) & vert_ok.index_select(1, c[2])
        orient = torch.where(drawable & torch.isfinite(area), torch.sign(area), torch.zeros_like(area)).to(torch.int8)  # [B,F]
        nb = neighbours.long()
        nb_orient = orient.index_select(1, nb.clamp_min(0).reshape(-1)).reshape(pos.shape[0], -1, 3)
        sil = (nb < 0)[None] | (nb_orient == 0) | (nb_orient != orient[..., None])
        return sil.reshape(-1, 3)

    @torch.no_grad()
    def _silhouette_pairs(
        self,
        p: Tensor,
        q: Tensor,
        horizontal: bool,
        face: Tensor,
        depth: Tensor,
        pos: Tensor,
        tri: Tensor,
        sil_edge: Tensor,
        height: int,
        width: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Filter adjacent pixel pairs to those split by a silhouette edge: (a, b, occluder face, edge index)."""
        n_pix = height * width
        p_front = depth.index_select(0, p) <= depth.index_select(0, q)
        a = torch.where(p_front, p, q)
        b = torch.where(p_front, q, p)
        o = face.index_select(0, a)
        b_idx = torch.div(a, n_pix, rounding_mode="floor")
        verts = _batched_rows(pos, b_idx, _rows(tri, o)).float()  # [N,3,4]
        sx, sy = _screen_xy(verts, height, width)
        area = (sx[:, 1] - sx[:, 0]) * (sy[:, 2] - sy[:, 0]) - (sx[:, 2] - sx[:, 0]) * (sy[:, 1] - sy[:, 0])
        orient = torch.sign(area)
        rem_a, rem_b = a - b_idx * n_pix, b - b_idx * n_pix
        ya = torch.div(rem_a, width, rounding_mode="floor").float()
        xa = rem_a.float() - ya * width
        yb = torch.div(rem_b, width, rounding_mode="floor").float()
        xb = rem_b.float() - yb * width
        ex0, ey0 = sx, sy
        ex1, ey1 = sx.roll(-1, dims=1), sy.roll(-1, dims=1)
        # edge k from vertex k to k+1, positive inside
        e_a = ((ex1 - ex0) * (ya[:, None] - ey0) - (ey1 - ey0) * (xa[:, None] - ex0)) * orient[:, None]
        e_b = ((ex1 - ex0) * (yb[:, None] - ey0) - (ey1 - ey0) * (xb[:, None] - ex0)) * orient[:, None]
        exits = e_b < 0
        t_k = torch.where(exits, e_a.clamp_min(0) / (e_a.clamp_min(0) - e_b).clamp_min(1e-30), torch.full_like(e_a, 2.0))
        t_min, edge = t_k.min(dim=1)
        ok = t_min <= 1.0
        edx = (ex1 - ex0).gather(1, edge[:, None]).squeeze(1)
        edy = (ey1 - ey0).gather(1, edge[:, None]).squeeze(1)
        ok &= (edx.abs() <= edy.abs()) if horizontal else (edx.abs() > edy.abs())
        ok &= sil_edge.reshape(-1).index_select(0, (b_idx * tri.shape[0] + o) * 3 + edge)
        return a[ok], b[ok], o[ok], edge[ok]


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def _scale_grad(x: Tensor, scale: float) -> Tensor:
    return _ScaleGrad.apply(x, scale)


class NvdiffrastRasterizer:
    """The same three methods on ``nvdiffrast.torch`` (CUDA). ``context_type``: ``"cuda"`` or ``"gl"``."""

    backend = "nvdiffrast"

    def __init__(self, device: Union[str, torch.device] = "cuda", context_type: str = "cuda") -> None:
        dr = backends.optional_import("nvdiffrast.torch")
        if dr is None:
            raise RuntimeError(
                f"nvdiffrast is not installed ({backends.install_hint('nvdiffrast')}); "
                "use backend: torch for the built-in rasterizer."
            )
        self.dr = dr
        if context_type == "cuda":
            self.ctx = dr.RasterizeCudaContext(device=device)
        elif context_type == "gl":
            self.ctx = dr.RasterizeGLContext(device=device)
        else:
            raise ValueError(f"context_type must be 'cuda' or 'gl', got {context_type!r}")

    # nvdiffrast rejects a triangle array with no rows (an empty DMTet mesh): those calls are
    # answered here with what it would give for triangles that cover nothing

    def rasterize(
        self,
        pos: Float[Tensor, "B V 4"],
        tri: Int[Tensor, "F 3"],
        resolution: Union[tuple[int, int], list[int]],
        ranges: Optional[Tensor] = None,
        grad_db: bool = True,
    ) -> tuple[Float[Tensor, "B H W 4"], Optional[Float[Tensor, "B H W 4"]]]:  # no derivatives without grad_db
        if tri.shape[0] == 0:
            empty = pos.new_zeros(pos.shape[0], int(resolution[0]), int(resolution[1]), 4, dtype=torch.float32)
            return empty, torch.zeros_like(empty)
        return self.dr.rasterize(self.ctx, pos.float().contiguous(), tri.int().contiguous(), list(resolution), ranges=ranges, grad_db=grad_db)

    def interpolate(
        self, attr: Tensor, rast: Float[Tensor, "B H W 4"], tri: Int[Tensor, "F 3"], rast_db: Any = None, diff_attrs: Any = None
    ) -> tuple[Float[Tensor, "B H W C"], Tensor]:
        if tri.shape[0] == 0:
            batch, height, width, _ = rast.shape
            n_da = 0 if diff_attrs is None else 2 * (attr.shape[-1] if diff_attrs == "all" else len(diff_attrs))
            return rast.new_zeros(batch, height, width, attr.shape[-1]), rast.new_zeros(batch, height, width, n_da)
        return self.dr.interpolate(attr.float().contiguous(), rast, tri.int().contiguous(), rast_db=rast_db, diff_attrs=diff_attrs)

    def construct_topology_hash(self, tri: Int[Tensor, "F 3"]) -> Any:
        return self.dr.antialias_construct_topology_hash(tri.int().contiguous())

    def antialias(
        self,
        color: Float[Tensor, "B H W C"],
        rast: Float[Tensor, "B H W 4"],
        pos: Float[Tensor, "B V 4"],
        tri: Int[Tensor, "F 3"],
        topology_hash: Any = None,
        pos_gradient_boost: float = 1.0,
    ) -> Float[Tensor, "B H W C"]:
        if tri.shape[0] == 0:
            return color  # no edges: nothing to antialias
        return self.dr.antialias(
            color.contiguous(), rast, pos.float().contiguous(), tri.int().contiguous(),
            topology_hash=topology_hash, pos_gradient_boost=pos_gradient_boost,
        )


Rasterizer = Union[TorchRasterizer, NvdiffrastRasterizer]


CONTEXT_TYPES = ("cuda", "gl")


def make_rasterizer(
    backend: str = "auto", device: Union[str, torch.device] = "cpu", context_type: str = "cuda", part: str = "rasteriser"
) -> Rasterizer:
    """``backend``: ``auto`` (nvdiffrast on CUDA when installed, else torch), ``torch`` or ``nvdiffrast``.

    ``context_type`` (``cuda`` or ``gl``) is nvdiffrast's first choice: when it cannot be created
    (``gl`` on a headless machine) the CUDA context is tried, then, under ``auto``, the built-in
    rasteriser, with one warning saying what failed. The backend used is reported as ``part``.
    """
    if context_type not in CONTEXT_TYPES:
        raise ValueError(f"context_type must be 'cuda' or 'gl', got {context_type!r}")
    chosen, why = backends.resolve_backend(backend, "nvdiffrast", device)
    if chosen == "torch":
        backends.report_backend(part, "torch", why)
        return TorchRasterizer()
    failures = []
    for context in dict.fromkeys([context_type, "cuda"]):  # gl -> cuda; cuda alone
        try:
            rasterizer = NvdiffrastRasterizer(device=device, context_type=context)
        except Exception as error:  # no display / EGL, a plugin that fails to build, ...
            failures.append(f"{context} context: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}")
            continue
        if failures:
            warnings.warn(f"nvdiffrast: {'; '.join(failures)}; using its {context} context instead.", RuntimeWarning, stacklevel=2)
        backends.report_backend(part, "nvdiffrast", "; ".join([f"{context} context", *failures]))
        return rasterizer
    if backend == "nvdiffrast":
        raise RuntimeError(
            f"backend 'nvdiffrast' was requested but no nvdiffrast context could be created ({'; '.join(failures)}). "
            "Set backend: auto (or torch) to use the built-in PyTorch rasteriser."
        )
    warnings.warn(f"nvdiffrast: {'; '.join(failures)}; using the built-in PyTorch rasteriser instead.", RuntimeWarning, stacklevel=2)
    backends.report_backend(part, "torch", "no nvdiffrast context: " + "; ".join(failures))
    return TorchRasterizer()
