"""EWA projection kernels of the CPU backend (Numba), forward and analytic backward; see :mod:`.cpu`.

Each Gaussian is projected in float64 registers (``prange`` over Gaussians, cameras inside), so the backward
needs no atomics; the viewmat gradient is reduced from per-chunk partial sums.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_EXTENT = 3.33  # screen boxes of at most this many sigma (gsplat 1.5.3)


# --------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------


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
    want_params=True,
):
    """Gradients of Gaussians i0..i1-1 (serial); the viewmat part goes to ``v_view_parts[k]``.

    With ``want_params`` False only the viewmat part is computed (pose refinement: the splats are fixed).
    """
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
            if want_params:
                vc_w = _mm(_mm(_tr(R), vcc), R)
            else:
                vc_w = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
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
        if not any_cam or not want_params:
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
    want_params=True,
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
            want_params,
        )
