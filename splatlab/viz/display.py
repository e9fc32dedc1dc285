"""Conversions for display: images to uint8/PNG, anomaly heat overlays, splats and cameras in viser's terms.

Pure functions shared by :mod:`splatlab.viz.viewer` (viser) and :mod:`splatlab.viz.widgets` (ipywidgets).
viser uses OpenCV camera axes for frusta, like splatlab, so a frustum's pose is ``inv(viewmat)``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import Tensor


def splats_to_viser(splats) -> dict[str, np.ndarray]:
    """Our splat parameters as viser's ``add_gaussian_splats`` takes them (sh0 colour, no view dependence).

    Args:
        splats: ``ParameterDict`` (or dict) with means, quats, log scales, logit opacities and sh0. [N, ...]

    Returns:
        ``centers [N, 3]``, ``covariances [N, 3, 3]``, ``rgbs [N, 3]`` in [0, 1], ``opacities [N, 1]``.
    """
    from splatlab.render.reference import quat_to_rotmat
    from splatlab.render.sh import sh_to_rgb

    missing = [k for k in ("means", "quats", "scales", "opacities", "sh0") if k not in splats]
    if missing:
        raise ValueError(f"splats is missing the keys {missing}")
    with torch.no_grad():
        means = splats["means"].detach().float().cpu()
        if means.ndim != 2 or means.shape[1] != 3:
            raise ValueError(f"splats['means'] must be [N, 3], got {tuple(means.shape)}")
        quats = torch.nn.functional.normalize(splats["quats"].detach().float().cpu(), dim=-1)
        R = quat_to_rotmat(quats)
        s2 = torch.exp(2.0 * splats["scales"].detach().float().cpu())
        cov = (R * s2[:, None, :]) @ R.transpose(-1, -2)  # R diag(s^2) R^T
        rgb = sh_to_rgb(splats["sh0"].detach().float().cpu().reshape(-1, 3)).clamp(0.0, 1.0)
        opacity = torch.sigmoid(splats["opacities"].detach().float().cpu()).reshape(-1, 1)
    return {
        "centers": means.numpy(),
        "covariances": cov.numpy(),
        "rgbs": rgb.numpy(),
        "opacities": opacity.numpy(),
    }


def viewmat_to_pose(viewmat: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A viser node pose (``wxyz``, ``position``) for an OpenCV world→camera matrix. [4, 4] -> ([4], [3])"""
    import viser.transforms as vtf

    v = torch.as_tensor(viewmat, dtype=torch.float64).detach().cpu()
    if v.shape != (4, 4):
        raise ValueError(f"viewmat must be [4, 4], got {tuple(v.shape)}")
    c2w = torch.linalg.inv(v).numpy()
    return vtf.SO3.from_matrix(c2w[:3, :3]).wxyz, c2w[:3, 3].copy()


def frustum_shape(K: Tensor, width: int, height: int) -> tuple[float, float]:
    """Vertical field of view (radians) and aspect (width / height) of a pinhole camera. K: [3, 3]"""
    fy = float(K[1, 1])
    if fy <= 0:
        raise ValueError(f"K[1, 1] must be a positive focal length, got {fy}")
    return 2.0 * math.atan(0.5 * height / fy), width / height


def to_uint8(image, max_side: int | None = None) -> np.ndarray:
    """An RGB float image in [0, 1] as uint8, optionally shrunk (area-averaged) so its longer side fits.

    Args:
        image: RGB image, float in [0, 1] (tensor or array). [H, W, 3]
        max_side: Longest side of the result in pixels; the full size when None.
    """
    img = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).detach().float().cpu()
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got {tuple(img.shape)}")
    h, w = img.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        img = torch.nn.functional.interpolate(
            img.permute(2, 0, 1)[None], size=size, mode="bilinear", antialias=True, align_corners=False
        )[0].permute(1, 2, 0)
    return (img.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


def heat_overlay(image, anomaly_map, alpha: float = 0.5, vmin: float | None = None, vmax: float | None = None,
                 cmap: str = "jet") -> np.ndarray:
    """An image blended with a colour-mapped anomaly map (resized to the image), float in [0, 1].

    Args:
        image: RGB image in [0, 1]. [H, W, 3]
        anomaly_map: Scores, any size; resized bilinearly to the image. [h, w]
        alpha: Weight of the heat map in the blend.
        vmin: Score shown as the coldest colour; the map's minimum when None.
        vmax: Score shown as the hottest colour; the map's maximum when None.
        cmap: A matplotlib colour map name.

    Returns:
        The blended image. [H, W, 3]
    """
    import matplotlib

    img = np.asarray(torch.as_tensor(image).detach().float().cpu(), dtype=np.float32)
    amap = torch.as_tensor(anomaly_map).detach().float().cpu()
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got {tuple(img.shape)}")
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be [H, W], got {tuple(amap.shape)}")
    if tuple(amap.shape) != img.shape[:2]:
        amap = torch.nn.functional.interpolate(amap[None, None], size=img.shape[:2], mode="bilinear",
                                               align_corners=False)[0, 0]
    a = amap.numpy()
    lo = float(a.min()) if vmin is None else float(vmin)
    hi = float(a.max()) if vmax is None else float(vmax)
    norm = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = matplotlib.colormaps[cmap](norm)[..., :3].astype(np.float32)
    return np.clip((1.0 - alpha) * img + alpha * heat, 0.0, 1.0)


def png_bytes(image) -> bytes:
    """PNG encoding of an RGB image, float in [0, 1] or uint8. [H, W, 3]"""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
