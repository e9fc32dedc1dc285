"""The readable PyTorch reference of 3D Gaussian splatting: the oracle for the fast CPU kernel.

It follows gsplat 1.5.3's numerics step by step (see the package docstring of ``splatlab.render``), and
autograd provides every gradient. It is slow and memory hungry by design: read it to learn the maths.

Two steps, as in gsplat:

1. :func:`project_torch` – each 3D Gaussian becomes a 2D Gaussian on each camera's image: a centre
   ``means2d``, an inverse covariance ``conics`` and a screen-space ``radii`` box used to find its tiles.
2. :func:`rasterize_torch` – each 16×16 tile blends the Gaussians that touch it, front to back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ALPHA_MAX = 0.999  # gsplat 1.5.3 clamps alpha here (older 3DGS code used 0.99)
ALPHA_MIN = 1.0 / 255.0  # fainter contributions are skipped
T_MIN = 1e-4  # a pixel stops once its transmittance would fall to this
EXTENT = 3.33  # the screen box covers 3.33 sigma at most


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices of unit quaternions (w, x, y, z). [..., 4] -> [..., 3, 3]"""
    w, x, y, z = quats.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


def project_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project 3D Gaussians to 2D Gaussians on every camera (EWA splatting).

    Args:
        means: Centres in world coordinates. [N, 3]
        quats: Unit quaternions, wxyz. [N, 4]
        scales: Standard deviations along the Gaussian's axes (activated). [N, 3]
        opacities: Opacities in [0, 1]; they only tighten the screen box here. [N]
        viewmats: World→camera matrices, OpenCV axes. [C, 4, 4]
        Ks: Intrinsics. [C, 3, 3]
        width: Image width.
        height: Image height.

    Returns:
        ``radii`` int32 [C, N, 2] (0 = culled), ``means2d`` [C, N, 2], ``depths`` [C, N],
        ``conics`` [C, N, 3] = (a, b, c) of the inverse 2D covariance [[a, b], [b, c]].
    """
    # World -> camera.
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    M = quat_to_rotmat(quats) * scales[:, None, :]  # R_q diag(s): [N, 3, 3]
    covars = M @ M.transpose(-1, -2)  # [N, 3, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)  # R cov R^T: [C, N, 3, 3]

    # Perspective projection, linearised at the centre (the Jacobian J of the pinhole map).
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # gsplat clamps x/z and y/z to a little beyond the frustum so that J stays sane off-screen.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.clamp(x / z, min=-(cx / fx + 0.3 * tan_fovx), max=(width - cx) / fx + 0.3 * tan_fovx)
    ty = z * torch.clamp(y / z, min=-(cy / fy + 0.3 * tan_fovy), max=(height - cy) / fy + 0.3 * tan_fovy)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], dim=-1)
    J = J.reshape(z.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # [C, N, 2]

    # The 0.3 px low-pass filter, then the inverse ("conic").
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    # Screen boxes (not differentiable): 3.33 sigma, tightened where the opacity is low.
    with torch.no_grad():
        op = opacities.expand(z.shape)
        extent = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTENT)
        rx = torch.ceil(extent * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c.clamp_min(0)))
        valid = (det > 0) & (z >= near_plane) & (z <= far_plane) & (op >= ALPHA_MIN)
        valid &= (rx > 0) | (ry > 0)
        mx, my = means2d[..., 0], means2d[..., 1]
        valid &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), 0.0).to(torch.int32)
    return radii, means2d, z, conics


def tile_ranges(means2d: Tensor, radii: Tensor, width: int, height: int, tile_size: int = 16) -> Tensor:
    """The rectangle of tiles each 2D Gaussian touches, ``[x0, y0, x1, y1)``. [C, N, 2] -> [C, N, 4]"""
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    centre = means2d.detach() / tile_size
    r = radii.to(centre.dtype) / tile_size
    x0 = torch.floor(centre[..., 0] - r[..., 0]).clamp(0, tiles_x)
    y0 = torch.floor(centre[..., 1] - r[..., 1]).clamp(0, tiles_y)
    x1 = torch.ceil(centre[..., 0] + r[..., 0]).clamp(0, tiles_x)
    y1 = torch.ceil(centre[..., 1] + r[..., 1]).clamp(0, tiles_y)
    ranges = torch.stack([x0, y0, x1, y1], dim=-1).long()
    return torch.where((radii > 0).all(-1, keepdim=True), ranges, 0)


def rasterize_torch(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Alpha-blend projected Gaussians front to back, one 16×16 tile at a time.

    Args:
        means2d: Projected centres in pixels. [C, N, 2]
        conics: Inverse 2D covariances (a, b, c). [C, N, 3]
        colors: Per-camera colours (any number of channels D). [C, N, D]
        opacities: Opacities in [0, 1]. [C, N]
        radii: Screen boxes from the projection; 0 means culled. [C, N, 2]
        depths: Camera-space depths, the blending order. [C, N]
        width: Image width.
        height: Image height.
        background: Colour behind the Gaussians. [C, D]

    Returns:
        ``colors`` [C, H, W, D] and ``alphas`` [C, H, W, 1].
    """
    C, N, D = colors.shape
    ranges = tile_ranges(means2d, radii, width, height, tile_size)
    rows = []
    for cam in range(C):
        order = torch.argsort(depths[cam].detach(), stable=True)  # front to back
        tile_rows = []
        for y0 in range(0, height, tile_size):
            tile_row = []
            for x0 in range(0, width, tile_size):
                tx, ty = x0 // tile_size, y0 // tile_size
                r = ranges[cam, order]
                touches = (r[:, 0] <= tx) & (tx < r[:, 2]) & (r[:, 1] <= ty) & (ty < r[:, 3])
                ids = order[touches]
                tile_row.append(
                    _blend_tile(
                        means2d[cam, ids], conics[cam, ids], colors[cam, ids], opacities[cam, ids],
                        x0, y0, min(tile_size, width - x0), min(tile_size, height - y0),
                    )
                )
            tile_rows.append(torch.cat(tile_row, dim=1))
        rows.append(torch.cat(tile_rows, dim=0))
    image = torch.stack(rows)  # [C, H, W, D + 1]: colour and transmittance
    rgb, transmittance = image[..., :D], image[..., D:]
    if background is not None:
        rgb = rgb + transmittance * background[:, None, None, :]
    return rgb, 1.0 - transmittance


def _blend_tile(
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, x0: int, y0: int, w: int, h: int
) -> Tensor:
    """Blend the depth-sorted Gaussians of one tile. Returns colour and final transmittance [h, w, D+1]."""
    ys, xs = torch.meshgrid(
        torch.arange(y0, y0 + h, dtype=means2d.dtype, device=means2d.device) + 0.5,
        torch.arange(x0, x0 + w, dtype=means2d.dtype, device=means2d.device) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # pixel centres [P, 2]
    d = means2d[None, :, :] - pix[:, None, :]  # [P, G, 2]
    a, b, c = conics.unbind(-1)
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = torch.clamp(opacities * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    # A pixel stops before the Gaussian that would drop its transmittance to T_MIN (and all after it).
    with torch.no_grad():
        keep = torch.cumprod(1.0 - alpha, dim=1) > T_MIN
    alpha = alpha * keep
    T = torch.cumprod(1.0 - alpha, dim=1)  # transmittance after each Gaussian
    T_before = torch.cat([torch.ones_like(T[:, :1]), T[:, :-1]], dim=1)
    rgb = (alpha * T_before) @ colors  # [P, D]
    T_final = T[:, -1:] if T.shape[1] else torch.ones_like(pix[:, :1])
    return torch.cat([rgb, T_final], dim=-1).reshape(h, w, -1)
