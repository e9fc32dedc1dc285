"""Anomaly-detection and pose metrics, as in the MVTec AD / MAD protocol.

All scores follow one convention: higher means more anomalous; labels and masks are True (1) for
anomalous. Every metric returns a float in [0, 1]; callers convert to percent.

- :func:`pixel_auroc`: ROC AUC over all pixels of all test images of a class (good images included).
- :func:`image_auroc`: ROC AUC of one score per image.
- :func:`aupro`: area under the per-region-overlap (PRO) curve up to a false-positive rate of 0.3, divided
  by 0.3 (Bergmann et al., MVTec AD, IJCV 2021). PRO at a threshold is the mean, over every connected
  component of every ground-truth mask (8-connectivity), of the fraction of that component above the
  threshold; FPR is the fraction of normal pixels above it.
- :func:`per_defect_breakdown`: the above per defect type, each against all good images.
- :func:`pose_auc`: area under the rotation-error recall curve up to thresholds, normalised.

Errors: mismatched shapes raise ``ValueError``; a single class (AUROC undefined) and masks without any
anomalous pixel (AUPRO undefined) raise :class:`UndefinedMetricError`, a ``ValueError``. Only
:func:`per_defect_breakdown` turns an undefined pixel metric into NaN, with a warning, so that a defect
type without masks still gets image-level numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

# 8-connectivity for ground-truth regions, as in the MVTec AD evaluation code.
_CONNECTIVITY = np.ones((3, 3), dtype=int)


class UndefinedMetricError(ValueError):
    """The metric is undefined for these inputs (one class only, no anomalous region)."""


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # np.trapz was renamed in numpy 2; this works with both.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _maps_and_masks(maps, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Check and convert maps [M, H, W] (or a list of [H, W]) and matching masks to numpy lists."""
    maps_l = [_to_numpy(m).astype(np.float64) for m in maps]
    masks_l = [_to_numpy(m) for m in masks]
    if len(maps_l) != len(masks_l) or not maps_l:
        raise ValueError(f"maps and masks must hold the same number (>0) of images, got "
                         f"{len(maps_l)} and {len(masks_l)}")
    for i, (a, m) in enumerate(zip(maps_l, masks_l, strict=True)):
        if a.ndim != 2 or a.shape != m.shape:
            raise ValueError(f"maps[{i}] and masks[{i}] must both be [H, W] of one size, got "
                             f"{a.shape} and {m.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"maps[{i}] holds NaN or inf")
    masks_l = [m.astype(bool) for m in masks_l]
    return maps_l, masks_l


def _check_binary(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        kind = "anomalous" if n_pos == 0 else "normal"
        raise UndefinedMetricError(f"{what}: no {kind} samples, so the AUROC is undefined "
                                   "(it needs both classes)")


def image_auroc(scores, labels) -> float:
    """Image-level ROC AUC.

    Args:
        scores: One anomaly score per image, higher = more anomalous. [M]
        labels: True/1 for anomalous images, False/0 for good ones. [M]

    Returns:
        AUROC in [0, 1].
    """
    s = _to_numpy(scores).astype(np.float64)
    y = _to_numpy(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores and labels must both be [M], got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or inf")
    y = y.astype(bool)
    _check_binary(y, "image_auroc")
    return float(roc_auc_score(y, s))


def pixel_auroc(maps, masks) -> float:
    """Pixel-level ROC AUC over all pixels of all images.

    Args:
        maps: Anomaly maps, or a list of [H, W] maps. [M, H, W]
        masks: Ground-truth masks, True = anomalous pixel, same shapes as ``maps``. [M, H, W]

    Returns:
        AUROC in [0, 1].
    """
    maps_l, masks_l = _maps_and_masks(maps, masks)
    y = np.concatenate([m.ravel() for m in masks_l])
    _check_binary(y, "pixel_auroc")
    return float(roc_auc_score(y, np.concatenate([a.ravel() for a in maps_l])))


def pro_curve(maps, masks, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: PRO against the false-positive rate on normal pixels.

    The curve is scikit-learn's ROC curve with each anomalous pixel weighted by
    1 / (number of regions × size of its region): the weighted true-positive rate is then exactly the
    mean per-region overlap. This gives every distinct threshold without a loop.

    Args:
        maps: Anomaly maps, or a list of [H, W] maps. [M, H, W]
        masks: Ground-truth masks, True = anomalous pixel. [M, H, W]
        num_thresholds: None for the exact curve over all distinct scores; an int n evaluates it only at
            n thresholds evenly spaced between the smallest and largest score (cheaper to plot).

    Returns:
        (fpr, pro), both increasing from 0 to 1. [T], [T]
    """
    maps_l, masks_l = _maps_and_masks(maps, masks)
    weights, n_regions = [], 0
    for m in masks_l:
        labels, n = ndimage.label(m, structure=_CONNECTIVITY)
        sizes = np.bincount(labels.ravel())
        w = np.zeros(m.shape, dtype=np.float64)
        w[labels > 0] = 1.0 / sizes[labels[labels > 0]]
        weights.append(w.ravel())
        n_regions += n
    y = np.concatenate([m.ravel() for m in masks_l])
    if n_regions == 0:
        raise UndefinedMetricError("aupro: the masks hold no anomalous region, so the PRO curve is "
                                   "undefined")
    if y.all():
        raise UndefinedMetricError("aupro: the masks hold no normal pixel, so the false-positive rate "
                                   "is undefined")
    s = np.concatenate([a.ravel() for a in maps_l])
    # Normal pixels all weigh the same; the weight cancels in the rate.
    w = np.where(y, np.concatenate(weights) / n_regions, 1.0)
    if num_thresholds is not None:
        if int(num_thresholds) < 2:
            raise ValueError(f"num_thresholds must be >= 2 or None, got {num_thresholds}")
        thresholds = np.linspace(s.min(), s.max(), int(num_thresholds))
        # Rank of the highest threshold at or below each score: "score >= t_k" iff "rank >= k".
        s = np.searchsorted(thresholds, s, side="right").astype(np.float64)
    fpr, pro, _ = roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    return fpr, np.clip(pro, 0.0, 1.0)


def aupro(maps, masks, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (the MVTec AD AUPRO).

    The curve is integrated with the trapezoid rule from FPR 0 to exactly ``fpr_limit`` (interpolating
    linearly at the limit), then divided by ``fpr_limit`` so that a perfect map scores 1.

    Args:
        maps: Anomaly maps, or a list of [H, W] maps. [M, H, W]
        masks: Ground-truth masks, True = anomalous pixel. [M, H, W]
        fpr_limit: Upper integration limit on the false-positive rate, in (0, 1].
        num_thresholds: None for the exact curve, or a number of evenly spaced thresholds (see
            :func:`pro_curve`).

    Returns:
        AUPRO in [0, 1].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks, num_thresholds)
    return float(_area_to(fpr, pro, fpr_limit) / fpr_limit)


def _area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a non-decreasing curve (x from 0 to >= limit) from x=0 to x=limit."""
    i = int(np.searchsorted(x, limit, side="right"))  # first point beyond the limit
    xs, ys = x[:i], y[:i]
    if xs[-1] < limit:  # interpolate on the segment that crosses the limit
        t = (limit - x[i - 1]) / (x[i] - x[i - 1])
        xs = np.append(xs, limit)
        ys = np.append(ys, y[i - 1] + t * (y[i] - y[i - 1]))
    return float(_trapezoid(ys, xs))


def per_defect_breakdown(scores, labels, defect_types: Sequence[str], maps=None, masks=None) -> dict:
    """Metrics per defect type, each computed on that type's images plus all good images.

    Args:
        scores: Image anomaly scores. [M]
        labels: True/1 for anomalous images. [M]
        defect_types: Defect type name per image (e.g. "Burrs", "Missing", "Stains"; any name for good
            images, which are picked by ``labels``). [M]
        maps: Optional anomaly maps, or a list of [H, W]. [M, H, W]
        masks: Optional ground-truth masks, needed with ``maps``. [M, H, W]

    Returns:
        {defect type: {"n": images of that type, "image_auroc": ..., and with maps
        "pixel_auroc": ..., "aupro": ...}}, sorted by name. A pixel metric that is undefined for a type
        (no anomalous pixel in its masks) is NaN and a warning is issued.
    """
    s = _to_numpy(scores)
    y = _to_numpy(labels)
    types = np.asarray([str(t) for t in defect_types])
    if not (s.ndim == 1 and s.shape == y.shape == types.shape):
        raise ValueError(f"scores, labels and defect_types must all be [M], got {s.shape}, {y.shape}, "
                         f"{types.shape}")
    if (maps is None) != (masks is None):
        raise ValueError("give both maps and masks, or neither")
    if maps is not None and not (len(maps) == len(masks) == len(s)):
        raise ValueError(f"maps and masks must hold one entry per score ({len(s)}), got "
                         f"{len(maps)} and {len(masks)}")
    y = y.astype(bool)
    good = np.flatnonzero(~y)
    if good.size == 0:
        raise ValueError("per_defect_breakdown: no good images to compare the defects with")
    out: dict[str, dict] = {}
    for name in sorted(set(types[y].tolist())):
        idx = np.concatenate([good, np.flatnonzero(y & (types == name))])
        row = {"n": int((y & (types == name)).sum()), "image_auroc": image_auroc(s[idx], y[idx])}
        if maps is not None:
            sub_maps, sub_masks = [maps[i] for i in idx], [masks[i] for i in idx]
            for key, fn in (("pixel_auroc", pixel_auroc), ("aupro", aupro)):
                try:
                    row[key] = fn(sub_maps, sub_masks)
                except UndefinedMetricError as e:
                    warnings.warn(f"{key} for defect type {name!r} is NaN: {e}", stacklevel=2)
                    row[key] = float("nan")
        out[name] = row
    return out


def pose_auc(rot_errors_deg, thresholds: Sequence[float] = (5, 10, 20)) -> dict:
    """Area under the recall-vs-rotation-error curve up to each threshold, normalised to [0, 1].

    As in the pose-estimation literature (e.g. SuperGlue, LoFTR): sort the errors, put recall k/n at the
    k-th error, start the curve at (0, 0), join the points linearly, integrate with the trapezoid rule
    up to the threshold and divide by it. Failed estimates may be given as ``inf``.

    Args:
        rot_errors_deg: Rotation errors in degrees, >= 0. [N]
        thresholds: Upper limits of the integration, in degrees, > 0.

    Returns:
        {threshold: AUC} with the thresholds as given.
    """
    e = _to_numpy(rot_errors_deg).astype(np.float64)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"rot_errors_deg must be a non-empty [N], got shape {e.shape}")
    if np.isnan(e).any() or (e < 0).any():
        raise ValueError("rot_errors_deg must be >= 0 (use inf, not NaN, for failures)")
    e = np.sort(e)
    x = np.concatenate([[0.0], e])
    r = np.arange(e.size + 1, dtype=np.float64) / e.size
    out = {}
    for t in thresholds:
        if not t > 0:
            raise ValueError(f"thresholds must be > 0, got {t}")
        i = int(np.searchsorted(x, t, side="right"))  # points with error <= t
        # Flat from the last error below t to t itself: recall only rises at an error.
        xs = np.append(x[:i], t)
        rs = np.append(r[:i], r[i - 1])
        out[t] = float(_trapezoid(rs, xs) / t)
    return out
