"""Matplotlib figures of anomaly detection: the map per term, overlays, ROC curves, example grids.

Every function returns the ``matplotlib.figure.Figure`` (or draws into a given ``ax``); nothing is shown or
saved here. Images are channels-last [H, W, 3] in [0, 1]; maps [H, W]; masks bool [H, W]. Tensors and
arrays are both accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _resize_to(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an image/map to (H, W) for display only."""
    if img.shape[:2] == tuple(hw):
        return img
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    t = F.interpolate(t, size=tuple(hw), mode="bilinear", align_corners=False)[0]
    return (t[0] if img.ndim == 2 else t.permute(1, 2, 0)).numpy()


def _outline(ax, mask: np.ndarray, color: str = "lime") -> None:
    mask = _np(mask).astype(float)
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=color, linewidths=0.8)


def plot_overlay(
    image,
    amap,
    mask=None,
    ax=None,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    title: str | None = None,
):
    """An anomaly map over its image (the map resized to the image), with the mask's outline.

    Args:
        image: The query. [H, W, 3]
        amap: Its anomaly map, any size. [h, w]
        mask: Ground truth to outline, or None. [H, W]
        ax: Axes to draw into; a new figure when None.
        alpha: Opacity of the map.
        vmin: Colour-scale minimum (the map's minimum by default).
        vmax: Colour-scale maximum (the map's maximum by default); use one value across images to compare.
        cmap: Colour map of the anomaly map.
        title: Axes title.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    img = _np(image)
    m = _resize_to(_np(amap).astype(np.float32), img.shape[:2])
    ax.imshow(np.clip(img, 0, 1))
    ax.imshow(m, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    if mask is not None:
        _outline(ax, mask)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def plot_terms(
    terms: Mapping[str, object], query=None, reference=None, blur_sigma: float = 0.0, cmap: str = "inferno"
):
    """One panel per term of the anomaly map (:func:`splatlab.anomaly.anomaly_terms`), each on its scale.

    Args:
        terms: ``{name: map}`` for one image. {str: [S, S]}
        query: The query, shown first when given. [H, W, 3]
        reference: The reference, shown second when given. [H, W, 3]
        blur_sigma: Blur each term with this σ before showing it (as the full map is).
        cmap: Colour map.

    Returns:
        The figure; each term's panel title gives its maximum, so their weights in the sum can be compared.
    """
    import matplotlib.pyplot as plt
    import torch

    from splatlab.anomaly import gaussian_blur

    panels = [(k, _np(v)) for k, v in terms.items()]
    if blur_sigma > 0:
        panels = [
            (k, gaussian_blur(torch.from_numpy(v[None].astype(np.float32)), blur_sigma)[0].numpy())
            for k, v in panels
        ]
    images = [(n, _np(x)) for n, x in (("query", query), ("reference", reference)) if x is not None]
    n = len(images) + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.5), squeeze=False)
    for ax, (name, img) in zip(axes[0], images, strict=False):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    for ax, (name, m) in zip(axes[0][len(images) :], panels, strict=True):
        ax.imshow(m, cmap=cmap)
        ax.set_title(f"{name}\nmax {m.max():.3g}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_roc_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[int]]], ax=None, title: str | None = None
):
    """Image-level ROC curves of several methods on one set of test images.

    Args:
        curves: ``{label: (scores [M], labels [M])}``; the legend shows each AUROC.
        ax: Axes to draw into; a new figure when None.
        title: Axes title.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.4))
    for name, (scores, labels) in curves.items():
        s, y = _np(scores).astype(float), _np(labels).astype(bool)
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} ({100 * roc_auc_score(y, s):.1f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure


def plot_example_grid(rows: Sequence[Mapping[str, object]], vmax: float | None = None, cmap: str = "jet"):
    """A grid with one row per example: query | reference | anomaly map | ground truth.

    Args:
        rows: Dicts with "query" [H, W, 3], "reference" [H, W, 3], "map" [h, w], optional "mask" [H, W]
            and "title" (e.g. "Burrs, score 3.1 (defective)").
        vmax: One colour-scale maximum for every map (e.g. the calibrated threshold × 2); per row when None.
        cmap: Colour map of the anomaly maps.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: give at least one example")
    fig, axes = plt.subplots(len(rows), 4, figsize=(8.0, 2.1 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        q = np.clip(_np(row["query"]), 0, 1)
        ref = np.clip(_np(row["reference"]), 0, 1)
        m = _resize_to(_np(row["map"]).astype(np.float32), q.shape[:2])
        mask = row.get("mask")
        axes[r, 0].imshow(q)
        axes[r, 1].imshow(ref)
        axes[r, 2].imshow(m, cmap=cmap, vmin=0 if vmax is not None else None, vmax=vmax)
        gt = np.zeros(q.shape[:2]) if mask is None else _np(mask).astype(float)
        axes[r, 3].imshow(q)
        axes[r, 3].imshow(np.ma.masked_where(gt < 0.5, gt), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        if mask is not None:
            _outline(axes[r, 2], gt, color="white")
        axes[r, 0].set_ylabel(str(row.get("title", "")), fontsize=8)
        for c, name in enumerate(("query", "reference", "anomaly map", "ground truth")):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["plot_example_grid", "plot_overlay", "plot_roc_curves", "plot_terms"]
