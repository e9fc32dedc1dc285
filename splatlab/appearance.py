"""Photometric alignment of a render to a query: the query's light need not be the training views'.

Splats reproduce the object under the lighting of its training views. A query photographed under another
light (intensity, colour temperature) or exposure differs from the render everywhere on the object, and both
the pose loss and the anomaly map count that difference. Before comparing, the render's object pixels are
mapped to the query's with a closed-form least-squares fit per colour channel, keeping the background::

    aligned = g · C + o · α + (1 − α) · bg,    C = render − (1 − α) · bg  (premultiplied object colour)

``"gain"`` fits g (o = 0), ``"affine"`` fits g and o. A small ridge pulls the fit towards the identity, so a
query with almost no object pixels is left as it is. The fit is differentiable, so the pose refinement can
descend on the aligned loss (the fit is re-solved at every step). Three parameters per channel cannot
imitate a defect's local change, so defects stay visible in the map; a lighting change that only moves
highlights or shadows is not something a global fit can undo.

For study (notebook 08, ``docs/realism.md``): :func:`local_align` fits the gain and offset per window (a
guided filter), and :func:`suppress_highlights` removes the achromatic excess a highlight adds; neither
helped on the realistic look's development split, so the pipeline uses the global fit.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Appearance = Literal["none", "gain", "affine"]
APPEARANCES: tuple[str, ...] = ("none", "gain", "affine")


def fit_appearance(
    render: Tensor,
    alpha: Tensor,
    query: Tensor,
    model: Appearance = "gain",
    background=1.0,
    ridge: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Per-channel gain and offset that map a render's object pixels onto a query's.

    Args:
        render: Rendered images on ``background``, in [0, 1]. [B, H, W, 3]
        alpha: The render's coverage. [B, H, W, 1]
        query: The images to match. [B, H, W, 3]
        model: "gain" (offset 0) or "affine"; "none" returns the identity.
        background: The render's background colour. [] or [3]
        ridge: Weight, per object pixel, of the pull towards gain 1 and offset 0.

    Returns:
        ``(gain [B, 3], offset [B, 3])``.
    """
    assert render.ndim == 4 and render.shape == query.shape, (render.shape, query.shape)
    assert alpha.shape == render.shape[:-1] + (1,), alpha.shape
    if model not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {model!r}")
    B = render.shape[0]
    one = torch.ones(B, 3, dtype=render.dtype, device=render.device)
    if model == "none":
        return one, torch.zeros_like(one)
    bg = torch.as_tensor(background, dtype=render.dtype, device=render.device)
    color = render - (1.0 - alpha) * bg  # [B, H, W, 3]
    target = query - (1.0 - alpha) * bg
    n = alpha.sum(dim=(1, 2)).clamp_min(1.0)  # [B, 1]: object pixels
    lam = ridge * n
    scc = (color * color).sum(dim=(1, 2))  # [B, 3]
    sct = (color * target).sum(dim=(1, 2))
    if model == "gain":
        return (sct + lam) / (scc + lam), torch.zeros_like(one)
    sca = (color * alpha).sum(dim=(1, 2))
    saa = (alpha * alpha).sum(dim=(1, 2)).expand_as(scc)
    sat = (alpha * target).sum(dim=(1, 2))
    # Normal equations of [g, o], ridge towards [1, 0]: [[scc+λ, sca], [sca, saa+λ]] [g, o] = [sct+λ, sat]
    a11, a12, a22 = scc + lam, sca, saa + lam
    det = a11 * a22 - a12 * a12
    gain = ((sct + lam) * a22 - a12 * sat) / det
    offset = (a11 * sat - a12 * (sct + lam)) / det
    return gain, offset


def align_render(
    render: Tensor, alpha: Tensor, query: Tensor, model: Appearance = "gain", background=1.0
) -> Tensor:
    """The render with its object pixels photometrically matched to the query (see the module doc).

    Args:
        render: Rendered images on ``background``, in [0, 1]. [B, H, W, 3]
        alpha: The render's coverage. [B, H, W, 1]
        query: The images to match. [B, H, W, 3]

    Returns:
        The aligned renders. [B, H, W, 3]
    """
    if model == "none":
        return render
    gain, offset = fit_appearance(render, alpha, query, model, background)
    bg = torch.as_tensor(background, dtype=render.dtype, device=render.device)
    color = render - (1.0 - alpha) * bg
    return gain[:, None, None] * color + offset[:, None, None] * alpha + (1.0 - alpha) * bg


def _box(x: Tensor, radius: int) -> Tensor:
    """Mean over (2r+1)² windows, edges replicated. [B, H, W, C] -> [B, H, W, C]"""
    k = 2 * radius + 1
    y = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (radius,) * 4, mode="replicate")
    return torch.nn.functional.avg_pool2d(y, k, stride=1).permute(0, 2, 3, 1)


def local_align(reference: Tensor, query: Tensor, radius: int, eps: float = 1e-3) -> Tensor:
    """The reference mapped onto the query by a gain and offset per window and channel (a guided filter).

    In every (2r+1)² window, ``query ≈ a · reference + b`` by least squares with ridge ``eps`` on ``a``; each
    pixel averages the fits of the windows that hold it (He et al., guided image filtering, 2013). Shading
    that varies smoothly over the surface (another light direction, exposure, colour temperature) is
    absorbed; a defect smaller than the window is not: the reference has no structure to explain it, and
    the window's offset takes only its share of the window's area.

    Args:
        reference: The render at the query's pose. [B, H, W, 3]
        query: The images to match. [B, H, W, 3]
        radius: Window radius in pixels.
        eps: Ridge on the gain: larger keeps less of the reference's local structure.

    Returns:
        The aligned reference. [B, H, W, 3]
    """
    assert reference.shape == query.shape and reference.ndim == 4, (reference.shape, query.shape)
    if radius < 1:
        raise ValueError(f"radius must be >= 1 pixel, got {radius}")
    mr, mq = _box(reference, radius), _box(query, radius)
    var = _box(reference * reference, radius) - mr * mr
    cov = _box(reference * query, radius) - mr * mq
    a = cov / (var + eps)
    b = mq - a * mr
    return _box(a, radius) * reference + _box(b, radius)


def _to_linear(x: Tensor) -> Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _to_srgb(x: Tensor) -> Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def suppress_highlights(query: Tensor, reference: Tensor) -> Tensor:
    """The query without the light it reflects beyond the reference in all three channels alike.

    By the dichromatic reflection model (Shafer 1985), a dielectric's specular highlight adds the light's
    own colour (near white) to the body colour, in linear light. Where the query is brighter than the
    reference in every channel, the shared part of the excess ``e = min_c(q_c − r_c)`` is such a highlight
    (one the splats, fitted under another light or from other views, do not reproduce) and is removed. A
    coloured change (a stain), a darker one (a crater, a shadow) or a brighter one in the surface's own colour
    (a burr's lit face) keeps most or all of its difference: only the part common to the three channels goes.

    Args:
        query: Query images, sRGB in [0, 1]. [B, H, W, 3]
        reference: The render at the query's pose, sRGB in [0, 1]. [B, H, W, 3]

    Returns:
        The query with the achromatic excess removed, sRGB. [B, H, W, 3]
    """
    assert query.shape == reference.shape and query.shape[-1] == 3, (query.shape, reference.shape)
    q, r = _to_linear(query), _to_linear(reference)
    excess = (q - r).min(dim=-1, keepdim=True).values.clamp_min(0.0)
    return _to_srgb(q - excess)
