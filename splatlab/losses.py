"""Photometric losses shared by training and pose refinement.

The 3DGS / SplatPose objective is ``0.8 * L1 + 0.2 * (1 - SSIM)`` on images in [0, 1]. SSIM comes from
``pytorch_msssim`` (11x11 Gaussian window, sigma 1.5, data range 1), the maintained implementation, so
training and pose refinement agree on the exact same number.
"""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _ms_ssim

__all__ = ["ssim", "photometric_loss", "psnr", "SSIM_WEIGHT"]

#: Weight of the (1 - SSIM) term; L1 gets ``1 - SSIM_WEIGHT``.
SSIM_WEIGHT = 0.2


def _to_nchw(x: torch.Tensor, name: str) -> torch.Tensor:
    """[H,W,3] or [B,H,W,3] channels-last -> [B,3,H,W] for pytorch_msssim."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must be [H, W, 3] or [B, H, W, 3], got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def ssim(pred: torch.Tensor, target: torch.Tensor, *, reduce: bool = True) -> torch.Tensor:
    """Structural similarity with an 11x11 Gaussian window (sigma 1.5), data range 1.

    Args:
        pred: Rendered image(s) in [0, 1], channels last. [H, W, 3] or [B, H, W, 3]
        target: Reference image(s), same shape as ``pred``. [H, W, 3] or [B, H, W, 3]
        reduce: If True return the mean over the batch (scalar), else one value per image. [] or [B]

    Images must be at least 11 pixels on each side (the window size).
    """
    _check_pair(pred, target)
    p, t = _to_nchw(pred, "pred"), _to_nchw(target, "target")
    if min(p.shape[-2:]) < 11:
        raise ValueError(f"ssim needs images of at least 11x11 pixels, got {tuple(p.shape[-2:])}")
    return _ms_ssim(p, t, data_range=1.0, size_average=reduce, win_size=11, win_sigma=1.5)


def photometric_loss(
    pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = SSIM_WEIGHT
) -> torch.Tensor:
    """``(1 - w) * L1 + w * (1 - SSIM)``, w = 0.2 by default (3DGS / SplatPose).

    Args:
        pred: Rendered image(s) in [0, 1], channels last. [H, W, 3] or [B, H, W, 3]
        target: Reference image(s), same shape as ``pred``. [H, W, 3] or [B, H, W, 3]
        ssim_weight: Weight of the structural term in [0, 1]. []

    Returns:
        The scalar loss, averaged over the batch. []
    """
    _check_pair(pred, target)
    l1 = (pred - target).abs().mean()
    if ssim_weight == 0.0:
        return l1
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim(pred, target))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (MSE over all pixels and channels).

    Args:
        pred: Image(s) in [0, 1]. [..., H, W, 3]
        target: Same shape as ``pred``. [..., H, W, 3]

    Returns:
        Scalar PSNR; ``inf`` when the images are identical. []
    """
    _check_pair(pred, target)
    mse = ((pred - target) ** 2).mean()
    return -10.0 * torch.log10(mse)
