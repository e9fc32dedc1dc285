"""Matplotlib figures of anomaly detection: the map per term, overlays, ROC curves, example grids.

Every function returns the ``matplotlib.figure.Figure`` (or draws into a given ``ax``); nothing is shown or
saved here. Images are channels-last [H, W, 3] in [0, 1]; maps [H, W]; masks bool [H, W]. Tensors and
arrays are both accepted.

**Colour scales.** Maps of one class are compared on one :class:`MapScale`: :meth:`MapScale.calibrated`
(from the class's calibration: 0 = a typical good pixel, the threshold marked on the colour bar, so a good
query looks cold) or :meth:`MapScale.shared` (one range over the maps given). Without a scale each map is
stretched to its own range, and the figure says so ("per-image scale"): the map of a good image then looks
as hot as a defective one's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PER_IMAGE = "per-image scale (each map to its own max)"


@dataclass(frozen=True)
class MapScale:
    """One colour scale for several anomaly maps, optionally with the decision threshold on it."""

    vmin: float  # raw map value shown coldest
    vmax: float  # raw map value shown hottest
    threshold: float | None = None  # raw calibrated threshold, marked on the colour bar; None: not known
    label: str = "anomaly map"  # colour-bar label

    @classmethod
    def calibrated(cls, calibration, upper: float = 2.0) -> MapScale:
        """From a :class:`splatlab.anomaly.Calibration`: from a typical good pixel to ``upper`` × the way to
        the threshold (the threshold sits at 1/``upper`` of the bar)."""
        lo, thr = float(calibration.pixel_median), float(calibration.threshold)
        return cls(lo, lo + upper * (thr - lo), thr, f"{calibration.method} map, calibrated scale")

    @classmethod
    def shared(cls, maps, threshold: float | None = None) -> MapScale:
        """One range over all ``maps`` (from 0, or their minimum if negative, to their maximum). {[h, w]}"""
        arrays = [_np(m).astype(np.float64) for m in maps]
        if not arrays:
            raise ValueError("maps is empty: give at least one map for a shared scale")
        lo = min(0.0, min(float(a.min()) for a in arrays))
        hi = max(float(a.max()) for a in arrays)
        if threshold is not None:
            hi = max(hi, float(threshold))
        return cls(lo, hi if hi > lo else lo + 1e-6, threshold, "anomaly map (one scale for all)")


def map_colorbar(fig, mappable, ax, scale: MapScale | None):
    """A colour bar for a map drawn with ``scale``, the threshold marked on it; labelled per-image if None."""
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(PER_IMAGE if scale is None else scale.label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if scale is not None and scale.threshold is not None:
        bar.ax.axhline(scale.threshold, color="white", lw=2.5)
        bar.ax.axhline(scale.threshold, color="black", lw=1.2, ls="--")
        bar.ax.text(-0.15, scale.threshold, "threshold", transform=bar.ax.get_yaxis_transform(),
                    va="center", ha="right", fontsize=6, rotation=90)
    return bar


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
    scale: MapScale | None = None,
    colorbar: bool = False,
):
    """An anomaly map over its image (the map resized to the image), with the mask's outline.

    Args:
        image: The query. [H, W, 3]
        amap: Its anomaly map, any size. [h, w]
        mask: Ground truth to outline, or None. [H, W]
        ax: Axes to draw into; a new figure when None.
        alpha: Opacity of the map.
        vmin: Colour-scale minimum when no ``scale`` is given (the map's minimum by default).
        vmax: Colour-scale maximum when no ``scale`` is given (the map's maximum by default).
        cmap: Colour map of the anomaly map.
        title: Axes title.
        scale: One scale shared with other maps (:class:`MapScale`); overrides ``vmin``/``vmax``.
        colorbar: Draw a colour bar (threshold marked; labelled "per-image scale" without a scale).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3.4 if colorbar else 3, 3))
    img = _np(image)
    m = _resize_to(_np(amap).astype(np.float32), img.shape[:2])
    if scale is not None:
        vmin, vmax = scale.vmin, scale.vmax
    ax.imshow(np.clip(img, 0, 1))
    im = ax.imshow(m, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    if mask is not None:
        _outline(ax, mask)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        per_image = scale is None and vmin is None and vmax is None
        map_colorbar(ax.figure, im, ax, None if per_image else (scale or MapScale(vmin, vmax)))
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


def plot_example_grid(
    rows: Sequence[Mapping[str, object]],
    vmax: float | None = None,
    cmap: str = "jet",
    scale: MapScale | None = None,
):
    """A grid with one row per example: query | reference | anomaly map | ground truth.

    Args:
        rows: Dicts with "query" [H, W, 3], "reference" [H, W, 3], "map" [h, w], optional "mask" [H, W]
            and "title" (e.g. "Burrs, score 3.1 (defective)").
        vmax: One colour-scale maximum for every map, from 0, when no ``scale`` is given.
        cmap: Colour map of the anomaly maps.
        scale: One scale for every map (:meth:`MapScale.calibrated` marks the threshold); with neither
            ``scale`` nor ``vmax`` each map is stretched to its own range, and the colour bars say so.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: give at least one example")
    if scale is None and vmax is not None:
        scale = MapScale(0.0, float(vmax), None, "anomaly map (one scale for all)")
    fig, axes = plt.subplots(len(rows), 4, figsize=(8.8, 2.1 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        q = np.clip(_np(row["query"]), 0, 1)
        ref = np.clip(_np(row["reference"]), 0, 1)
        m = _resize_to(_np(row["map"]).astype(np.float32), q.shape[:2])
        mask = row.get("mask")
        axes[r, 0].imshow(q)
        axes[r, 1].imshow(ref)
        lo, hi = (None, None) if scale is None else (scale.vmin, scale.vmax)
        im = axes[r, 2].imshow(m, cmap=cmap, vmin=lo, vmax=hi)
        if scale is None or r == 0:  # one bar for a shared scale, one per row otherwise
            map_colorbar(fig, im, axes[r, 2], scale)
        gt = np.zeros(q.shape[:2]) if mask is None else _np(mask).astype(float)
        axes[r, 3].imshow(q)
        axes[r, 3].imshow(np.ma.masked_where(gt < 0.5, gt), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        if mask is not None:
            _outline(axes[r, 2], gt, color="white")
        axes[r, 0].set_ylabel(str(row.get("title", "")), fontsize=8)
        map_title = "anomaly map" if scale is not None else "anomaly map\n(per-image scale)"
        for c, name in enumerate(("query", "reference", map_title, "ground truth")):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def run_scale(run, maps=None) -> MapScale:
    """The colour scale of a class's maps: its calibration's (threshold marked), else one over ``maps``."""
    cal = getattr(run, "calibration", None)
    if cal is not None:
        return MapScale.calibrated(cal)
    return MapScale.shared(run.maps if maps is None else maps)


def plot_run_examples(run, scale: MapScale | None = None):
    """The examples a :class:`splatlab.detect.ClassRun` kept, as :func:`plot_example_grid` rows on one scale.

    Args:
        run: A class run with ``examples`` (the highest-scoring defective queries and a good one).
        scale: The colour scale; :func:`run_scale` (the run's calibration, threshold marked) when None.

    Returns:
        The figure, or None when the run kept no examples.
    """
    rows = []
    for i, d in zip(run.example_positions, run.examples, strict=True):
        verdict = "" if d.decision is None else (" → defective" if d.decision else " → good")
        rows.append({"query": d.query, "reference": d.reference, "map": d.map_full, "mask": run.masks[i],
                     "title": f"{run.defects[i]}\nscore {d.score:.3g}{verdict}"})
    if not rows:
        return None
    return plot_example_grid(rows, scale=scale or run_scale(run, [r["map"] for r in rows]))


def plot_detection(detection, scale: MapScale | None = None, title: str | None = None, cmap: str = "jet"):
    """One detection in four panels: query | reference render | map (colour bar, threshold) | decision.

    Args:
        detection: A :class:`splatlab.detect.Detection`.
        scale: The class's scale (:meth:`MapScale.calibrated`); per-image (and labelled so) when None.
        title: Figure title, e.g. the file name.
        cmap: Colour map of the anomaly map.

    Returns:
        The figure. The decision panel outlines the pixels above the threshold (when ``scale`` has one)
        and names the decision and the score.
    """
    import matplotlib.pyplot as plt

    d = detection
    q = np.clip(_np(d.query), 0, 1)
    fig, axes = plt.subplots(1, 4, figsize=(11.5, 3.0), gridspec_kw={"width_ratios": [1, 1, 1.25, 1]})
    axes[0].imshow(q)
    axes[0].set_title("query", fontsize=9)
    axes[1].imshow(np.clip(_np(d.reference), 0, 1))
    axes[1].set_title("reference (render at the estimated pose)", fontsize=8)
    m = _resize_to(_np(d.map).astype(np.float32), q.shape[:2])
    im = axes[2].imshow(m, cmap=cmap, vmin=None if scale is None else scale.vmin,
                        vmax=None if scale is None else scale.vmax)
    map_colorbar(fig, im, axes[2], scale)
    axes[2].set_title("anomaly map" if scale is not None else "anomaly map (per-image scale)", fontsize=9)
    axes[3].imshow(q)
    if scale is not None and scale.threshold is not None and (m > scale.threshold).any():
        axes[3].contour(m > scale.threshold, levels=[0.5], colors="red", linewidths=1.2)
    if d.decision is None:
        verdict, colour = f"no calibration\nscore {d.score:.3g}", "black"
    else:
        verdict = "DEFECTIVE" if d.decision else "good"
        colour = "red" if d.decision else "green"
        verdict += f"\nscore {d.score:.3g} = {d.normalized_score:.2f} (threshold 1)"
    axes[3].set_title(verdict, fontsize=9, color=colour)
    axes[3].set_xlabel("red: pixels above the threshold", fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["PER_IMAGE", "MapScale", "map_colorbar", "plot_detection", "plot_example_grid", "plot_overlay",
           "plot_roc_curves", "plot_run_examples", "plot_terms", "run_scale"]
