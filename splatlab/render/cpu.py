"""The fast CPU backend: a Numba tile rasterizer with analytic gradients (gsplat 1.5.3 semantics).

Two differentiable steps, each a ``torch.autograd.Function`` around compiled kernels:

1. :func:`project_cpu` – EWA projection of 3D Gaussians to 2D (``radii``, ``means2d``, ``depths``,
   ``conics``), with the analytic backward to means, quats, scales and **viewmats** (pose optimisation).
2. :func:`rasterize_cpu` – tile binning, front-to-back compositing with early stop, and the
   back-to-front backward of gsplat's ``RasterizeToPixels3DGSBwd``.

Numerical conventions are gsplat 1.5.3's (the same as :mod:`splatlab.render.reference`): pixel centres at
+0.5; 16×16 tiles; ``eps2d = 0.3`` added to 2D covariances; alpha = min(0.999, opacity·exp(-σ));
contributions below 1/255 skipped; a pixel stops (exclusively) before transmittance would reach 1e-4;
screen boxes of min(3.33, sqrt(2 ln(255·opacity))) sigma; near/far plane and off-screen culling.

How the kernel is organised (and why it is fast on a laptop CPU):

- Projection runs in float64 registers per Gaussian (``prange`` over Gaussians, cameras inside), so its
  backward needs no atomics; the viewmat gradient is reduced from per-chunk partial sums.
- Binning is a counting sort: Gaussians are sorted by depth once per camera (LSD radix sort on the float
  bits), counted per tile, and then distributed to the tiles in depth order, so every tile's list comes
  out already sorted. No 64-bit ``tile|depth`` key sort.
- Compositing works on 16-pixel tile rows, with branch-free selects and a cheap, vectorisable ``exp``
  (Cody–Waite range reduction + degree-6 polynomial, ~1e-7 relative error), so LLVM emits AVX code. It is
  Gaussian-major: each Gaussian (in depth order) visits only the tile rows it can reach, an interval solved
  once per Gaussian (elsewhere its alpha is provably below 1/255), while every row keeps its own
  transmittance; the tile stops when all its rows have.
- Tiles are processed in parallel, one part per thread, balanced by their list lengths; the backward
  writes into one gradient buffer per part, summed at the end in part order: no atomics, and the same
  numbers whichever thread runs which part.
- Everything runs in float32 (inputs of other dtypes are converted, and outputs converted back); the
  forward saves the tile bins, per-pixel final transmittance and last contributing index for the backward.

The kernels live in :mod:`.cpu_project` (projection) and :mod:`.cpu_raster` (binning, compositing); this
module holds the torch glue. Numba's threading layer and the thread counts are chosen in
:mod:`splatlab.threads`. The first call compiles the kernels (``cache=True``, so later processes load
them from Numba's cache).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch

from splatlab.render.cpu_project import _project_bwd, _project_bwd_range, _project_fwd, _project_fwd_range
from splatlab.render.cpu_raster import (
    _TILE_COST,
    _balance,
    _bin_count,
    _bin_fill,
    _bin_fill_serial,
    _raster_bwd,
    _raster_fwd,
)
from splatlab.threads import choose_threading_layer

__all__ = ["project_cpu", "rasterize_cpu"]

# Below this many Gaussian-camera pairs the projection (and below 4x as many tile entries, the binning) runs
# on one thread: waking a second thread costs ~0.05 ms on an idle machine but up to a scheduler time slice on
# a busy one, more than the ~0.1 ms of work.
_SERIAL_BELOW = 8192


# --------------------------------------------------------------------------------------------------------
# torch glue
# --------------------------------------------------------------------------------------------------------

# Numba's workqueue layer aborts the process if two Python threads launch parallel kernels at once (e.g. a
# viser callback rendering while a training loop runs); kernel launches are serialised by this lock.
_KERNEL_LOCK = threading.RLock()


def _np32(t: torch.Tensor, name: str) -> np.ndarray:
    """A C-contiguous float32 numpy view (or copy) of a CPU tensor, detached."""
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for the cpu backend, got device {t.device}")
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def _np_i32(t: torch.Tensor, name: str) -> np.ndarray:
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for the cpu backend, got device {t.device}")
    t = t.detach()
    if t.dtype != torch.int32:
        t = t.to(torch.int32)
    return t.contiguous().numpy()


def _grad_np(g: torch.Tensor | None, shape) -> np.ndarray:
    if g is None:
        return np.zeros(shape, np.float32)
    return _np32(g, "grad").reshape(shape)


def _bin_gaussians(m2, rd, dp, ts, tw, th):
    """Tile bins: ``offsets`` [C*T+1], depth-sorted ids ``bins``, and the non-empty ``tiles`` split into one
    part per thread, ``tiles[starts[i]:starts[i + 1]]`` (see :func:`_balance`)."""
    C, N = dp.shape
    T = tw * th
    counts = np.zeros(C * T, np.int64)
    order = np.empty((C, N), np.int32)
    nvalid = np.zeros(C, np.int64)
    if N > 0:
        _bin_count(m2, rd, dp, ts, tw, th, counts, order, nvalid)
    offsets = np.zeros(C * T + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    bins = np.empty(int(offsets[-1]), np.int32)
    if bins.shape[0] > 0:
        if bins.shape[0] < 4 * _SERIAL_BELOW:
            _bin_fill_serial(m2, rd, ts, tw, th, order, nvalid, offsets, bins)
        else:
            _bin_fill(m2, rd, ts, tw, th, order, nvalid, offsets, bins, min(th, 2 * numba.get_num_threads()))
    nonempty = np.flatnonzero(counts)
    tiles = nonempty[np.argsort(-counts[nonempty], kind="stable")]
    tiles, starts = _balance(tiles, counts[tiles] + _TILE_COST, numba.get_num_threads())
    return offsets, bins, tiles, starts


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near, far):
        N = means.shape[0]
        C = viewmats.shape[0]
        m, q, s = _np32(means, "means"), _np32(quats, "quats"), _np32(scales, "scales")
        V, K = _np32(viewmats, "viewmats"), _np32(Ks, "Ks")
        has_op = opacities is not None
        op = _np32(opacities, "opacities") if has_op else np.ones(N, np.float32)
        radii = np.empty((C, N, 2), np.int32)
        means2d = np.empty((C, N, 2), np.float32)
        depths = np.empty((C, N), np.float32)
        conics = np.empty((C, N, 3), np.float32)
        choose_threading_layer()
        if N > 0 and C > 0:
            args = (
                m,
                q,
                s,
                op,
                has_op,
                V,
                K,
                float(width),
                float(height),
                float(eps2d),
                float(near),
                float(far),
            )
            outs = (radii, means2d, depths, conics)
            with _KERNEL_LOCK:
                if N * C < _SERIAL_BELOW:  # small: a thread hand-off would cost more than the work
                    _project_fwd_range(0, N, *args, *outs)
                else:
                    _project_fwd(4 * numba.get_num_threads(), *args, *outs)
        dt = means.dtype
        radii_t = torch.from_numpy(radii)
        means2d_t = torch.from_numpy(means2d).to(dt)
        depths_t = torch.from_numpy(depths).to(dt)
        conics_t = torch.from_numpy(conics).to(dt)
        ctx.mark_non_differentiable(radii_t)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii_t, conics_t)
        ctx.size = (float(width), float(height))
        return radii_t, means2d_t, depths_t, conics_t

    @staticmethod
    def backward(ctx, v_radii, v_means2d, v_depths, v_conics):
        means, quats, scales, viewmats, Ks, radii, conics = ctx.saved_tensors
        N = means.shape[0]
        C = viewmats.shape[0]
        W, H = ctx.size
        v_m = np.zeros((N, 3), np.float32)
        v_q = np.zeros((N, 4), np.float32)
        v_s = np.zeros((N, 3), np.float32)
        serial = N * C < _SERIAL_BELOW
        nchunks = 1 if serial else max(1, min(4 * numba.get_num_threads(), N))
        parts = np.zeros((nchunks, C, 4, 4), np.float64)
        if N > 0 and C > 0:
            args = (
                _np32(means, "means"),
                _np32(quats, "quats"),
                _np32(scales, "scales"),
                _np32(viewmats, "viewmats"),
                _np32(Ks, "Ks"),
                W,
                H,
                radii.numpy(),
                _np32(conics, "conics"),
                _grad_np(v_means2d, (C, N, 2)),
                _grad_np(v_depths, (C, N)),
                _grad_np(v_conics, (C, N, 3)),
                v_m,
                v_q,
                v_s,
                parts,
                bool(ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]),
            )
            with _KERNEL_LOCK:
                if serial:
                    _project_bwd_range(0, 0, N, *args)
                else:
                    _project_bwd(*args)

        def out(a, like, need):
            return torch.from_numpy(a).to(like.dtype) if need else None

        need = ctx.needs_input_grad
        v_view = torch.from_numpy(parts.sum(0)).to(viewmats.dtype) if need[4] else None
        return (
            out(v_m, means, need[0]),
            out(v_q, quats, need[1]),
            out(v_s, scales, need[2]),
            None,
            v_view,
            None,
            None,
            None,
            None,
            None,
            None,
        )


class _RasterizeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, radii, depths, background, width, height, tile_size):
        C, N, D = colors.shape
        W, H, ts = int(width), int(height), int(tile_size)
        tw = (W + ts - 1) // ts
        th = (H + ts - 1) // ts
        m2 = _np32(means2d, "means2d")
        cn = _np32(conics, "conics")
        col = _np32(colors, "colors")
        op = _np32(opacities, "opacities")
        rd = _np_i32(radii, "radii")
        dp = _np32(depths, "depths")
        bg = np.zeros((C, D), np.float32) if background is None else _np32(background, "background")

        choose_threading_layer()
        out_col = np.empty((C, H, W, D), np.float32)
        out_col[:] = bg[:, None, None, :]
        out_alpha = np.zeros((C, H, W, 1), np.float32)
        out_T = np.ones((C, H, W), np.float32)
        out_last = np.full((C, H, W), -1, np.int32)
        with _KERNEL_LOCK:
            offsets, bins, tiles, starts = _bin_gaussians(m2, rd, dp, ts, tw, th)
            if tiles.shape[0] > 0:
                _raster_fwd(
                    m2,
                    cn,
                    col,
                    op,
                    bg,
                    offsets,
                    bins,
                    tiles,
                    starts,
                    W,
                    H,
                    ts,
                    tw,
                    out_col,
                    out_alpha,
                    out_T,
                    out_last,
                )
        ctx.bins = (offsets, bins, tiles, starts, out_T, out_last, W, H, ts, tw, background is not None)
        ctx.save_for_backward(means2d, conics, colors, opacities, background)
        dt = colors.dtype
        return torch.from_numpy(out_col).to(dt), torch.from_numpy(out_alpha).to(dt)

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):
        means2d, conics, colors, opacities, background = ctx.saved_tensors
        offsets, bins, tiles, starts, out_T, out_last, W, H, ts, tw, has_bg = ctx.bins
        C, N, D = colors.shape
        vcol = _grad_np(v_render_colors, (C, H, W, D))
        valpha = _grad_np(v_render_alphas, (C, H, W, 1))
        bg = _np32(background, "background") if has_bg else np.zeros((C, D), np.float32)
        need = ctx.needs_input_grad
        nparts = starts.shape[0] - 1
        gbuf = np.zeros((max(nparts, 1), C * N, 6 + D), np.float32)
        with _KERNEL_LOCK:
            if tiles.shape[0] > 0:
                _raster_bwd(
                    _np32(means2d, "means2d"),
                    _np32(conics, "conics"),
                    _np32(colors, "colors"),
                    _np32(opacities, "opacities"),
                    bg,
                    offsets,
                    bins,
                    tiles,
                    starts,
                    W,
                    H,
                    ts,
                    tw,
                    out_T,
                    out_last,
                    vcol,
                    valpha,
                    gbuf,
                )
        g = gbuf[0]
        for t in range(1, nparts):
            g += gbuf[t]
        g = torch.from_numpy(g).view(C, N, 6 + D)
        v_means2d = g[..., 0:2].to(means2d.dtype) if need[0] else None
        v_conics = g[..., 2:5].to(conics.dtype) if need[1] else None
        v_colors = g[..., 6:].to(colors.dtype) if need[2] else None
        v_opac = g[..., 5].to(opacities.dtype) if need[3] else None
        v_bg = None
        if has_bg and need[6]:
            Tt = torch.from_numpy(out_T)[..., None]
            v_bg = (Tt * torch.from_numpy(vcol)).sum((1, 2)).to(background.dtype)
        return v_means2d, v_conics, v_colors, v_opac, None, None, v_bg, None, None, None


def project_cpu(
    means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01, far_plane=1e10
):
    """Project 3D Gaussians to 2D on every camera (EWA, gsplat 1.5.3 semantics), with analytic gradients.

    Args:
        means: Centres in world coordinates. [N, 3]
        quats: Unit quaternions wxyz (normalised by the caller). [N, 4]
        scales: Activated scales (standard deviations). [N, 3]
        opacities: Activated opacities; only tighten the screen boxes (not differentiated), or None
            for gsplat's plain 3.33-sigma boxes. [N]
        viewmats: World→camera matrices, OpenCV axes. [C, 4, 4]
        Ks: Intrinsics. [C, 3, 3]
        width: Image width in pixels.
        height: Image height in pixels.
        eps2d: Low-pass filter added to the 2D covariances (px²).
        near_plane: Gaussians with camera z below this are culled.
        far_plane: Gaussians with camera z above this are culled.

    Returns:
        ``radii`` int32 [C, N, 2] (0 = culled), ``means2d`` [C, N, 2], ``depths`` [C, N] (camera z),
        ``conics`` [C, N, 3] (a, b, c of the inverse 2D covariance). Gradients flow from means2d, depths
        and conics back to means, quats, scales and viewmats.
    """
    return _ProjectCPU.apply(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane
    )


def rasterize_cpu(
    means2d, conics, colors, opacities, radii, depths, width, height, background=None, tile_size=16
):
    """Composite projected Gaussians front to back in tiles (gsplat 1.5.3 semantics), with gradients.

    Args:
        means2d: Projected centres in pixels. [C, N, 2]
        conics: Inverse 2D covariances (a, b, c). [C, N, 3]
        colors: Per-camera colours, any number of channels D >= 1. [C, N, D]
        opacities: Opacities in [0, 1]. [C, N]
        radii: Screen boxes from the projection, int; 0 means culled. [C, N, 2]
        depths: Camera-space depths, used only as the sort key. [C, N]
        width: Image width.
        height: Image height.
        background: Colour behind the Gaussians, or None for black. [C, D]
        tile_size: Tile edge in pixels (16 as gsplat).

    Returns:
        ``render_colors`` [C, H, W, D] and ``render_alphas`` [C, H, W, 1]. Gradients flow to means2d,
        conics, colors, opacities (and background).
    """
    return _RasterizeCPU.apply(
        means2d, conics, colors, opacities, radii, depths, background, width, height, tile_size
    )
