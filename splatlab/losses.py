"""Photometric losses shared by training and pose refinement.

The 3DGS / SplatPose objective is ``0.8 * L1 + 0.2 * (1 - SSIM)`` on images in [0, 1]. SSIM is
``pytorch_msssim``'s definition (11x11 Gaussian window, sigma 1.5, data range 1, "valid" windows, the mean of
the map per image and channel), so training and pose refinement agree on the exact same number;
``tests/test_losses.py`` checks value and gradient against ``pytorch_msssim`` itself.

The computation is fused for speed (it was a sixth of a 128² training run on a CPU): the five filtered maps
(the two means, the two second moments and the cross moment) are one pair of 1D depthwise convolutions over
15 channels in channels-last memory (the layout of [B, H, W, 3] images, the fast path of the CPU
convolution), and the gradient is the closed form, three maps filtered back once, instead of autograd
through every step:

    dS/dX = G ⊛ (g ∂S/∂μx) + 2 X · G ⊛ (g ∂S/∂E[x²]) + Y · G ⊛ (g ∂S/∂E[xy])

with ``G ⊛`` the transposed (full) filter and ``g`` the upstream gradient per window. For float32 CPU images
whose target needs no gradient (training and pose refinement) the elementwise work (the stack, the SSIM terms
and their derivatives, the combination above) is three compiled passes instead of some forty tensor ops.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import Tensor

__all__ = ["ssim", "photometric_loss", "psnr", "SSIM_WEIGHT"]

#: Weight of the (1 - SSIM) term; L1 gets ``1 - SSIM_WEIGHT``.
SSIM_WEIGHT = 0.2

_WIN, _SIGMA = 11, 1.5
_C1, _C2 = 0.01**2, 0.03**2  # (K1 · data range)², (K2 · data range)², K = (0.01, 0.03)


@functools.lru_cache(maxsize=8)
def _window(channels: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The normalised 1D Gaussian as depthwise weights along H [ch, 1, 11, 1] and along W [ch, 1, 1, 11]."""
    x = torch.arange(_WIN, dtype=torch.float32) - _WIN // 2
    g = torch.exp(-(x**2) / (2 * _SIGMA**2))
    g = (g / g.sum()).to(device, dtype)
    return g.view(1, 1, _WIN, 1).repeat(channels, 1, 1, 1), g.view(1, 1, 1, _WIN).repeat(channels, 1, 1, 1)


def _filter(x: Tensor, pad: int = 0) -> Tensor:
    """Separable Gaussian blur of [B, ch, H, W] (channels-last memory is fastest); ``pad`` 10 = transposed."""
    wh, ww = _window(x.shape[1], x.dtype, x.device)
    x = F.conv2d(x, wh, padding=(pad, 0), groups=x.shape[1])
    return F.conv2d(x, ww, padding=(0, pad), groups=x.shape[1])


def _terms(mu1, mu2, xx, yy, xy):
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    a1, b1 = 2 * mu12 + _C1, mu1_sq + mu2_sq + _C1
    a2, b2 = 2 * (xy - mu12) + _C2, (xx - mu1_sq) + (yy - mu2_sq) + _C2
    return a1, b1, a2, b2


class _SSIM(torch.autograd.Function):
    """Per-image mean SSIM of channels-last images [B, H, W, 3] with the closed-form gradient. [B]"""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        stack = torch.cat([x, y, x * x, y * y, x * y], dim=-1).permute(0, 3, 1, 2)  # channels-last memory
        f = _filter(stack)
        a1, b1, a2, b2 = _terms(*f.split(x.shape[-1], dim=1))
        den = b1 * b2
        s = a1 * a2 / den
        ctx.save_for_backward(x, y, f, a1, b1, a2, b2, s)
        return s.mean(dim=(1, 2, 3))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, f, a1, b1, a2, b2, s = ctx.saved_tensors
        d = x.shape[-1]
        mu1, mu2 = f[:, :d], f[:, d : 2 * d]
        g = grad.view(-1, 1, 1, 1) / s[0].numel()  # d(mean)/d(map)
        inv = g / (b1 * b2)
        gs = g * s
        # ∂S/∂E[xy] is the same for both images; the terms of X and of Y differ in μ and the second moment
        d_exy = 2 * a1 * inv
        out = []
        for wanted, mu_a, mu_b, img_a, img_b in (
            (ctx.needs_input_grad[0], mu1, mu2, x, y),
            (ctx.needs_input_grad[1], mu2, mu1, y, x),
        ):
            if not wanted:
                out.append(None)
                continue
            d_mu = 2 * mu_b * (a2 - a1) * inv - 2 * mu_a * gs * (1 / b1 - 1 / b2)
            d_ee = -gs / b2
            maps = torch.cat([d_mu, d_ee, d_exy], dim=1).contiguous(memory_format=torch.channels_last)
            back = _filter(maps, pad=_WIN - 1)
            back = back.permute(0, 2, 3, 1)  # [B, H, W, 3 · 3]
            out.append(back[..., :d] + 2 * img_a * back[..., d : 2 * d] + img_b * back[..., 2 * d :])
        return out[0], out[1]


@njit(cache=True)
def _stack_kernel(x, y, out):
    """``out[..., :]`` = (x, y, x², y², xy) per channel, channels last. [B, H, W, 5·3]"""
    B, H, W, D = x.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                for c in range(D):
                    xv, yv = x[b, i, j, c], y[b, i, j, c]
                    out[b, i, j, c] = xv
                    out[b, i, j, D + c] = yv
                    out[b, i, j, 2 * D + c] = xv * xv
                    out[b, i, j, 3 * D + c] = yv * yv
                    out[b, i, j, 4 * D + c] = xv * yv


@njit(cache=True)
def _terms_kernel(f, c1, c2, means, dmaps):
    """SSIM per image from the filtered maps ``f`` [B, h, w, 5·3] into ``means`` [B], and the derivatives of
    that mean with respect to μx, E[x²] and E[xy] into ``dmaps`` [B, h, w, 3·3]."""
    B, h, w, D5 = f.shape
    D = D5 // 5
    inv_n = 1.0 / (h * w * D)
    for b in range(B):
        total = 0.0
        for i in range(h):
            for j in range(w):
                for c in range(D):
                    mu1, mu2 = np.float64(f[b, i, j, c]), np.float64(f[b, i, j, D + c])
                    xx, yy, xy = f[b, i, j, 2 * D + c], f[b, i, j, 3 * D + c], f[b, i, j, 4 * D + c]
                    a1 = 2.0 * mu1 * mu2 + c1
                    b1 = mu1 * mu1 + mu2 * mu2 + c1
                    a2 = 2.0 * (xy - mu1 * mu2) + c2
                    b2 = (xx - mu1 * mu1) + (yy - mu2 * mu2) + c2
                    inv = inv_n / (b1 * b2)
                    sv = a1 * a2 / (b1 * b2)
                    total += sv
                    d_mu = 2.0 * mu2 * (a2 - a1) * inv - 2.0 * mu1 * sv * inv_n * (1.0 / b1 - 1.0 / b2)
                    dmaps[b, i, j, c] = d_mu
                    dmaps[b, i, j, D + c] = -sv * inv_n / b2
                    dmaps[b, i, j, 2 * D + c] = 2.0 * a1 * inv
        means[b] = total * inv_n


@njit(cache=True)
def _combine_kernel(back, x, y, g, out):
    """``out = g · (back_μ + 2 x back_E[x²] + y back_E[xy])`` per image, the gradient to ``x``. [B,H,W,3]"""
    B, H, W, D = x.shape
    for b in range(B):
        gb = g[b]
        for i in range(H):
            for j in range(W):
                for c in range(D):
                    out[b, i, j, c] = gb * (
                        back[b, i, j, c] + 2.0 * x[b, i, j, c] * back[b, i, j, D + c]
                        + y[b, i, j, c] * back[b, i, j, 2 * D + c]
                    )


class _SSIMCPU(torch.autograd.Function):
    """:class:`_SSIM` for float32 CPU images whose target has no gradient (training, pose): the elementwise
    work in three compiled passes (stack, SSIM terms, gradient), the filters still torch's convolutions."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        xn, yn = x.detach().numpy(), y.detach().numpy()
        B, H, W, D = xn.shape
        stack = np.empty((B, H, W, 5 * D), np.float32)
        _stack_kernel(xn, yn, stack)
        f = _filter(torch.from_numpy(stack).permute(0, 3, 1, 2))  # channels-last memory
        f = f.permute(0, 2, 3, 1).contiguous().numpy()
        means = np.empty(B, np.float64)
        dmaps = np.empty(f.shape[:3] + (3 * D,), np.float32)
        _terms_kernel(f, _C1, _C2, means, dmaps)
        ctx.save_for_backward(x, y)
        ctx.dmaps = dmaps
        return torch.from_numpy(means.astype(np.float32))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, y = ctx.saved_tensors
        back = _filter(torch.from_numpy(ctx.dmaps).permute(0, 3, 1, 2), pad=_WIN - 1)
        back = back.permute(0, 2, 3, 1).contiguous().numpy()
        out = np.empty(x.shape, np.float32)
        g = grad.detach().to(torch.float32).expand(x.shape[0]).contiguous().numpy()
        _combine_kernel(back, x.detach().numpy(), y.detach().numpy(), g, out)
        return torch.from_numpy(out), None


def _batched(x: Tensor, name: str) -> Tensor:
    """[H,W,3] or [B,H,W,3] channels last -> [B,H,W,3]."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must be [H, W, 3] or [B, H, W, 3], got shape {tuple(x.shape)}")
    return x


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
    p, t = _batched(pred, "pred"), _batched(target, "target")
    if min(p.shape[1:3]) < _WIN:
        raise ValueError(f"ssim needs images of at least 11x11 pixels, got {tuple(p.shape[1:3])}")
    p, t = p.contiguous(), t.to(p.dtype).contiguous()
    fast = p.dtype == torch.float32 and p.device.type == "cpu" and not t.requires_grad
    per_image = (_SSIMCPU if fast else _SSIM).apply(p, t)
    return per_image.mean() if reduce else per_image
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
