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
  writes into per-thread gradient buffers that are summed at the end: no atomics.
- Everything runs in float32 (inputs of other dtypes are converted, and outputs converted back); the
  forward saves the tile bins, per-pixel final transmittance and last contributing index for the backward.

Numba uses its default number of threads (``numba.get_num_threads()``). The first call compiles the
kernels (``cache=True``, so later processes load them from Numba's cache).
"""

from __future__ import annotations

import math
import os
import threading

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

__all__ = ["choose_threading_layer", "project_cpu", "rasterize_cpu"]

# Fast-math flags that are safe here: no NaN/Inf assumptions (culling relies on comparisons).
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_ALPHA_MIN = np.float32(1.0 / 255.0)
_ALPHA_MAX = np.float32(0.999)
_T_MIN = np.float32(1e-4)
_EXTENT = 3.33
_ROW_SKIP_MARGIN = 1e-3
_LANES = 16  # pixels per vectorised row segment
_TILE_COST = 32  # a tile's fixed cost for load balancing, in units of one Gaussian in its list
# Below this many Gaussian-camera pairs the projection (and below 4x as many tile entries, the binning) runs
# on one thread: waking a second thread costs ~0.05 ms on an idle machine but up to a scheduler time slice on
# a busy one, more than the ~0.1 ms of work.
_SERIAL_BELOW = 8192  # log-space safety margin of the row-skip test

# exp(-s) = 2^-n * exp(n ln2 - s)
_EXP_SMAX = np.float32(80.0)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P2 = np.float32(1.0 / 2.0)
_P3 = np.float32(1.0 / 6.0)
_P4 = np.float32(1.0 / 24.0)
_P5 = np.float32(1.0 / 120.0)
_P6 = np.float32(1.0 / 720.0)


# --------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------


@intrinsic
def _pow2_neg(typingctx, nf):
    """2^-n for an integer-valued float32 n in [0, 126], from the float's exponent bits (int32 lanes)."""
    if nf != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        n = builder.fptosi(args[0], i32)
        e = builder.shl(builder.sub(ir.Constant(i32, 127), n), ir.Constant(i32, 23))
        return builder.bitcast(e, ir.FloatType())

    return types.float32(types.float32), codegen


@njit(inline="always", fastmath=_FM, cache=True)
def _exp_neg(s):
    """exp(-s) for float32 s >= 0, relative error ~1e-7; branch-free, float-only: loops vectorise."""
    s = min(s, _EXP_SMAX)
    nf = np.float32(np.int32(s * _LOG2E + _HALF))  # s >= 0: truncation rounds to nearest
    f = (nf * _LN2_HI - s) + nf * _LN2_LO  # |f| <= ln2 / 2
    p = _P6 * f + _P5
    p = p * f + _P4
    p = p * f + _P3
    p = p * f + _P2
    p = p * f + _F1
    p = p * f + _F1
    return p * _pow2_neg(nf)


@njit(cache=True)
def _quat_to_rotmat(w, x, y, z):
    """Row-major 3x3 rotation (9-tuple) of a unit quaternion wxyz."""
    return (
        1.0 - 2.0 * (y * y + z * z),
        2.0 * (x * y - w * z),
        2.0 * (x * z + w * y),
        2.0 * (x * y + w * z),
        1.0 - 2.0 * (x * x + z * z),
        2.0 * (y * z - w * x),
        2.0 * (x * z - w * y),
        2.0 * (y * z + w * x),
        1.0 - 2.0 * (x * x + y * y),
    )


@njit(cache=True)
def _mm(A, B):
    """A @ B for row-major 3x3 9-tuples."""
    return (
        A[0] * B[0] + A[1] * B[3] + A[2] * B[6],
        A[0] * B[1] + A[1] * B[4] + A[2] * B[7],
        A[0] * B[2] + A[1] * B[5] + A[2] * B[8],
        A[3] * B[0] + A[4] * B[3] + A[5] * B[6],
        A[3] * B[1] + A[4] * B[4] + A[5] * B[7],
        A[3] * B[2] + A[4] * B[5] + A[5] * B[8],
        A[6] * B[0] + A[7] * B[3] + A[8] * B[6],
        A[6] * B[1] + A[7] * B[4] + A[8] * B[7],
        A[6] * B[2] + A[7] * B[5] + A[8] * B[8],
    )


@njit(cache=True)
def _tr(A):
    return (A[0], A[3], A[6], A[1], A[4], A[7], A[2], A[5], A[8])


@njit(cache=True)
def _covar_world(quats, scales, i):
    """Rotation R_q, M = R_q diag(s) and the world covariance M M^T of Gaussian i (float64)."""
    Rq = _quat_to_rotmat(
        np.float64(quats[i, 0]), np.float64(quats[i, 1]), np.float64(quats[i, 2]), np.float64(quats[i, 3])
    )
    sx, sy, sz = np.float64(scales[i, 0]), np.float64(scales[i, 1]), np.float64(scales[i, 2])
    M = (
        Rq[0] * sx,
        Rq[1] * sy,
        Rq[2] * sz,
        Rq[3] * sx,
        Rq[4] * sy,
        Rq[5] * sz,
        Rq[6] * sx,
        Rq[7] * sy,
        Rq[8] * sz,
    )
    return Rq, M, _mm(M, _tr(M))


@njit(cache=True)
def _view(viewmats, c):
    R = (
        np.float64(viewmats[c, 0, 0]),
        np.float64(viewmats[c, 0, 1]),
        np.float64(viewmats[c, 0, 2]),
        np.float64(viewmats[c, 1, 0]),
        np.float64(viewmats[c, 1, 1]),
        np.float64(viewmats[c, 1, 2]),
        np.float64(viewmats[c, 2, 0]),
        np.float64(viewmats[c, 2, 1]),
        np.float64(viewmats[c, 2, 2]),
    )
    t = (np.float64(viewmats[c, 0, 3]), np.float64(viewmats[c, 1, 3]), np.float64(viewmats[c, 2, 3]))
    return R, t


@njit(cache=True)
def _jacobian(x, y, z, fx, fy, cx, cy, W, H):
    """gsplat's clamped perspective Jacobian: returns (J02, J12, tx, ty, lims)."""
    tan_fovx = 0.5 * W / fx
    tan_fovy = 0.5 * H / fy
    lim_xp = (W - cx) / fx + 0.3 * tan_fovx
    lim_xn = cx / fx + 0.3 * tan_fovx
    lim_yp = (H - cy) / fy + 0.3 * tan_fovy
    lim_yn = cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z
    tx = z * min(lim_xp, max(-lim_xn, x * rz))
    ty = z * min(lim_yp, max(-lim_yn, y * rz))
    return tx, ty, lim_xp, lim_xn, lim_yp, lim_yn


# --------------------------------------------------------------------------------------------------------
# projection
# --------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _project_fwd_range(
    i0,
    i1,
    means,
    quats,
    scales,
    opac,
    has_opac,
    viewmats,
    Ks,
    W,
    H,
    eps2d,
    near,
    far,
    radii,
    means2d,
    depths,
    conics,
):
    """Project Gaussians i0..i1-1 on every camera (serial; see :func:`_project_fwd`)."""
    C = viewmats.shape[0]
    for i in range(i0, i1):
        Rq, M, cov = _covar_world(quats, scales, i)
        mx, my, mz = np.float64(means[i, 0]), np.float64(means[i, 1]), np.float64(means[i, 2])
        extend = _EXTENT
        visible_op = True
        if has_opac:
            op = np.float64(opac[i])
            if op < 1.0 / 255.0:
                visible_op = False
            else:
                extend = min(_EXTENT, math.sqrt(2.0 * math.log(op * 255.0)))
        for c in range(C):
            radii[c, i, 0] = 0
            radii[c, i, 1] = 0
            means2d[c, i, 0] = 0.0
            means2d[c, i, 1] = 0.0
            conics[c, i, 0] = 0.0
            conics[c, i, 1] = 0.0
            conics[c, i, 2] = 0.0
            R, t = _view(viewmats, c)
            x = R[0] * mx + R[1] * my + R[2] * mz + t[0]
            y = R[3] * mx + R[4] * my + R[5] * mz + t[1]
            z = R[6] * mx + R[7] * my + R[8] * mz + t[2]
            depths[c, i] = z
            if not (z >= near and z <= far):
                continue
            fx, fy = np.float64(Ks[c, 0, 0]), np.float64(Ks[c, 1, 1])
            cx, cy = np.float64(Ks[c, 0, 2]), np.float64(Ks[c, 1, 2])
            u = fx * x / z + cx
            v = fy * y / z + cy
            means2d[c, i, 0] = u
            means2d[c, i, 1] = v
            covc = _mm(_mm(R, cov), _tr(R))
            tx, ty, _a, _b, _c, _d = _jacobian(x, y, z, fx, fy, cx, cy, W, H)
            rz = 1.0 / z
            j00 = fx * rz
            j02 = -fx * tx * rz * rz
            j11 = fy * rz
            j12 = -fy * ty * rz * rz
            # cov2d = J covc J^T with J = [[j00, 0, j02], [0, j11, j12]]
            a0 = j00 * covc[0] + j02 * covc[6]
            a1 = j00 * covc[1] + j02 * covc[7]
            a2 = j00 * covc[2] + j02 * covc[8]
            b1 = j11 * covc[4] + j12 * covc[7]
            b2 = j11 * covc[5] + j12 * covc[8]
            s00 = a0 * j00 + a2 * j02 + eps2d
            s01 = a1 * j11 + a2 * j12
            s11 = b1 * j11 + b2 * j12 + eps2d
            det = s00 * s11 - s01 * s01
            if not det > 0.0:
                continue
            conics[c, i, 0] = s11 / det
            conics[c, i, 1] = -s01 / det
            conics[c, i, 2] = s00 / det
            if not visible_op:
                continue
            rx = math.ceil(extend * math.sqrt(s00))
            ry = math.ceil(extend * math.sqrt(s11))
            if rx <= 0.0 and ry <= 0.0:
                continue
            if u + rx <= 0.0 or u - rx >= W or v + ry <= 0.0 or v - ry >= H:
                continue
            radii[c, i, 0] = np.int32(rx)
            radii[c, i, 1] = np.int32(ry)


@njit(parallel=True, cache=True)
def _project_fwd(
    nchunks,
    means,
    quats,
    scales,
    opac,
    has_opac,
    viewmats,
    Ks,
    W,
    H,
    eps2d,
    near,
    far,
    radii,
    means2d,
    depths,
    conics,
):
    N = means.shape[0]
    chunk = (N + nchunks - 1) // nchunks
    for k in prange(nchunks):
        _project_fwd_range(
            k * chunk,
            min(N, (k + 1) * chunk),
            means,
            quats,
            scales,
            opac,
            has_opac,
            viewmats,
            Ks,
            W,
            H,
            eps2d,
            near,
            far,
            radii,
            means2d,
            depths,
            conics,
        )


@njit(cache=True)
def _project_bwd_range(
    k,
    i0,
    i1,
    means,
    quats,
    scales,
    viewmats,
    Ks,
    W,
    H,
    radii,
    conics,
    v_means2d,
    v_depths,
    v_conics,
    v_means,
    v_quats,
    v_scales,
    v_view_parts,
):
    """Gradients of Gaussians i0..i1-1 (serial); the viewmat part goes to ``v_view_parts[k]``."""
    C = viewmats.shape[0]
    for i in range(i0, i1):
        Rq, M, cov = _covar_world(quats, scales, i)
        mx, my, mz = np.float64(means[i, 0]), np.float64(means[i, 1]), np.float64(means[i, 2])
        gmx = 0.0
        gmy = 0.0
        gmz = 0.0
        vcov = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        any_cam = False
        for c in range(C):
            if radii[c, i, 0] <= 0 or radii[c, i, 1] <= 0:
                continue
            any_cam = True
            R, t = _view(viewmats, c)
            x = R[0] * mx + R[1] * my + R[2] * mz + t[0]
            y = R[3] * mx + R[4] * my + R[5] * mz + t[1]
            z = R[6] * mx + R[7] * my + R[8] * mz + t[2]
            fx, fy = np.float64(Ks[c, 0, 0]), np.float64(Ks[c, 1, 1])
            cx, cy = np.float64(Ks[c, 0, 2]), np.float64(Ks[c, 1, 2])
            # d conic -> d cov2d: V = -P G P, G symmetric with the off-diagonal split in halves
            pa, pb, pc = (
                np.float64(conics[c, i, 0]),
                np.float64(conics[c, i, 1]),
                np.float64(conics[c, i, 2]),
            )
            ga, gb, gc = (
                np.float64(v_conics[c, i, 0]),
                0.5 * np.float64(v_conics[c, i, 1]),
                np.float64(v_conics[c, i, 2]),
            )
            # G P
            q00 = ga * pa + gb * pb
            q01 = ga * pb + gb * pc
            q10 = gb * pa + gc * pb
            q11 = gb * pb + gc * pc
            v00 = -(pa * q00 + pb * q10)
            v01 = -(pa * q01 + pb * q11)
            v10 = -(pb * q00 + pc * q10)
            v11 = -(pb * q01 + pc * q11)
            covc = _mm(_mm(R, cov), _tr(R))
            tx, ty, lxp, lxn, lyp, lyn = _jacobian(x, y, z, fx, fy, cx, cy, W, H)
            rz = 1.0 / z
            rz2 = rz * rz
            rz3 = rz2 * rz
            J = (fx * rz, 0.0, -fx * tx * rz2, 0.0, fy * rz, -fy * ty * rz2)
            # v_covc = J^T V J   (3x3)
            # JtV (3x2)
            t00 = J[0] * v00 + J[3] * v10
            t01 = J[0] * v01 + J[3] * v11
            t10 = J[1] * v00 + J[4] * v10
            t11 = J[1] * v01 + J[4] * v11
            t20 = J[2] * v00 + J[5] * v10
            t21 = J[2] * v01 + J[5] * v11
            vcc = (
                t00 * J[0] + t01 * J[3],
                t00 * J[1] + t01 * J[4],
                t00 * J[2] + t01 * J[5],
                t10 * J[0] + t11 * J[3],
                t10 * J[1] + t11 * J[4],
                t10 * J[2] + t11 * J[5],
                t20 * J[0] + t21 * J[3],
                t20 * J[1] + t21 * J[4],
                t20 * J[2] + t21 * J[5],
            )
            # v_J = V J covc^T + V^T J covc   (2x3)
            JC = (
                J[0] * covc[0] + J[1] * covc[3] + J[2] * covc[6],
                J[0] * covc[1] + J[1] * covc[4] + J[2] * covc[7],
                J[0] * covc[2] + J[1] * covc[5] + J[2] * covc[8],
                J[3] * covc[0] + J[4] * covc[3] + J[5] * covc[6],
                J[3] * covc[1] + J[4] * covc[4] + J[5] * covc[7],
                J[3] * covc[2] + J[4] * covc[5] + J[5] * covc[8],
            )  # J covc (covc symmetric)
            s00, s01, s10, s11 = v00 + v00, v01 + v10, v10 + v01, v11 + v11
            vJ00 = s00 * JC[0] + s01 * JC[3]
            vJ02 = s00 * JC[2] + s01 * JC[5]
            vJ11 = s10 * JC[1] + s11 * JC[4]
            vJ12 = s10 * JC[2] + s11 * JC[5]
            gu = np.float64(v_means2d[c, i, 0])
            gv = np.float64(v_means2d[c, i, 1])
            vx = fx * rz * gu
            vy = fy * rz * gv
            vz = -(fx * x * gu + fy * y * gv) * rz2
            if x * rz <= lxp and x * rz >= -lxn:
                vx += -fx * rz2 * vJ02
            else:
                vz += -fx * rz3 * vJ02 * tx
            if y * rz <= lyp and y * rz >= -lyn:
                vy += -fy * rz2 * vJ12
            else:
                vz += -fy * rz3 * vJ12 * ty
            vz += -fx * rz2 * vJ00 - fy * rz2 * vJ11 + 2.0 * fx * tx * rz3 * vJ02 + 2.0 * fy * ty * rz3 * vJ12
            vz += np.float64(v_depths[c, i])
            # mean_c = R m + t
            gmx += R[0] * vx + R[3] * vy + R[6] * vz
            gmy += R[1] * vx + R[4] * vy + R[7] * vz
            gmz += R[2] * vx + R[5] * vy + R[8] * vz
            # covc = R cov R^T: v_R = (vcc + vcc^T) R cov ; v_cov = R^T vcc R
            RC = _mm(R, cov)
            vs = (
                vcc[0] + vcc[0],
                vcc[1] + vcc[3],
                vcc[2] + vcc[6],
                vcc[3] + vcc[1],
                vcc[4] + vcc[4],
                vcc[5] + vcc[7],
                vcc[6] + vcc[2],
                vcc[7] + vcc[5],
                vcc[8] + vcc[8],
            )
            vR = _mm(vs, RC)
            vc_w = _mm(_mm(_tr(R), vcc), R)
            vcov = (
                vcov[0] + vc_w[0],
                vcov[1] + vc_w[1],
                vcov[2] + vc_w[2],
                vcov[3] + vc_w[3],
                vcov[4] + vc_w[4],
                vcov[5] + vc_w[5],
                vcov[6] + vc_w[6],
                vcov[7] + vc_w[7],
                vcov[8] + vc_w[8],
            )
            p = v_view_parts[k, c]
            p[0, 0] += vR[0] + vx * mx
            p[0, 1] += vR[1] + vx * my
            p[0, 2] += vR[2] + vx * mz
            p[1, 0] += vR[3] + vy * mx
            p[1, 1] += vR[4] + vy * my
            p[1, 2] += vR[5] + vy * mz
            p[2, 0] += vR[6] + vz * mx
            p[2, 1] += vR[7] + vz * my
            p[2, 2] += vR[8] + vz * mz
            p[0, 3] += vx
            p[1, 3] += vy
            p[2, 3] += vz
        if not any_cam:
            continue
        v_means[i, 0] = gmx
        v_means[i, 1] = gmy
        v_means[i, 2] = gmz
        # cov = M M^T: v_M = (vcov + vcov^T) M ; M = Rq diag(s)
        vsym = (
            vcov[0] + vcov[0],
            vcov[1] + vcov[3],
            vcov[2] + vcov[6],
            vcov[3] + vcov[1],
            vcov[4] + vcov[4],
            vcov[5] + vcov[7],
            vcov[6] + vcov[2],
            vcov[7] + vcov[5],
            vcov[8] + vcov[8],
        )
        vM = _mm(vsym, M)
        sx, sy, sz = np.float64(scales[i, 0]), np.float64(scales[i, 1]), np.float64(scales[i, 2])
        v_scales[i, 0] = Rq[0] * vM[0] + Rq[3] * vM[3] + Rq[6] * vM[6]
        v_scales[i, 1] = Rq[1] * vM[1] + Rq[4] * vM[4] + Rq[7] * vM[7]
        v_scales[i, 2] = Rq[2] * vM[2] + Rq[5] * vM[5] + Rq[8] * vM[8]
        G = (
            vM[0] * sx,
            vM[1] * sy,
            vM[2] * sz,
            vM[3] * sx,
            vM[4] * sy,
            vM[5] * sz,
            vM[6] * sx,
            vM[7] * sy,
            vM[8] * sz,
        )  # dL/dRq
        w, qx, qy, qz = (
            np.float64(quats[i, 0]),
            np.float64(quats[i, 1]),
            np.float64(quats[i, 2]),
            np.float64(quats[i, 3]),
        )
        v_quats[i, 0] = 2.0 * (-qz * G[1] + qy * G[2] + qz * G[3] - qx * G[5] - qy * G[6] + qx * G[7])
        v_quats[i, 1] = 2.0 * (
            qy * G[1]
            + qz * G[2]
            + qy * G[3]
            - 2.0 * qx * G[4]
            - w * G[5]
            + qz * G[6]
            + w * G[7]
            - 2.0 * qx * G[8]
        )
        v_quats[i, 2] = 2.0 * (
            -2.0 * qy * G[0]
            + qx * G[1]
            + w * G[2]
            + qx * G[3]
            + qz * G[5]
            - w * G[6]
            + qz * G[7]
            - 2.0 * qy * G[8]
        )
        v_quats[i, 3] = 2.0 * (
            -2.0 * qz * G[0]
            - w * G[1]
            + qx * G[2]
            + w * G[3]
            - 2.0 * qz * G[4]
            + qy * G[5]
            + qx * G[6]
            + qy * G[7]
        )


@njit(parallel=True, cache=True)
def _project_bwd(
    means,
    quats,
    scales,
    viewmats,
    Ks,
    W,
    H,
    radii,
    conics,
    v_means2d,
    v_depths,
    v_conics,
    v_means,
    v_quats,
    v_scales,
    v_view_parts,
):
    N = means.shape[0]
    nchunks = v_view_parts.shape[0]
    chunk = (N + nchunks - 1) // nchunks
    for k in prange(nchunks):
        _project_bwd_range(
            k,
            k * chunk,
            min(N, (k + 1) * chunk),
            means,
            quats,
            scales,
            viewmats,
            Ks,
            W,
            H,
            radii,
            conics,
            v_means2d,
            v_depths,
            v_conics,
            v_means,
            v_quats,
            v_scales,
            v_view_parts,
        )


# --------------------------------------------------------------------------------------------------------
# binning: depth sort once per camera, then a counting sort into tiles
# --------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _tile_rect(mx, my, rx, ry, ts, tw, th):
    """gsplat IntersectTile's rectangle [x0, x1) x [y0, y1) of tiles, in float32 as gsplat computes it."""
    tsf = np.float32(ts)
    tcx = np.float32(mx) / tsf
    tcy = np.float32(my) / tsf
    trx = np.float32(rx) / tsf
    try_ = np.float32(ry) / tsf
    lim = np.float32(1e9)  # NaN/Inf/huge centres (bad input past the dispatcher) touch no tile
    if not (abs(tcx) < lim and abs(tcy) < lim and trx < lim and try_ < lim):
        return 0, 0, 0, 0
    x0 = min(max(0, math.floor(tcx - trx)), tw)
    y0 = min(max(0, math.floor(tcy - try_)), th)
    x1 = min(max(0, math.ceil(tcx + trx)), tw)
    y1 = min(max(0, math.ceil(tcy + try_)), th)
    return x0, y0, x1, y1


@njit(cache=True)
def _radix_argsort(keys):
    """Stable argsort of non-negative float32 keys (LSD radix sort on their bits; ties keep index order)."""
    n = keys.shape[0]
    bits = keys.view(np.uint32)
    idx = np.arange(n).astype(np.int32)
    tmp = np.empty(n, np.int32)
    count = np.empty(257, np.int64)
    for shift in range(0, 32, 8):
        count[:] = 0
        for j in range(n):
            count[((bits[idx[j]] >> shift) & 255) + 1] += 1
        if count[1:].max() == n:  # all keys share this byte: nothing to do
            continue
        for b in range(256):
            count[b + 1] += count[b]
        for j in range(n):
            g = idx[j]
            d = (bits[g] >> shift) & 255
            tmp[count[d]] = g
            count[d] += 1
        idx, tmp = tmp, idx
    return idx


@njit(cache=True)
def _bin_count(means2d, radii, depths, ts, tw, th, counts, order, nvalid):
    # serial: C is usually 1, and a parallel launch for one iteration only adds a thread hand-off
    C, N = depths.shape
    T = tw * th
    for c in range(C):
        valid = np.empty(N, np.int32)
        nv = 0
        for i in range(N):
            if radii[c, i, 0] > 0 and radii[c, i, 1] > 0:
                x0, y0, x1, y1 = _tile_rect(
                    means2d[c, i, 0], means2d[c, i, 1], radii[c, i, 0], radii[c, i, 1], ts, tw, th
                )
                if x1 > x0 and y1 > y0:
                    valid[nv] = i
                    nv += 1
                    for ty in range(y0, y1):
                        for tx in range(x0, x1):
                            counts[c * T + ty * tw + tx] += 1
        keys = np.empty(nv, np.float32)
        for j in range(nv):
            z = depths[c, valid[j]]
            keys[j] = z if z > 0 else np.float32(0.0)  # culling keeps z >= near > 0
        perm = _radix_argsort(keys)
        for j in range(nv):
            order[c, j] = valid[perm[j]]
        nvalid[c] = nv


@njit(cache=True)
def _bin_fill_part(c, r0, r1, means2d, radii, ts, tw, th, order, nvalid, offsets, bins):
    """Distribute camera c's depth-sorted Gaussians into its tiles of rows r0..r1-1 (serial)."""
    T = tw * th
    cursor = offsets[c * T + r0 * tw : c * T + r1 * tw].copy()
    base = c * T + r0 * tw
    for j in range(nvalid[c]):
        i = order[c, j]
        x0, y0, x1, y1 = _tile_rect(
            means2d[c, i, 0], means2d[c, i, 1], radii[c, i, 0], radii[c, i, 1], ts, tw, th
        )
        y0 = max(y0, r0)
        y1 = min(y1, r1)
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                k = c * T + ty * tw + tx - base
                bins[cursor[k]] = i
                cursor[k] += 1


@njit(parallel=True, cache=True)
def _bin_fill(means2d, radii, ts, tw, th, order, nvalid, offsets, bins, nparts):
    """Distribute the depth-sorted Gaussians into their tiles; bands of tile rows are split among threads."""
    C = order.shape[0]
    rows_per = (th + nparts - 1) // nparts
    for job in prange(C * nparts):
        c = job // nparts
        r0 = (job % nparts) * rows_per
        r1 = min(th, r0 + rows_per)
        if r0 < r1:
            _bin_fill_part(c, r0, r1, means2d, radii, ts, tw, th, order, nvalid, offsets, bins)


@njit(cache=True)
def _bin_fill_serial(means2d, radii, ts, tw, th, order, nvalid, offsets, bins):
    for c in range(order.shape[0]):
        _bin_fill_part(c, 0, th, means2d, radii, ts, tw, th, order, nvalid, offsets, bins)


@njit(cache=True)
def _balance(tiles, cost, nparts):
    """Split the tiles (heaviest first) into ``nparts`` parts of similar total cost, greedily (LPT).

    Numba splits a ``prange`` statically into equal contiguous ranges (``parallel_chunksize`` did not make
    it dynamic here), so a heaviest-first tile list gave one thread all the heavy tiles: 2.7 ms instead of
    1.7 ms for a 128² forward on 2 threads. The kernels run one part per thread instead.

    Returns:
        The tiles reordered part by part (heaviest first within a part) and the parts' starts [nparts + 1].
    """
    nt = tiles.shape[0]
    load = np.zeros(nparts, np.int64)
    size = np.zeros(nparts, np.int64)
    part = np.empty(nt, np.int64)
    for q in range(nt):
        b = np.argmin(load)
        part[q] = b
        load[b] += cost[q]
        size[b] += 1
    starts = np.zeros(nparts + 1, np.int64)
    starts[1:] = np.cumsum(size)
    cursor = starts[:-1].copy()
    out = np.empty_like(tiles)
    for q in range(nt):
        b = part[q]
        out[cursor[b]] = tiles[q]
        cursor[b] += 1
    return out, starts


# --------------------------------------------------------------------------------------------------------
# rasterization
# --------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _gather(means2d, conics, colors, opac, bins, start, n, c, D):
    """Copy a tile's Gaussians (depth order) into contiguous arrays: [n, 8] params and [n, D] colours."""
    par = np.empty((n, 8), np.float32)
    col = np.empty((n, D), np.float32)
    for k in range(n):
        g = bins[start + k]
        a = conics[c, g, 0]
        b = conics[c, g, 1]
        cc = conics[c, g, 2]
        o = opac[c, g]
        par[k, 0] = means2d[c, g, 0]
        par[k, 1] = means2d[c, g, 1]
        par[k, 2] = _HALF * a
        par[k, 3] = b
        par[k, 4] = _HALF * cc
        par[k, 5] = o
        # row skip: min over x of sigma at vertical offset dy is kk*dy^2 (kk = (c - b^2/a)/2); the row is
        # unreachable when kk*dy^2 > ln(255*o) (+ margin), i.e. alpha < 1/255 on the whole row.
        kk = np.float32(0.0)
        if a > 0:
            kk = _HALF * (cc - b * b / a)
            if not kk > 0:
                kk = np.float32(0.0)
        par[k, 6] = kk
        if o > 0:
            par[k, 7] = np.float32(math.log(np.float64(o) * 255.0) + _ROW_SKIP_MARGIN)
        else:
            par[k, 7] = np.float32(-1.0)
        for d in range(D):
            col[k, d] = colors[c, g, d]
    return par, col


@njit(inline="always", cache=True, fastmath=_FM)
def _row_span(par, k, top, hrow):
    """Tile rows ``lo..hi`` (inclusive; empty when hi < lo) that Gaussian k can reach.

    The row-skip test ``kk dy^2 > ln(255 o)`` (see :func:`_gather`) is convex in the row offset dy, so the
    rows that pass it form an interval, solved once per Gaussian and padded so that it only errs on the
    inclusive side (an extra row costs time, never accuracy: its alphas are below 1/255). ``top`` is the
    first row's pixel centre.
    """
    kk = par[k, 6]
    thr = par[k, 7]
    if thr < _F0:
        return 0, -1
    lo = 0
    hi = hrow - 1
    if kk > _F0:
        h = np.float32(math.sqrt(thr / kk)) * np.float32(1.0001) + np.float32(1e-3)
        my = par[k, 1] - top
        lo = max(lo, math.ceil(max(my - h, np.float32(-1.0))))  # clamped first: h may be huge
        hi = min(hi, math.floor(min(my + h, np.float32(hrow))))
    return lo, hi


@njit(parallel=True, cache=True, fastmath=_FM)
def _raster_fwd(
    means2d,
    conics,
    colors,
    opac,
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
):
    C, N, D = colors.shape
    T = (offsets.shape[0] - 1) // C
    L = _LANES
    nseg = (ts + L - 1) // L
    for part in prange(starts.shape[0] - 1):  # one part per thread (see _balance)
        for q in range(starts[part], starts[part + 1]):
            tid = tiles[q]
            c = tid // T
            tile = tid - c * T
            ty = tile // tw
            tx = tile - ty * tw
            start = offsets[tid]
            n = offsets[tid + 1] - start
            par, col = _gather(means2d, conics, colors, opac, bins, start, n, c, D)
            x0 = tx * ts
            y0 = ty * ts
            xend = min(x0 + ts, W)
            hrow = min(ts, H - y0)
            top = np.float32(y0) + _HALF
            pxs = np.empty(L, np.float32)
            wgt = np.empty(L, np.float32)
            # per-row state of one 16-pixel segment of every tile row
            Tr = np.empty((hrow, L), np.float32)
            act = np.empty((hrow, L), np.float32)
            lastf = np.empty((hrow, L), np.float32)
            acc = np.empty((hrow, D, L), np.float32)
            done = np.empty(hrow, np.bool_)
            for seg in range(nseg):  # 16-pixel segments of the tile rows (one for 16x16 tiles)
                xs = x0 + seg * L
                if xs >= xend:
                    break
                nl = min(L, xend - xs)
                for p in range(L):
                    pxs[p] = np.float32(xs + p) + _HALF
                for r in range(hrow):
                    done[r] = False
                    for p in range(L):
                        Tr[r, p] = _F1
                        act[r, p] = _F1 if p < nl else _F0
                        lastf[r, p] = np.float32(-1.0)
                acc[:, :, :] = _F0
                ndone = 0
                # Gaussian-major: each Gaussian visits only the rows it can reach, in depth order per row
                for k in range(n):
                    lo, hi = _row_span(par, k, top, hrow)
                    kf = np.float32(k)
                    mx = par[k, 0]
                    ha = par[k, 2]
                    o = par[k, 5]
                    for r in range(lo, hi + 1):
                        if done[r]:
                            continue
                        dy = par[k, 1] - (top + np.float32(r))
                        bdy = par[k, 3] * dy
                        hcdy2 = par[k, 4] * dy * dy
                        nact = _F0
                        for p in range(L):  # branch-free, float-only: LLVM vectorises this
                            dx = mx - pxs[p]
                            sigma = (ha * dx + bdy) * dx + hcdy2
                            alpha = min(_ALPHA_MAX, o * _exp_neg(max(sigma, _F0)))
                            t0 = Tr[r, p]
                            nT = t0 * (_F1 - alpha)
                            a0 = act[r, p]
                            ok = (sigma >= _F0) & (alpha >= _ALPHA_MIN) & (a0 > _F0)
                            cm = _F1 if ok & (nT > _T_MIN) else _F0  # contributes
                            sm = _F1 if ok & (nT <= _T_MIN) else _F0  # stops here (exclusive)
                            wgt[p] = alpha * t0 * cm
                            Tr[r, p] = t0 * (_F1 - alpha * cm)
                            lastf[r, p] = max(lastf[r, p], kf * cm - (_F1 - cm))
                            a1 = a0 * (_F1 - sm)
                            act[r, p] = a1
                            nact += a1
                        for d in range(D):
                            cd = col[k, d]
                            for p in range(L):
                                acc[r, d, p] += wgt[p] * cd
                        if nact == _F0:  # every pixel of this row segment has stopped
                            done[r] = True
                            ndone += 1
                    if ndone == hrow:
                        break
                for r in range(hrow):
                    y = y0 + r
                    for p in range(nl):
                        x = xs + p
                        t = Tr[r, p]
                        for d in range(D):
                            out_col[c, y, x, d] = acc[r, d, p] + t * bg[c, d]
                        out_alpha[c, y, x, 0] = _F1 - t
                        out_T[c, y, x] = t
                        out_last[c, y, x] = np.int32(lastf[r, p])


@njit(parallel=True, cache=True, fastmath=_FM)
def _raster_bwd(
    means2d,
    conics,
    colors,
    opac,
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
    v_col,
    v_alpha,
    gbuf,
):
    C, N, D = colors.shape
    T = (offsets.shape[0] - 1) // C
    L = _LANES
    nseg = (ts + L - 1) // L
    nthr = gbuf.shape[0]
    for part in prange(starts.shape[0] - 1):  # one part per thread (see _balance)
        for q in range(starts[part], starts[part + 1]):
            thr = numba.get_thread_id() % nthr
            tid = tiles[q]
            c = tid // T
            tile = tid - c * T
            ty = tile // tw
            tx = tile - ty * tw
            start = offsets[tid]
            n = offsets[tid + 1] - start
            par, col = _gather(means2d, conics, colors, opac, bins, start, n, c, D)
            tg = np.zeros((n, 6 + D), np.float32)
            x0 = tx * ts
            y0 = ty * ts
            xend = min(x0 + ts, W)
            hrow = min(ts, H - y0)
            top = np.float32(y0) + _HALF
            pxs = np.empty(L, np.float32)
            # per-row state of one 16-pixel segment of every tile row
            Tc = np.empty((hrow, L), np.float32)  # transmittance behind the current Gaussian
            lastf = np.empty((hrow, L), np.float32)
            vc = np.empty((hrow, D, L), np.float32)
            vbase = np.empty((hrow, L), np.float32)
            buf = np.empty((hrow, D, L), np.float32)  # colour accumulated behind the current Gaussian
            kmaxr = np.empty(hrow, np.int64)
            # per-lane scratch of one Gaussian on one row
            dxa = np.empty(L, np.float32)
            visa = np.empty(L, np.float32)
            raa = np.empty(L, np.float32)
            faca = np.empty(L, np.float32)
            msk = np.empty(L, np.float32)
            vac = np.empty(L, np.float32)
            for seg in range(nseg):
                xs = x0 + seg * L
                if xs >= xend:
                    break
                nl = min(L, xend - xs)
                for p in range(L):
                    pxs[p] = np.float32(xs + p) + _HALF
                kmax = -1
                for r in range(hrow):
                    y = y0 + r
                    km = -1
                    for p in range(L):
                        if p < nl:
                            x = xs + p
                            tf = out_T[c, y, x]
                            lp = out_last[c, y, x]
                            km = max(km, lp)
                            lastf[r, p] = np.float32(lp)
                            vb = _F0
                            for d in range(D):
                                g = v_col[c, y, x, d]
                                vc[r, d, p] = g
                                vb += g * bg[c, d]
                            # alpha output and background both scale with T_final
                            vbase[r, p] = tf * (v_alpha[c, y, x, 0] - vb)
                            Tc[r, p] = tf
                        else:
                            lastf[r, p] = np.float32(-1.0)
                            for d in range(D):
                                vc[r, d, p] = _F0
                            vbase[r, p] = _F0
                            Tc[r, p] = _F1
                    kmaxr[r] = km
                    kmax = max(kmax, km)
                buf[:, :, :] = _F0
                # Gaussian-major, back to front: each Gaussian visits only the rows it can reach
                for k in range(kmax, -1, -1):
                    lo, hi = _row_span(par, k, top, hrow)
                    kf = np.float32(k)
                    mx = par[k, 0]
                    ha = par[k, 2]
                    b = par[k, 3]
                    hc = par[k, 4]
                    o = par[k, 5]
                    a_ = ha + ha
                    c_ = hc + hc
                    for r in range(lo, hi + 1):
                        if k > kmaxr[r]:
                            continue
                        dy = par[k, 1] - (top + np.float32(r))
                        bdy = b * dy
                        hcdy2 = hc * dy * dy
                        cnt = _F0
                        for p in range(L):
                            dx = mx - pxs[p]
                            sigma = (ha * dx + bdy) * dx + hcdy2
                            vis = _exp_neg(max(sigma, _F0))
                            alpha = min(_ALPHA_MAX, o * vis)
                            m = _F1 if (sigma >= _F0) & (alpha >= _ALPHA_MIN) & (kf <= lastf[r, p]) else _F0
                            ra = _F1 / (_F1 - alpha)
                            t1 = Tc[r, p] * (ra * m + (_F1 - m))  # T before this Gaussian
                            Tc[r, p] = t1
                            faca[p] = alpha * t1 * m
                            # no gradient through the clamp
                            msk[p] = m * (_F1 if o * vis <= _ALPHA_MAX else _F0)
                            dxa[p] = dx
                            visa[p] = vis
                            raa[p] = ra
                            vac[p] = vbase[r, p] * ra
                            cnt += m
                        if cnt == _F0:
                            continue
                        for d in range(D):
                            cd = col[k, d]
                            s = _F0
                            for p in range(L):
                                g = vc[r, d, p]
                                vac[p] += (cd * Tc[r, p] - buf[r, d, p] * raa[p]) * g
                                s += faca[p] * g
                                buf[r, d, p] += cd * faca[p]
                            tg[k, 6 + d] += s
                        sa = _F0
                        sx = _F0
                        s0 = _F0
                        for p in range(L):
                            dx = dxa[p]
                            mv = msk[p] * visa[p] * vac[p]  # d loss / d sigma = -o * mv
                            sa += mv * dx * dx
                            sx += mv * dx
                            s0 += mv
                        # with v_sigma = -o * mv summed over the row's pixels:
                        # v_conic = (1/2 v_sigma dx^2, v_sigma dx dy, 1/2 v_sigma dy^2),
                        # v_mean2d = v_sigma * (a dx + b dy, b dx + c dy)
                        tg[k, 0] += -o * (a_ * sx + b * dy * s0)
                        tg[k, 1] += -o * (b * sx + c_ * dy * s0)
                        tg[k, 2] += -o * _HALF * sa
                        tg[k, 3] += -o * sx * dy
                        tg[k, 4] += -o * _HALF * s0 * dy * dy
                        tg[k, 5] += s0
            row = gbuf[thr]
            base = c * N
            for k in range(n):
                g = base + bins[start + k]
                for j in range(6 + D):
                    row[g, j] += tg[k, j]


# --------------------------------------------------------------------------------------------------------
# torch glue
# --------------------------------------------------------------------------------------------------------

# Numba's workqueue layer aborts the process if two Python threads launch parallel kernels at once (e.g. a
# viser callback rendering while a training loop runs); kernel launches are serialised by this lock.
_KERNEL_LOCK = threading.RLock()


def choose_threading_layer() -> None:
    """Prefer Numba's ``tbb`` threading layer, then ``workqueue``; never OpenMP unless the user chose it.

    Measured here (2 cores, a 5000-Gaussian 128² render, forward + backward, median): ``tbb`` 7.4 ms,
    ``workqueue`` 11.5 ms (its caller thread sleeps while two workers run, and hand-offs are slow), and
    ``omp`` 7.6 ms but it made torch's own single-threaded ops 2x slower for the rest of the process (two
    OpenMP runtimes), so training was slowest with it. ``tbb`` comes from the PyPI package of that name (a
    dependency on x86-64 Linux and Windows); without it Numba falls back to ``workqueue``.

    The layer is fixed by Numba's first parallel launch, and ``numba.get_num_threads()`` and
    ``set_num_threads()`` launch it too: code that calls those before the first render should call this
    function first. Set ``NUMBA_THREADING_LAYER`` to override. Called by :func:`project_cpu` and
    :func:`rasterize_cpu`.
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    try:
        numba.threading_layer()  # raises ValueError until the first parallel launch
    except ValueError:
        numba.config.THREADING_LAYER = "default"
        numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]


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
        nthr = numba.get_num_threads()
        gbuf = np.zeros((nthr, C * N, 6 + D), np.float32)
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
        for t in range(1, nthr):
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
