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
