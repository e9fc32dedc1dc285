"""View-dependent colour (SH) of the CPU backend: one Numba pass per Gaussian and camera, analytic backward.

The same numbers as :func:`splatlab.render.sh.eval_sh` (``max(Σ_k Y_k(d̂)·c_k + 0.5, 0)`` with ``d̂`` the
normalised view direction), computed without the dozen [C, N, K] temporaries of the torch version and its
batched 1×K by K×3 products: in a 128² training step or pose step these cost more than the projection.
The backward gives the gradient to the coefficients and to the (unnormalised) directions, hence to the means
and the camera centres, as the torch version's autograd does; ``tests/test_render_cpu.py`` checks both.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from splatlab.render.cpu import _KERNEL_LOCK, _SERIAL_BELOW
from splatlab.render.sh import _C1, _C2, _C3, SH_C0, num_sh_bases
from splatlab.threads import choose_threading_layer

__all__ = ["eval_sh_cpu"]


@njit(inline="always", cache=True)
def _basis(degree, x, y, z, b):
    """The (degree + 1)² basis values at the unit direction (x, y, z), into ``b``."""
    b[0] = SH_C0
    if degree >= 1:
        b[1] = -_C1 * y
        b[2] = _C1 * z
        b[3] = -_C1 * x
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        b[4] = _C2[0] * x * y
        b[5] = _C2[1] * y * z
        b[6] = _C2[2] * (2.0 * zz - xx - yy)
        b[7] = _C2[3] * x * z
        b[8] = _C2[4] * (xx - yy)
    if degree >= 3:
        xx, yy, zz = x * x, y * y, z * z
        b[9] = _C3[0] * y * (3.0 * xx - yy)
        b[10] = _C3[1] * x * y * z
        b[11] = _C3[2] * y * (4.0 * zz - xx - yy)
        b[12] = _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy)
        b[13] = _C3[4] * x * (4.0 * zz - xx - yy)
        b[14] = _C3[5] * z * (xx - yy)
        b[15] = _C3[6] * x * (xx - 3.0 * yy)


@njit(inline="always", cache=True)
def _basis_vjp(degree, x, y, z, vb):
    """Σ_k vb[k] ∂Y_k/∂(x, y, z) at the unit direction (x, y, z)."""
    gx = gy = gz = 0.0
    if degree >= 1:
        gx += -_C1 * vb[3]
        gy += -_C1 * vb[1]
        gz += _C1 * vb[2]
    if degree >= 2:
        gx += _C2[0] * y * vb[4] - 2.0 * _C2[2] * x * vb[6] + _C2[3] * z * vb[7] + 2.0 * _C2[4] * x * vb[8]
        gy += _C2[0] * x * vb[4] + _C2[1] * z * vb[5] - 2.0 * _C2[2] * y * vb[6] - 2.0 * _C2[4] * y * vb[8]
        gz += _C2[1] * y * vb[5] + 4.0 * _C2[2] * z * vb[6] + _C2[3] * x * vb[7]
    if degree >= 3:
        xx, yy, zz = x * x, y * y, z * z
        gx += (
            _C3[0] * 6.0 * x * y * vb[9]
            + _C3[1] * y * z * vb[10]
            - _C3[2] * 2.0 * x * y * vb[11]
            - _C3[3] * 6.0 * x * z * vb[12]
            + _C3[4] * (4.0 * zz - 3.0 * xx - yy) * vb[13]
            + _C3[5] * 2.0 * x * z * vb[14]
            + _C3[6] * 3.0 * (xx - yy) * vb[15]
        )
        gy += (
            _C3[0] * 3.0 * (xx - yy) * vb[9]
            + _C3[1] * x * z * vb[10]
            + _C3[2] * (4.0 * zz - xx - 3.0 * yy) * vb[11]
            - _C3[3] * 6.0 * y * z * vb[12]
            - _C3[4] * 2.0 * x * y * vb[13]
            - _C3[5] * 2.0 * y * z * vb[14]
            - _C3[6] * 6.0 * x * y * vb[15]
        )
        gz += (
            _C3[1] * x * y * vb[10]
            + _C3[2] * 8.0 * y * z * vb[11]
            + _C3[3] * (6.0 * zz - 3.0 * xx - 3.0 * yy) * vb[12]
            + _C3[4] * 8.0 * x * z * vb[13]
            + _C3[5] * (xx - yy) * vb[14]
        )
    return gx, gy, gz


@njit(inline="always", cache=True)
def _unit(dirs, c, n):
    dx, dy, dz = np.float64(dirs[c, n, 0]), np.float64(dirs[c, n, 1]), np.float64(dirs[c, n, 2])
    norm = max(np.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)  # F.normalize's eps
    return dx / norm, dy / norm, dz / norm, norm


@njit(cache=True)
def _sh_fwd_range(degree, n0, n1, dirs, coeffs, out):
    C = dirs.shape[0]
    K = (degree + 1) * (degree + 1)
    b = np.empty(16)
    for n in range(n0, n1):
        for c in range(C):
            x, y, z, _ = _unit(dirs, c, n)
            _basis(degree, x, y, z, b)
            for d in range(3):
                s = 0.5
                for k in range(K):
                    s += b[k] * coeffs[n, k, d]
                out[c, n, d] = max(s, 0.0)


@njit(cache=True)
def _sh_bwd_range(degree, n0, n1, dirs, coeffs, out, v_out, v_dirs, v_coeffs):
    C = dirs.shape[0]
    K = (degree + 1) * (degree + 1)
    b = np.empty(16)
    vb = np.zeros(16)
    for n in range(n0, n1):
        for c in range(C):
            x, y, z, norm = _unit(dirs, c, n)
            _basis(degree, x, y, z, b)
            for k in range(K):
                vb[k] = 0.0
            for d in range(3):
                g = np.float64(v_out[c, n, d]) if out[c, n, d] > 0.0 else 0.0  # no gradient through the clamp
                for k in range(K):
                    v_coeffs[n, k, d] += b[k] * g
                    vb[k] += coeffs[n, k, d] * g
            gx, gy, gz = _basis_vjp(degree, x, y, z, vb)
            dot = gx * x + gy * y + gz * z  # through the normalisation: (I - d̂ d̂ᵀ) g / |d|
            v_dirs[c, n, 0] = (gx - dot * x) / norm
            v_dirs[c, n, 1] = (gy - dot * y) / norm
            v_dirs[c, n, 2] = (gz - dot * z) / norm


@njit(parallel=True, cache=True)
def _sh_fwd(degree, nchunks, dirs, coeffs, out):
    N = dirs.shape[1]
    chunk = (N + nchunks - 1) // nchunks
    for k in prange(nchunks):
        _sh_fwd_range(degree, k * chunk, min(N, (k + 1) * chunk), dirs, coeffs, out)


@njit(parallel=True, cache=True)
def _sh_bwd(degree, nchunks, dirs, coeffs, out, v_out, v_dirs, v_coeffs):
    N = dirs.shape[1]
    chunk = (N + nchunks - 1) // nchunks
    for k in prange(nchunks):
        _sh_bwd_range(degree, k * chunk, min(N, (k + 1) * chunk), dirs, coeffs, out, v_out, v_dirs, v_coeffs)


def _launch(serial, parallel, degree, n, *arrays) -> None:
    """One kernel call over ``n`` Gaussians: serial when small, else chunked."""
    choose_threading_layer()
    with _KERNEL_LOCK:
        if n * arrays[0].shape[0] < _SERIAL_BELOW:
            serial(degree, 0, n, *arrays)
        else:
            parallel(degree, max(1, min(4 * numba.get_num_threads(), n)), *arrays)


class _EvalSH(torch.autograd.Function):
    @staticmethod
    def forward(ctx, degree, dirs, coeffs):
        d = dirs.detach().contiguous().numpy()
        co = coeffs.detach().contiguous().numpy()
        out = np.empty(d.shape, d.dtype)
        _launch(_sh_fwd_range, _sh_fwd, degree, d.shape[1], d, co, out)
        ctx.degree = degree
        ctx.save_for_backward(dirs, coeffs)
        ctx.out = out
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v_out):
        dirs, coeffs = ctx.saved_tensors
        d = dirs.detach().contiguous().numpy()
        co = coeffs.detach().contiguous().numpy()
        v_dirs = np.empty(d.shape, d.dtype)
        v_coeffs = np.zeros(co.shape, co.dtype)
        v = v_out.to(dirs.dtype).contiguous().numpy()
        _launch(_sh_bwd_range, _sh_bwd, ctx.degree, d.shape[1], d, co, ctx.out, v, v_dirs, v_coeffs)
        need = ctx.needs_input_grad
        return (
            None,
            torch.from_numpy(v_dirs) if need[1] else None,
            torch.from_numpy(v_coeffs) if need[2] else None,
        )


def eval_sh_cpu(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """:func:`splatlab.render.sh.eval_sh` for CPU tensors: the coefficients shared by every camera.

    Args:
        degree: Degree to use, 0 to 3; coefficients beyond it are ignored.
        dirs: View directions, Gaussian centre minus camera centre. [C, N, 3]
        coeffs: SH coefficients of every Gaussian. [N, K, 3]

    Returns:
        Colours ``max(sh + 0.5, 0)``, differentiable in ``dirs`` and ``coeffs``. [C, N, 3]
    """
    k = num_sh_bases(degree)
    if not 0 <= degree <= 3:
        raise ValueError(f"sh degree must be in 0..3, got {degree}")
    if coeffs.shape[-2] < k:
        raise ValueError(f"sh_degree={degree} needs {k} SH coefficients, colors has {coeffs.shape[-2]}")
    if dirs.ndim != 3 or coeffs.ndim != 3 or dirs.shape[1] != coeffs.shape[0] or dirs.shape[2] != 3:
        raise ValueError(
            f"need dirs [C, N, 3] and coeffs [N, K, 3], got {tuple(dirs.shape)} and {tuple(coeffs.shape)}"
        )
    dtype = torch.promote_types(dirs.dtype, coeffs.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return _EvalSH.apply(degree, dirs.to(dtype), coeffs[:, :k, :].to(dtype))
