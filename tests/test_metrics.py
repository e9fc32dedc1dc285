"""Known-answer tests for splatlab.metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.measure import label as sk_label
from sklearn.metrics import roc_auc_score

from splatlab import metrics

# ----------------------------------------------------------------------------------------------------------
# An independent, straightforward AUPRO: loop over thresholds, measure each region's overlap.
# ----------------------------------------------------------------------------------------------------------


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    regions = []  # (image index, bool region mask)
    for i, m in enumerate(masks):
        lab = sk_label(m, connectivity=2)
        regions += [(i, lab == r) for r in range(1, lab.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:  # from the strictest threshold down
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions])
        points.append((fpr, pro))
    area, (x0, y0) = 0.0, points[0]
    for x1, y1 in points[1:]:
        if x1 >= limit:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
            area += (limit - x0) * (y0 + y_lim) / 2
            return area / limit
        area += (x1 - x0) * (y0 + y1) / 2
        x0, y0 = x1, y1
    raise AssertionError("curve never reached the limit")


def random_case(seed: int, n: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    blobs = np.stack([gaussian_filter(rng.random((size, size)), 2.0) for _ in range(n)])
    masks = blobs > np.quantile(blobs, 0.9)
    masks[0] = False  # one good image
    maps = 0.6 * masks + rng.random(masks.shape)
    maps = np.stack([gaussian_filter(m, 1.0) for m in maps])
    return maps, masks


# ----------------------------------------------------------------------------------------------------------
# AUPRO
# ----------------------------------------------------------------------------------------------------------


def stripes() -> tuple[np.ndarray, np.ndarray]:
    """Score = column index 0..109, 4 rows. Columns 90..98 are region B (9 wide), column 109 region A.

    Normal columns: 0..89 and 99..108, N = 100. Lowering the threshold from the top: A enters at FPR 0
    (PRO 0.5), then 10 normal columns (FPR 0.1), then B (PRO 1.0). Trapezoids up to FPR 0.3:
    0.5 * 0.1 + 1.0 * 0.2 = 0.25, so AUPRO = 0.25 / 0.3 = 5/6. (Pixel-weighted TPR would give 0.7.)
    """
    maps = np.tile(np.arange(110, dtype=np.float64), (4, 1))[None]
    masks = np.zeros_like(maps, dtype=bool)
    masks[0, :, 90:99] = True
    masks[0, :, 109] = True
    return maps, masks


def test_aupro_stripes_known_answer():
    maps, masks = stripes()
    assert metrics.aupro(maps, masks) == pytest.approx(5 / 6, abs=1e-12)
    # Thresholds exactly at the integers give the same curve.
    assert metrics.aupro(maps, masks, num_thresholds=110) == pytest.approx(5 / 6, abs=1e-12)
    assert reference_aupro(maps[0][None], masks) == pytest.approx(5 / 6, abs=1e-12)


def test_aupro_uninformative_map_is_0_15():
    # One region of 7 pixels and 7 normal pixels with the same scores 0..6: PRO = FPR on every point,
    # so the area up to 0.3 is 0.3² / 2 and AUPRO = 0.15; 0.3 falls between grid points (interpolated).
    maps = np.concatenate([np.arange(7.0), np.arange(7.0)])[None, None]
    masks = np.zeros_like(maps, dtype=bool)
    masks[..., :7] = True
    assert metrics.aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)


def test_aupro_perfect_and_inverted():
    maps, masks = random_case(0)
    perfect = masks.astype(np.float64)
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0)
    assert metrics.aupro(1.0 - perfect, masks) == pytest.approx(0.0)
    assert metrics.pixel_auroc(perfect, masks) == pytest.approx(1.0)
    assert metrics.pixel_auroc(-perfect, masks) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aupro_agrees_with_reference(seed):
    maps, masks = random_case(seed)
    ours = metrics.aupro(maps, masks)
    assert 0.0 < ours < 1.0
    assert ours == pytest.approx(reference_aupro(maps, masks), abs=1e-3)
    assert metrics.aupro(maps, masks, num_thresholds=1000) == pytest.approx(ours, abs=1e-2)


def test_aupro_accepts_lists_and_tensors():
    maps, masks = random_case(4)
    ref = metrics.aupro(maps, masks)
    assert metrics.aupro(list(maps), list(masks)) == pytest.approx(ref)
    as_tensors = metrics.aupro(torch.from_numpy(maps).float(), torch.from_numpy(masks))
    assert as_tensors == pytest.approx(ref, abs=1e-6)
    fpr, pro = metrics.pro_curve(maps, masks)
    assert fpr[0] == 0 and fpr[-1] == 1 and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)


def test_aupro_errors():
    maps, masks = random_case(5)
    with pytest.raises(metrics.UndefinedMetricError, match="no anomalous region"):
        metrics.aupro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="no normal pixel"):
        metrics.aupro(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        metrics.aupro(maps, masks[:, :-1])
    with pytest.raises(ValueError, match="same number"):
        metrics.aupro(maps, masks[:-1])
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(maps, masks, fpr_limit=0.0)


# ----------------------------------------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------------------------------------


def test_pixel_auroc_matches_sklearn_on_flattened_pixels():
    maps, masks = random_case(6)
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_image_auroc_known_values():
    assert metrics.image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert metrics.image_auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    # Pairs (anomalous > good): 0.3>0.1, 0.3>0.4? no, 0.5>both -> 3 of 4.
    assert metrics.image_auroc(np.array([0.1, 0.4, 0.3, 0.5]), np.array([False, False, True, True])) == 0.75


def test_auroc_errors():
    with pytest.raises(metrics.UndefinedMetricError, match="no anomalous"):
        metrics.image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="no normal"):
        metrics.image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match=r"\[M\]"):
        metrics.image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.image_auroc([0.1, math.nan], [0, 1])
    with pytest.raises(ValueError, match="no anomalous"):
        metrics.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), dtype=bool))


# ----------------------------------------------------------------------------------------------------------
# Per defect type
# ----------------------------------------------------------------------------------------------------------


def test_per_defect_breakdown_toy():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.15, 0.35, 0.05]
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1]
    types = ["good"] * 4 + ["Burrs"] * 2 + ["Stains"] * 2 + ["Missing"]
    maps = np.zeros((9, 6, 6))
    masks = np.zeros((9, 6, 6), dtype=bool)
    masks[4:8, 2:4, 2:4] = True
    maps[4:6, 2:4, 2:4] = 1.0  # Burrs found exactly; Stains' maps show nothing; Missing has no mask
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = metrics.per_defect_breakdown(scores, labels, types, maps=maps, masks=masks)
    assert list(out) == ["Burrs", "Missing", "Stains"]
    assert out["Burrs"] == {"n": 2, "image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0}
    # Stains 0.15 beats 1 of 4 good scores, 0.35 beats 3 of 4 -> 4 / 8.
    assert out["Stains"]["image_auroc"] == 0.5
    assert out["Stains"]["pixel_auroc"] == 0.5 and out["Stains"]["aupro"] == pytest.approx(0.15)
    assert out["Missing"]["image_auroc"] == 0.0
    assert math.isnan(out["Missing"]["pixel_auroc"]) and math.isnan(out["Missing"]["aupro"])
    assert sum("Missing" in str(w.message) for w in caught) == 2
    no_maps = metrics.per_defect_breakdown(scores, labels, types)
    assert no_maps["Burrs"] == {"n": 2, "image_auroc": 1.0}


def test_per_defect_breakdown_errors():
    with pytest.raises(ValueError, match="both maps and masks"):
        metrics.per_defect_breakdown([0.1, 0.9], [0, 1], ["good", "Burrs"], maps=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="no good images"):
        metrics.per_defect_breakdown([0.1, 0.9], [1, 1], ["Stains", "Burrs"])
    with pytest.raises(ValueError, match=r"\[M\]"):
        metrics.per_defect_breakdown([0.1, 0.9], [0, 1], ["good"])


# ----------------------------------------------------------------------------------------------------------
# Pose AUC
# ----------------------------------------------------------------------------------------------------------


def test_pose_auc_hand_computed():
    # Curve through (0, 0), (1, 0.5), (3, 1). Up to 2: 0.25 + 0.5 = 0.75 -> 0.375. Up to 5: 0.25 + 1.5 +
    # 2 = 3.75 -> 0.75. Up to 10: 0.25 + 1.5 + 7 = 8.75 -> 0.875.
    out = metrics.pose_auc(np.array([3.0, 1.0]), thresholds=(2, 5, 10))
    assert out == pytest.approx({2: 0.375, 5: 0.75, 10: 0.875})
    # A failure (inf) caps the recall at 0.5: 0.25 + 0.5 * 4 = 2.25 -> 0.45.
    assert metrics.pose_auc([1.0, math.inf], thresholds=(5,))[5] == pytest.approx(0.45)
    assert metrics.pose_auc([0.0, 0.0]) == {5: 1.0, 10: 1.0, 20: 1.0}
    assert metrics.pose_auc(torch.tensor([30.0, 90.0])) == {5: 0.0, 10: 0.0, 20: 0.0}


def test_pose_auc_errors():
    with pytest.raises(ValueError, match="non-empty"):
        metrics.pose_auc([])
    with pytest.raises(ValueError, match="NaN"):
        metrics.pose_auc([1.0, math.nan])
    with pytest.raises(ValueError, match=">= 0"):
        metrics.pose_auc([-1.0])
    with pytest.raises(ValueError, match="thresholds"):
        metrics.pose_auc([1.0], thresholds=(0,))
