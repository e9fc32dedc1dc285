"""The expected-error field: fitted where good views disagree with the splats, rendered at a pose, saved."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from splatlab.anomaly import AnomalyConfig
from splatlab.cameras import Cameras, intrinsics, look_at, spherical_eye
from splatlab.data import TrainViews
from splatlab.detect import DetectorModel, detect
from splatlab.expected_error import (
    ExpectedError,
    expected_error_path,
    fit_expected_error,
    fit_key,
    normalize_map,
    render_expected_error,
)
from splatlab.pose import PoseConfig
from splatlab.splats import random_splats, render_splats, save_ply

SIZE = 40
ANOMALY = AnomalyConfig(
    method="rgb", size=64, blur_sigma=2.0, presmooth=0.0, appearance="none", error_floor=None
)
POSE = PoseConfig(k=1, steps=4, backend="cpu")


def _cameras(az, el) -> Cameras:
    az, el = torch.as_tensor(az, dtype=torch.float32), torch.as_tensor(el, dtype=torch.float32)
    eye = spherical_eye(az, el, torch.full_like(az, 4.0))
    return Cameras(look_at(eye), intrinsics(1.1 * SIZE, SIZE, SIZE, n=len(az)), SIZE, SIZE)


def _render(splats, cams: Cameras) -> torch.Tensor:
    with torch.no_grad():
        return render_splats(splats, cams, background=torch.ones(3), backend="cpu")[0].clamp(0, 1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Splats of a blob, and 'photos' of it in which the Gaussians with x > 0.3 are brighter: a part the
    splats always get wrong, like a highlight they cannot draw."""
    splats = random_splats(250, extent=0.7, init_opacity=0.9, init_scale=1.6, seed=3)
    shiny = splats["means"][:, 0].detach() > 0.3
    photo_splats = random_splats(250, extent=0.7, init_opacity=0.9, init_scale=1.6, seed=3)
    with torch.no_grad():
        photo_splats["sh0"][shiny] += 1.0
    az = torch.arange(0.0, 360.0, 30.0)
    el = torch.cat([torch.full_like(az, 15.0), torch.full_like(az, 40.0)])
    cams = _cameras(torch.cat([az, az + 15.0]), el)
    views = TrainViews(_render(photo_splats, cams), cams, [])
    run = tmp_path_factory.mktemp("run")
    save_ply(splats, run / "splats.ply")
    return splats, photo_splats, shiny, views, run


def _fit(splats, views, anomaly=ANOMALY):
    return fit_expected_error(splats, views, anomaly, background=torch.ones(3), eps2d=0.3, backend="cpu",
                              progress=False)


def _field(weighted, weights, directions, mean=0.5, key="k") -> ExpectedError:
    weighted = torch.as_tensor(weighted, dtype=torch.float32)
    weights = torch.as_tensor(weights, dtype=torch.float32)
    return ExpectedError(weighted, weights, torch.as_tensor(directions, dtype=torch.float32), torch.zeros(3),
                         mean, key)


def test_the_field_is_high_where_good_views_disagree(scene):
    splats, _, shiny, views, _ = scene
    field = _fit(splats, views)
    values = field.values()
    assert values.shape == (250,) and field.weighted.shape == (250, len(views.images))
    assert field.mean > 0 and field.key == fit_key(ANOMALY)
    assert float(values[shiny].mean()) > 3 * float(values[~shiny].mean())
    # At a new pose the rendered field is high over the shiny part, the mean off the object.
    cam = _cameras([100.0], [25.0])
    e = render_expected_error(splats, field, cam.viewmats[0], cam.Ks[0], SIZE, SIZE, view_sigma=15.0,
                              eps2d=0.3,
                              backend="cpu")
    assert e.shape == (SIZE, SIZE)
    assert torch.allclose(e[0, 0], torch.tensor(field.mean))
    with torch.no_grad():
        _, alpha, _ = render_splats(splats, cam, background=torch.ones(3), backend="cpu")
    assert float(e[alpha[0, ..., 0] > 0.9].max()) > 2 * float(e[alpha[0, ..., 0] > 0.9].min())


def test_a_narrow_view_kernel_expects_what_the_nearby_views_got_wrong():
    # Gaussian 0 was wrong (map 4 per unit weight) only in the view from +x; Gaussian 1 only from -x.
    field = _field([[40.0, 0.0], [0.0, 40.0]], [[10.0, 10.0], [10.0, 10.0]], [[1, 0, 0], [-1, 0, 0]],
                   mean=1.0)
    from_px = look_at(torch.tensor([4.0, 0.3, 0.0]))  # close to the +x view
    near = field.values(from_px, view_sigma=10.0)
    assert float(near[0]) > 3.5 and float(near[1]) < 0.2
    alike = field.values()  # every view alike: (40 + κμ) / (20 + κ) for both
    torch.testing.assert_close(alike, torch.full((2,), 41.0 / 21.0))
    torch.testing.assert_close(field.values(from_px, view_sigma=1e4), alike, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="viewmat"):
        field.values(None, view_sigma=10.0)
    # A held-out view leaves its own map out: only the -x view is left, which saw Gaussian 1 wrong.
    torch.testing.assert_close(field.values(exclude=[0]), torch.tensor([1.0 / 11.0, 41.0 / 11.0]))
    torch.testing.assert_close(field.values(exclude=[5]), alike)  # not a column: nothing left out
    with pytest.raises(ValueError, match="error_view_sigma"):
        AnomalyConfig(error_view_sigma=-1.0)


def test_the_view_kernel_follows_a_highlight_that_moves_with_the_view(scene):
    """Photos in which the shiny part is bright only from the views with azimuth < 180°: seen from there, a
    narrow kernel expects the error on it; seen from the other side, it does not, unlike the plain field."""
    splats, photo_splats, shiny, views, _ = scene
    plain = _render(splats, views.cameras)
    az = torch.rad2deg(torch.atan2(*torch.linalg.inv(views.cameras.viewmats)[:, [1, 0], 3].T)) % 360
    lit = (az < 180)[:, None, None, None]
    field = _fit(splats, TrainViews(torch.where(lit, views.images, plain), views.cameras, []))
    lit_side, dark_side = _cameras([90.0], [25.0]).viewmats[0], _cameras([270.0], [25.0]).viewmats[0]
    on_lit = field.values(lit_side, view_sigma=15.0)[shiny].mean()
    on_dark = field.values(dark_side, view_sigma=15.0)[shiny].mean()
    assert float(on_lit) > 2 * float(on_dark)
    assert float(field.values()[shiny].mean()) > 1.5 * float(on_dark)


def test_normalize_map_divides_by_the_blurred_field_plus_a_floor():
    field = _field(torch.ones(3, 1), torch.ones(3, 1), [[0.0, 0.0, 1.0]])
    config = AnomalyConfig(blur_sigma=0.0, error_floor=1.0)
    amap = torch.full((8, 8), 3.0)
    out = normalize_map(amap, torch.full((4, 4), 1.0), field, config)
    torch.testing.assert_close(out, torch.full((8, 8), 2.0))  # 3 / (1 + 1.0 * 0.5)
    with pytest.raises(ValueError, match="error_floor"):
        AnomalyConfig(error_floor=0.0)
    assert AnomalyConfig.paper().error_floor is None


def test_save_load_an_old_and_a_broken_file(tmp_path):
    field = _field(torch.arange(8.0).reshape(4, 2), torch.ones(4, 2), [[0, 0, 1], [1, 0, 0]], 0.25, "abc")
    path = field.save(tmp_path / "e.pt")
    back = ExpectedError.load(path)
    torch.testing.assert_close(back.weighted, field.weighted)
    torch.testing.assert_close(back.directions, field.directions)
    assert back.mean == 0.25 and back.key == "abc" and back.views.tolist() == [0, 1]
    torch.save({"format": 2, "weighted": field.weighted}, tmp_path / "v2.pt")  # fitted without held-out views
    with pytest.raises(ValueError, match="older splatlab"):
        ExpectedError.load(tmp_path / "v2.pt")
    torch.save({"values": torch.ones(4), "mean": 0.25, "key": "abc"}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="older splatlab"):
        ExpectedError.load(tmp_path / "old.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        ExpectedError.load(tmp_path / "bad.pt")


def test_detection_fits_once_keeps_it_and_discounts_the_known_nuisance(scene, monkeypatch):
    splats, photo_splats, _, views, run = scene
    anomaly = dataclasses.replace(ANOMALY, error_floor=0.25)
    model = DetectorModel.from_run(run, views, pose_config=POSE, anomaly=anomaly, calibration_source=None)
    cam = _cameras([100.0], [25.0])
    good = _render(photo_splats, cam)[0]  # a good view: only the usual disagreement
    bad = good.clone()
    bad[30:34, 8:12] = torch.tensor([0.1, 0.9, 0.1])  # plus a defect on the left
    plain = DetectorModel.from_run(run, views, pose_config=POSE, anomaly=ANOMALY, calibration_source=None)
    vm = cam.viewmats[0]
    ratio_plain = detect(bad, plain, viewmat=vm).score / detect(good, plain, viewmat=vm).score
    ratio = detect(bad, model, viewmat=vm).score / detect(good, model, viewmat=vm).score
    assert ratio > 1.2 * ratio_plain  # the defect stands out more against the discounted nuisance
    assert expected_error_path(run, anomaly).is_file()
    assert model.expected_error.views.tolist() == list(range(len(views.images)))  # every training view
    # A second model reads the saved field instead of fitting again.
    monkeypatch.setattr("splatlab.detect.fit_expected_error", lambda *a, **k: pytest.fail("fitted again"))
    again = DetectorModel.from_run(run, views, pose_config=POSE, anomaly=anomaly, calibration_source=None)
    torch.testing.assert_close(again.expected_error_field().weighted, model.expected_error.weighted)
