"""Anomaly maps and calibration: known answers on tiny images."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from splatlab.anomaly import (
    METHODS,
    AnomalyConfig,
    Calibration,
    CalibrationConfig,
    anomaly_map,
    anomaly_terms,
    calibrate,
    combine_terms,
    gaussian_blur,
    image_score,
    resize_map,
    shifted_cosine_distance,
    ssim_map,
)

SMALL = dict(size=64, blur_sigma=2.0, presmooth=0.6)  # tiny but the same recipe (blurs scaled to 64 px)


def _scene(seed: int = 0, n: int = 2, hw: int = 48) -> torch.Tensor:
    """Smooth, object-like images on white: a few soft coloured disks. [n, hw, hw, 3]"""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij")
    out = torch.ones(n, hw, hw, 3)
    for b in range(n):
        for _ in range(4):
            c = torch.rand(2, generator=g) * hw * 0.6 + hw * 0.2
            r = float(torch.rand(1, generator=g)) * hw * 0.15 + hw * 0.1
            col = torch.rand(3, generator=g) * 0.7
            w = torch.sigmoid((r - ((yy - c[0]) ** 2 + (xx - c[1]) ** 2).sqrt()) * 0.8)[..., None]
            out[b] = out[b] * (1 - w) + col * w
    return out


def _with_blob(images: torch.Tensor, y: int, x: int, r: int = 4) -> torch.Tensor:
    out = images.clone()
    out[:, y - r : y + r, x - r : x + r] = torch.tensor([0.9, 0.1, 0.8])
    return out


@pytest.mark.parametrize("method", METHODS)
def test_identical_images_give_a_zero_map(method):
    q = _scene()
    maps = anomaly_map(q, q.clone(), AnomalyConfig(method=method, **SMALL))
    assert maps.shape == (2, 64, 64)
    torch.testing.assert_close(maps, torch.zeros_like(maps), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_a_pasted_blob_lights_up_where_it_is(method):
    q = _scene(1)
    bad = _with_blob(q, y=12, x=34)  # 48 px images -> the map is at 64 px: (16, 45.3)
    maps = anomaly_map(bad, q, AnomalyConfig(method=method, **SMALL))
    for m in maps:
        y, x = np.unravel_index(int(m.argmax()), m.shape)
        assert abs(y - 16) <= 4 and abs(x - 45) <= 4, (method, y, x)
    good = anomaly_map(q, q, AnomalyConfig(method=method, **SMALL))
    assert (image_score(maps) > image_score(good) + 1e-3).all()


def test_terms_per_method_and_their_sum_is_the_map():
    q, r = _scene(2, n=1), _with_blob(_scene(2, n=1), 20, 20)
    expected = {
        "splatpose": {"rgb", "stage1", "stage2", "stage3", "stage4"},
        "rgb": {"rgb"},
        "features": {"stage1", "stage2", "stage3", "stage4"},
        "ssim": {"ssim"},
        "cosine": {"cosine1"},
    }
    for method, names in expected.items():
        cfg = AnomalyConfig(method=method, **SMALL)
        terms = anomaly_terms(q[0], r[0], cfg)  # unbatched in, unbatched out
        assert set(terms) == names
        assert all(t.shape == (64, 64) and (t >= -1e-6).all() for t in terms.values())
        torch.testing.assert_close(combine_terms(terms, cfg), anomaly_map(q[0], r[0], cfg))
    # The RGB term is the channel sum of squared differences of 0.5/0.5-normalised images.
    a = torch.full((1, 64, 64, 3), 0.25)
    b = torch.full((1, 64, 64, 3), 0.75)
    rgb = anomaly_terms(a, b, AnomalyConfig(method="rgb", **SMALL))["rgb"]
    torch.testing.assert_close(rgb, torch.full_like(rgb, 3.0))


def test_shifted_cosine_distance_forgives_small_shifts_only():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 8, 12, 12, generator=g)
    moved = torch.roll(f, shifts=1, dims=-1)  # the reference one cell to the right
    inner = (slice(None), slice(2, -2), slice(2, -2))  # away from the rolled-over and replicated borders
    plain = shifted_cosine_distance(moved, f, 0)
    tolerant = shifted_cosine_distance(moved, f, 1)
    assert plain.shape == tolerant.shape == (2, 12, 12)
    assert float(plain[inner].mean()) > 0.5  # random features one cell apart are unrelated
    torch.testing.assert_close(tolerant[inner], torch.zeros_like(tolerant[inner]), atol=1e-5, rtol=0)
    two = torch.roll(f, shifts=2, dims=-2)  # two cells away is beyond shift = 1
    assert float(shifted_cosine_distance(two, f, 1)[inner].mean()) > 0.3
    # Cosine ignores a feature's length: a scaled reference is a perfect match.
    torch.testing.assert_close(
        shifted_cosine_distance(f, 3.0 * f, 0), torch.zeros(2, 12, 12), atol=1e-5, rtol=0
    )
    # Plain cosine distance by hand.
    expected = 1 - torch.nn.functional.cosine_similarity(moved, f, dim=1)
    torch.testing.assert_close(plain, expected.clamp_min(0), atol=1e-5, rtol=0)


def test_cosine_defaults_to_stage_one_and_stages_can_be_set():
    assert AnomalyConfig(method="cosine").stages == (1,)
    assert AnomalyConfig().method == "cosine" and AnomalyConfig().stages == (1,)  # the default map
    assert AnomalyConfig.paper().method == "splatpose" and AnomalyConfig.paper().stages == (1, 2, 3, 4)
    cfg = AnomalyConfig(method="cosine", stages=[1, 2], **SMALL)
    assert cfg.stages == (1, 2)
    q, r = _scene(6, n=1), _with_blob(_scene(6, n=1), 20, 20)
    assert set(anomaly_terms(q, r, cfg)) == {"cosine1", "cosine2"}
    with pytest.raises(ValueError, match="shift"):
        AnomalyConfig(method="cosine", shift=-1)


def test_weights_scale_the_terms():
    q, r = _scene(3, n=1), _with_blob(_scene(3, n=1), 20, 20)
    base = AnomalyConfig.paper(**SMALL)
    only_rgb = dataclasses.replace(base, feature_weight=0.0)
    torch.testing.assert_close(
        anomaly_map(q, r, only_rgb), anomaly_map(q, r, AnomalyConfig(method="rgb", **SMALL))
    )


def test_blur_matches_scipy_and_sigma_zero_is_identity():
    x = torch.rand(3, 40, 52, generator=torch.Generator().manual_seed(0))
    for sigma in (1.0, 4.0):
        ref = np.stack([ndimage.gaussian_filter(a, sigma, mode="mirror") for a in x.numpy()])
        torch.testing.assert_close(gaussian_blur(x, sigma), torch.from_numpy(ref), atol=1e-5, rtol=0)
    assert gaussian_blur(x, 0.0) is x
    # A wider blur spreads an impulse more: its peak drops as 1 / (2 pi sigma^2).
    imp = torch.zeros(1, 64, 64)
    imp[0, 32, 32] = 1.0
    assert abs(float(gaussian_blur(imp, 4.0).max()) - 1 / (2 * np.pi * 16)) < 1e-3


def test_score_is_the_max_and_maps_resize():
    maps = torch.rand(4, 20, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(image_score(maps), maps.reshape(4, -1).max(dim=1).values)
    assert resize_map(maps, (7, 9)).shape == (4, 7, 9)
    assert resize_map(maps[0], (40, 30)).shape == (40, 30)
    const = torch.full((16, 16), 2.5)
    torch.testing.assert_close(resize_map(const, (128, 100)), torch.full((128, 100), 2.5))


def test_ssim_map_known_values():
    a = _scene(4, n=1)
    torch.testing.assert_close(ssim_map(a, a), torch.ones(1, 48, 48), atol=1e-5, rtol=0)
    assert float(ssim_map(a, 1 - a).mean()) < 0.5


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method"):
        AnomalyConfig(method="lpips")
    with pytest.raises(ValueError, match="query"):
        anomaly_map(torch.rand(8, 8), torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match="as many"):
        anomaly_map(torch.rand(2, 8, 8, 3), torch.rand(3, 8, 8, 3))


# ----------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------


def _good_and_bad_maps(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    good = 0.1 * torch.rand(20, 32, 32, generator=g)
    bad = good.clone()
    bad[:, 10:14, 10:14] += 1.0
    return good, bad


def test_calibration_uses_good_maps_and_separates():
    good, bad = _good_and_bad_maps()
    cal = calibrate(good, "splatpose", CalibrationConfig(k=3.5))
    scores = image_score(good).double().numpy()
    med = np.median(scores)
    sigma = 1.4826 * np.median(np.abs(scores - med))
    assert cal.score_median == pytest.approx(med) and cal.score_sigma == pytest.approx(sigma)
    assert cal.threshold == pytest.approx(med + 3.5 * sigma)
    assert not cal.decide(image_score(good)).any()
    assert cal.decide(image_score(bad)).all()
    assert cal.n_views == 20 and len(cal.good_scores) == 20
    # Normalised scale: 0 is the typical good pixel, 1 the threshold.
    assert cal.normalize(cal.threshold) == pytest.approx(1.0)
    assert cal.normalize(cal.pixel_median) == pytest.approx(0.0)


def test_calibration_is_robust_to_one_odd_good_view():
    good, bad = _good_and_bad_maps()
    odd = good.clone()
    odd[0, 5, 5] += 10.0  # one held-out view scores far above the rest (say, a hard pose)
    base, robust = calibrate(good), calibrate(odd)
    spread = base.threshold - base.score_median
    assert abs(robust.threshold - base.threshold) < 0.25 * spread  # a max-based rule would move by ~10
    assert robust.decide(image_score(bad)).all()
    assert robust.decide(image_score(odd[:1])).all()  # the odd view itself is called defective


def test_calibration_falls_back_when_good_scores_tie():
    good = torch.zeros(6, 8, 8)
    good[:, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.2, 1.4])  # MAD 0: more than half tie
    cal = calibrate(good)
    assert cal.score_sigma == pytest.approx(np.std([1.0, 1.0, 1.0, 1.0, 1.2, 1.4]))
    assert cal.threshold > 1.4


def test_calibration_round_trips_through_json_atomically(tmp_path):
    good, _ = _good_and_bad_maps(1)
    cal = calibrate(good, "rgb", CalibrationConfig(source="gt_pose"))
    path = cal.save(tmp_path / "calibration.json")
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]  # no temporary left behind
    back = Calibration.load(path)
    assert back == cal
    assert json.loads(path.read_text())["source"] == "gt_pose"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Calibration.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        Calibration.load(tmp_path / "bad.json")
    old = {k: v for k, v in cal.to_dict().items() if k not in ("k", "score_sigma")}
    (tmp_path / "old.json").write_text(json.dumps(old | {"quantile": 0.99, "margin": 0.5}))
    with pytest.raises(ValueError, match="old.json was written by an older splatlab"):
        Calibration.load(tmp_path / "old.json")


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError, match="good_maps"):
        calibrate(torch.zeros(0, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        calibrate(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="k must"):
        CalibrationConfig(k=0.0)
    with pytest.raises(ValueError, match="source"):
        CalibrationConfig(source="test_set")
