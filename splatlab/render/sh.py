"""Real spherical harmonics up to degree 3, in the basis order of 3DGS and gsplat.

A Gaussian's colour seen from direction ``d`` is ``sum_k coeffs[k] * Y_k(d) + 0.5``, clamped at 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel for a degree: 1, 4, 9 or 16."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """SH basis functions evaluated at unit directions.

    Args:
        degree: The highest degree, 0 to 3.
        dirs: Unit view directions. [..., 3]

    Returns:
        The basis values. [..., (degree + 1)^2]
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"sh degree must be in 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z, _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy), _C3[1] * x * y * z, _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colours from SH coefficients seen along (unnormalised) directions, as gsplat does it.

    Args:
        degree: Degree to use; coefficients beyond it are ignored.
        dirs: View directions, Gaussian centre minus camera centre. [..., 3]
        coeffs: SH coefficients; leading dims broadcast against those of ``dirs``. [..., K, 3]

    Returns:
        Colours ``max(sh + 0.5, 0)``. [..., 3]
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"sh_degree={degree} needs {k} SH coefficients, colors has {coeffs.shape[-2]}")
    basis = sh_basis(degree, torch.nn.functional.normalize(dirs, dim=-1))
    # one small matrix product per Gaussian (batch dims broadcast: coeffs [N, K, 3] serve every camera)
    colors = torch.einsum("...k,...kd->...d", basis, coeffs[..., :k, :])
    return torch.clamp_min(colors + 0.5, 0.0)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient that shows colour ``rgb`` from every direction. [..., 3]"""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh0: Tensor) -> Tensor:
    """The colour of a degree-0 coefficient. [..., 3]"""
    return sh0 * SH_C0 + 0.5
