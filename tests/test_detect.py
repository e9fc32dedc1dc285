"""detect(): query handling, known-pose detection, baselines' modes, calibration, class runs and metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings

import numpy as np
import pytest
import torch

from splatlab.anomaly import AnomalyConfig, CalibrationConfig
from splatlab.cameras import Cameras, intrinsics, look_at, spherical_eye
from splatlab.data import TestSample as Sample
from splatlab.data import TrainViews
from splatlab.detect import (
    DetectorModel,
    class_metrics,
    detect,
    holdout_indices,
    prepare_query,
    query_padding,
    render_reference,
    run_class,
    select_queries,
)
from splatlab.pose import PoseConfig
from splatlab.retrieval import Retriever
from splatlab.splats import random_splats, render_splats, save_ply

SIZE = 40
ANOMALY = AnomalyConfig.paper(size=64, blur_sigma=2.0)  # the recipe: these tests were built around it
POSE = PoseConfig(k=1, steps=12, lr=0.01, backend="cpu")


def _cameras(az, el) -> Cameras:
    az, el = torch.as_tensor(az, dtype=torch.float32), torch.as_tensor(el, dtype=torch.float32)
    eye = spherical_eye(az, el, torch.full_like(az, 4.0))
    return Cameras(look_at(eye), intrinsics(1.1 * SIZE, SIZE, SIZE, n=len(az)), SIZE, SIZE)


def _render(splats, cams: Cameras) -> torch.Tensor:
    with torch.no_grad():
        return render_splats(splats, cams, background=torch.ones(3), backend="cpu")[0].clamp(0, 1)


def _blob(image: torch.Tensor, y: int = 14, x: int = 22, r: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    out, mask = image.clone(), torch.zeros(image.shape[:2], dtype=torch.bool)
    out[y - r : y + r, x - r : x + r] = torch.tensor([0.1, 0.9, 0.1])
    mask[y - r : y + r, x - r : x + r] = True
    return out, mask


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A small opaque blob object, 16 training views on two rings, saved as a run folder."""
    splats = random_splats(250, extent=0.7, init_opacity=0.9, init_scale=1.6, seed=3)
    az = torch.arange(0.0, 360.0, 45.0)
    cams = _cameras(
        torch.cat([az, az + 22.5]), torch.cat([torch.full_like(az, 15.0), torch.full_like(az, 40.0)])
    )
    views = TrainViews(_render(splats, cams), cams, [])
    run = tmp_path_factory.mktemp("run")
    save_ply(splats, run / "splats.ply")
    return splats, views, run


@pytest.fixture(scope="module")
def model(scene):
    splats, views, run = scene
    return DetectorModel.from_run(run, views, pose_config=POSE, anomaly=ANOMALY)


def test_prepare_query_converts_or_rejects(caplog):
    rgb = torch.rand(SIZE, SIZE, 3)
    torch.testing.assert_close(prepare_query(rgb, SIZE, SIZE), rgb)
    gray = prepare_query(torch.rand(SIZE, SIZE), SIZE, SIZE)
    assert gray.shape == (SIZE, SIZE, 3) and torch.equal(gray[..., 0], gray[..., 2])
    rgba = torch.cat([torch.zeros(SIZE, SIZE, 3), torch.full((SIZE, SIZE, 1), 0.25)], dim=-1)
    torch.testing.assert_close(prepare_query(rgba, SIZE, SIZE), torch.full((SIZE, SIZE, 3), 0.75))
    u8 = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    torch.testing.assert_close(prepare_query(u8, SIZE, SIZE), torch.ones(SIZE, SIZE, 3))
    with caplog.at_level(logging.WARNING, logger="splatlab.query"):
        wide = prepare_query(torch.zeros(64, 80, 3), SIZE, SIZE, name="wide.png")  # H 64, W 80
    assert "wide.png: is 80x64" in caplog.text and "padded with white to 80x80" in caplog.text
    # the aspect ratio is kept: 8 white rows above and below the 64 black ones, at half size
    assert wide.shape == (SIZE, SIZE, 3)
    assert bool((wide[:3] > 0.99).all() and (wide[-3:] > 0.99).all() and (wide[6:-6] < 0.01).all())
    assert query_padding(64, 80, SIZE, SIZE) == (8, 0, 80, 80)
    assert query_padding(150, 100, SIZE, 2 * SIZE) == (0, 100, 150, 300)  # taller: pad left and right
    assert query_padding(20, 20, SIZE, SIZE) == (0, 0, 20, 20)  # same aspect: resized only
    for bad, match in [
        (torch.rand(SIZE, SIZE, 2), "2 channels"),
        (torch.rand(2, SIZE, SIZE, 3), "one image"),
        (torch.rand(SIZE, SIZE, 3) * 3, r"\[0, 1\]"),
        (torch.full((SIZE, SIZE, 3), float("nan")), "NaN"),
        ("image.png", "tensor or array"),
    ]:
        with pytest.raises(ValueError, match=match):
            prepare_query(bad, SIZE, SIZE)


def test_known_pose_is_clean_and_a_blob_is_found(scene, model):
    splats, views, _ = scene
    vm = views.cameras.viewmats[3]
    good = detect(views.images[3], model, viewmat=vm)
    assert good.map.shape == (64, 64) and good.map_full.shape == (SIZE, SIZE)
    assert good.score < 1e-3 and good.pose is None and good.decision is None
    bad_img, _ = _blob(views.images[3])
    bad = detect(bad_img, model, viewmat=vm)
    y, x = np.unravel_index(int(bad.map_full.argmax()), bad.map_full.shape)
    assert abs(y - 14) <= 3 and abs(x - 22) <= 3
    assert bad.score > 100 * max(good.score, 1e-6)
    assert set(bad.times) == {"coarse", "hypotheses", "refine", "render", "score", "total"}
    # A bigger query is resized for the pipeline and its map comes back at its own size.
    big = torch.nn.functional.interpolate(bad_img.permute(2, 0, 1)[None], size=(80, 80), mode="bilinear")[0]
    assert detect(big.permute(1, 2, 0), model, viewmat=vm).map_full.shape == (80, 80)


def test_modes_nearest_coarse_full(scene, model):
    splats, views, _ = scene
    near = detect(views.images[5], model, mode="nearest")
    assert near.retrieved == 5 and near.score < 1e-3 and near.times["render"] == 0.0
    torch.testing.assert_close(near.reference, views.images[5])
    coarse = detect(views.images[5], model, mode="coarse", exclude=[5])
    assert coarse.retrieved != 5 and coarse.times["render"] > 0
    torch.testing.assert_close(coarse.viewmat, views.cameras.viewmats[coarse.retrieved])
    # A query between training views: the full pipeline refines and beats the coarse pose.
    cam = _cameras([30.0], [25.0])
    query = _render(splats, cam)[0]
    c = detect(query, model, mode="coarse")
    f = detect(query, model, mode="full")
    assert f.pose is not None and f.times["refine"] > 0 and f.retrieved == f.pose.candidates[0].index
    assert f.score < c.score


def test_calibration_from_good_views_gives_decisions(scene, model, caplog):
    splats, views, run = scene
    assert holdout_indices(16, 8) == [0, 8]
    cal = model.calibrate(views, CalibrationConfig(source="gt_pose", holdout_every=4))
    assert cal.n_views == 4 and cal.source == "gt_pose" and cal.threshold > 0
    path = model.calibration_path("gt_pose")
    assert path.is_file() and path.parent == run and path.name.startswith("calibration_splatpose_gt_pose_")
    again = DetectorModel.from_run(
        run, views, pose_config=POSE, anomaly=ANOMALY, calibration_source="gt_pose"
    )
    assert again.calibration == cal
    # keyed by the settings that made it: another pose pipeline or map does not reuse it
    other_pose = dataclasses.replace(POSE, steps=13)
    assert DetectorModel.from_run(run, views, pose_config=other_pose, anomaly=ANOMALY,
                                  calibration_source="gt_pose").calibration is None
    other_map = dataclasses.replace(ANOMALY, blur_sigma=3.0)
    assert DetectorModel.from_run(run, views, pose_config=POSE, anomaly=other_map,
                                  calibration_source="gt_pose").calibration is None
    vm = views.cameras.viewmats[2]
    assert detect(views.images[2], again, viewmat=vm).decision is False
    bad = detect(_blob(views.images[2])[0], again, viewmat=vm)
    assert bad.decision is True and bad.normalized_score > 1.0
    other = DetectorModel(again.splats, again.retriever, POSE, AnomalyConfig(method="rgb", size=64), cal)
    with pytest.raises(ValueError, match="calibration was made for method"):
        detect(views.images[2], other, viewmat=vm)
    # A calibration saved by an older splatlab is ignored with a warning, not used or fatal.
    stale = path
    stale.write_text(json.dumps({"method": "splatpose", "quantile": 0.99, "margin": 0.5}))
    with caplog.at_level(logging.WARNING, logger="splatlab"):
        fresh = DetectorModel.from_run(
            run, views, pose_config=POSE, anomaly=ANOMALY, calibration_source="gt_pose"
        )
    assert fresh.calibration is None and "older splatlab" in caplog.text
    stale.unlink()
    model.calibration = None


def _test_set(views, masks: bool = True) -> list[Sample]:
    samples = []
    for i in (1, 2, 3, 4):
        samples.append(Sample(views.images[i], 0, "good", torch.zeros(SIZE, SIZE, dtype=torch.bool), None))
    for i, kind in zip((5, 6, 9, 10), ("Stains", "Stains", "Burrs", "Burrs"), strict=True):
        img, m = _blob(views.images[i], y=12 + i, x=18 + i)
        samples.append(Sample(img, 1, kind, m if masks else torch.zeros_like(m), None))
    return samples


def test_run_class_and_metrics(scene, model):
    splats, views, _ = scene
    test = _test_set(views)
    run = run_class(
        model,
        test,
        mode="nearest",
        name="blob",
        gt_viewmats=views.cameras.viewmats[[1, 2, 3, 4, 5, 6, 9, 10]],
        n_examples=3,
        progress=False,
    )
    assert run.maps.shape == (8, SIZE, SIZE) and run.scores.shape == (8,)
    assert len(run.examples) == 3 and run.labels[run.example_positions[0]] == 1
    m = class_metrics(run)
    assert m["image_auroc"] == 100.0 and m["pixel_auroc"] > 95 and m["aupro"] > 80
    assert set(m["per_defect"]) == {"Burrs", "Stains"} and m["per_defect"]["Burrs"]["n"] == 2
    assert m["pose_auc"]["5"] == 100.0 and m["seconds_per_query"] > 0
    assert set(m["stage_seconds"]) == {"coarse", "hypotheses", "refine", "render", "score"}
    # Without masks: image-level metrics, a warning, NaN pixel metrics.
    run2 = run_class(model, _test_set(views, masks=False), mode="nearest", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m2 = class_metrics(run2)
    assert any("image-level metrics only" in str(w.message) for w in caught)
    assert m2["image_auroc"] == 100.0 and np.isnan(m2["pixel_auroc"]) and np.isnan(m2["aupro"])


def test_other_maps_come_from_the_same_references(scene, model):
    from splatlab.anomaly import anomaly_map, resize_map

    splats, views, _ = scene
    test = _test_set(views)
    run = run_class(model, test, mode="nearest", progress=False, other_methods=("rgb", model.anomaly.method))
    assert set(run.other_maps) == {"rgb"}  # the run's own method is not repeated
    rgb = run.with_method("rgb")
    assert rgb.method == "rgb" and rgb.decisions is None and rgb.maps.shape == run.maps.shape
    np.testing.assert_allclose(rgb.scores, run.other_scores["rgb"])
    # The same query and retrieved training image, another map.
    i = int(np.flatnonzero(run.labels)[0])  # a defective query: its map is not all zeros
    det = detect(test[i].image, model, mode="nearest")
    cfg = dataclasses.replace(model.anomaly, method="rgb")
    expected = resize_map(anomaly_map(det.query, det.reference, cfg), (SIZE, SIZE)).numpy()
    assert expected.max() > 0.1
    np.testing.assert_allclose(rgb.maps[i], expected, rtol=1e-5, atol=1e-6)
    # Scored like the pipeline: the maximum of the map at the anomaly size, before resizing.
    assert rgb.scores[i] == pytest.approx(float(anomaly_map(det.query, det.reference, cfg).max()), rel=1e-5)
    assert class_metrics(rgb)["image_auroc"] > 50
    with pytest.raises(ValueError, match="ssim"):
        run.with_method("ssim")


def test_select_queries_is_balanced_and_deterministic():
    defects = ["good"] * 10 + ["Burrs"] * 10 + ["Missing"] * 10 + ["Stains"] * 10
    idx = select_queries(defects, 8)
    assert idx == select_queries(defects, 8) and len(set(idx)) == 8
    assert all(sum(defects[i] == t for i in idx) == 2 for t in ("good", "Burrs", "Missing", "Stains"))
    assert select_queries(defects, None) == list(range(40))
    with pytest.raises(ValueError, match="max_queries"):
        select_queries(defects, 1)


def test_the_run_decides_the_low_pass(scene, tmp_path):
    import json
    import shutil

    from splatlab.train import TrainConfig

    splats, views, run = scene
    other = tmp_path / "run"
    shutil.copytree(run, other)
    (other / "config.json").write_text(json.dumps(TrainConfig(eps2d=0.05).to_dict()))
    model = DetectorModel.from_run(other, views, pose_config=POSE, anomaly=ANOMALY, calibration_source=None)
    assert model.pose_config.eps2d == 0.05 and POSE.eps2d != 0.05
    sharp = render_reference(model, views.cameras.viewmats[0])
    model.pose_config = dataclasses.replace(model.pose_config, eps2d=0.3)
    assert not torch.allclose(sharp, render_reference(model, views.cameras.viewmats[0]))


def test_retriever_is_shared_with_pose(model):
    assert isinstance(model.retriever, Retriever) and len(model.retriever) == 16
