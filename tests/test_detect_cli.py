"""``splatlab detect``: overlays, maps and results.json that agree with the library; calibrating once."""

from __future__ import annotations

import json
import logging
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from splatlab.cli import main


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setenv("SPLATLAB_FAST", "1")


def test_detect_writes_overlays_maps_and_results_that_match_the_library(small_class, small_run, tmp_path,
                                                                        fast, capsys):
    from splatlab.data.mad import read_image
    from splatlab.detect import detect, load_detector

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    out = tmp_path / "out"
    assert main(["detect", str(run), str(small_class / "test"), "--out", str(out), "--json",
                 "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    assert printed == results
    images = sorted((small_class / "test").rglob("*.png"))
    assert len(results["images"]) == len(images) == 5
    assert results["settings"]["anomaly"]["method"] == "cosine"
    model = load_detector(run)
    assert results["settings"]["calibration"] == model.calibration.to_dict()  # the saved one was used
    for r in results["images"]:
        det = detect(read_image(r["image"]), model)  # the same image through the library
        assert r["score"] == pytest.approx(det.score, rel=1e-6)
        assert r["decision"] == ("defective" if det.decision else "good")
        assert r["calibrated_score"] == pytest.approx(det.normalized_score, rel=1e-6)
        amap = np.load(r["map"])
        assert amap.shape == (48, 48) and amap.dtype == np.float32
        np.testing.assert_allclose(amap, det.map_full.numpy(), rtol=1e-5, atol=1e-6)
        assert np.asarray(r["viewmat"]).shape == (4, 4)
        overlay = Image.open(r["overlay"])
        assert overlay.size[0] > 3 * overlay.size[1]  # four panels side by side
    assert {p.name for p in out.iterdir()} >= {"Burrs_0_overlay.png", "good_1_map.npy", "results.json"}
    from splatlab.atomic import dir_mode, file_mode  # 0755 / 0644 under the usual umask

    assert stat.S_IMODE(out.stat().st_mode) == dir_mode()
    assert all(stat.S_IMODE(p.stat().st_mode) == file_mode() for p in out.iterdir())


def test_first_use_calibrates_and_saves_and_png16_maps(small_class, small_run, tmp_path, fast, caplog):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    for old in run.glob("calibration_cosine_pose_*.json"):
        old.unlink()
    query = small_class / "test" / "Stains" / "0.png"
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = main(["detect", str(run), str(query), "--out", str(out), "--map-format", "png16",
                     "--no-progress"])
    assert code == 0 and "calibrating on its held-out good views" in caplog.text
    assert len(list(run.glob("calibration_cosine_pose_*.json"))) == 1  # kept for next time
    results = json.loads((out / "results.json").read_text())
    cal = results["settings"]["calibration"]
    png = Image.open(out / "0_map.png")
    assert png.mode.startswith("I;16") and png.size == (48, 48)
    u16 = np.asarray(png).astype(np.float64)
    # 65535 * calibrated / 2, so the image score's pixel lands at (score's calibrated value) * 32767.5; the
    # score is the map's maximum at 224², and shrinking the map to the query's 48² (antialiased) lowers a
    # peak, never raises it
    expected = np.clip(results["images"][0]["calibrated_score"] / 2, 0, 1) * 65535
    assert 0.8 * expected < u16.max() < expected + 0.01 * 65535
    assert cal["method"] == "cosine" and cal["threshold"] > cal["pixel_median"]


def test_user_errors_are_one_line(small_class, small_run, tmp_path, capsys):
    test, o = small_class / "test", str(tmp_path / "o")
    cases = [
        ([str(tmp_path / "nope"), str(test), "--out", o], "nope"),
        ([str(small_run), str(tmp_path / "missing.png"), "--out", o], "missing.png"),
        ([str(small_run), str(test), "--out", str(test / "good" / "res")], "inside the input folder"),
        ([str(small_run), str(small_class / "license"), "--out", o], "not an image"),
    ]
    for argv, words in cases:
        assert main(["detect", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("splatlab detect: ") and words in err and "\n" not in err, err
    assert not (test / "good" / "res").exists()
    with pytest.raises(FileNotFoundError):  # --debug shows the traceback instead
        main(["detect", str(tmp_path / "nope"), str(test), "--debug"])
