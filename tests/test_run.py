"""The run folder names its training data; a detector loads from the folder alone, with the defaults."""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat

import pytest
import torch

from splatlab.run import ensure_trained, find_class_dir, read_config, run_data


def test_config_records_the_class_folder_relative_to_the_run(small_class, small_run):
    data = run_data(small_run)
    assert data["size"] == 48 and data["class_dir_absolute"] == str(small_class.resolve())
    assert not data["class_dir"].startswith("/")  # relative: a project moved as a whole keeps working
    assert find_class_dir(small_run).resolve() == small_class.resolve()
    config, _ = read_config(small_run)
    assert config.name == "fast" and config.resolution == 48
    from splatlab.atomic import dir_mode, file_mode  # 0755 / 0644 under the usual umask

    assert stat.S_IMODE(small_run.stat().st_mode) == dir_mode()
    assert all(stat.S_IMODE(p.stat().st_mode) == file_mode() for p in small_run.iterdir())


def test_moving_run_and_data_together_or_apart(small_class, small_run, tmp_path):
    # Both moved together (same relative layout): found through the relative path.
    moved = tmp_path / "project"
    shutil.copytree(small_class.parent, moved / small_class.parent.relative_to(small_class.parents[2]))
    shutil.copytree(small_run, moved / small_run.relative_to(small_class.parents[2]))
    new_run = moved / small_run.relative_to(small_class.parents[2])
    expected = moved / small_class.relative_to(small_class.parents[2])
    assert find_class_dir(new_run).resolve() == expected.resolve() != small_class.resolve()
    # The run moved alone: the absolute path still finds the data.
    alone = tmp_path / "a" / "b" / "c" / "alone"  # deeper: the relative path leads nowhere from here
    shutil.copytree(small_run, alone)
    assert find_class_dir(alone) == small_class.resolve()
    # The data gone from both places: the error names the paths it tried and the argument to pass.
    config = json.loads((alone / "config.json").read_text())
    config["data"]["class_dir_absolute"] = str(tmp_path / "gone")
    (alone / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="data=") as info:
        find_class_dir(alone)
    assert str(tmp_path / "gone") in str(info.value)
    assert find_class_dir(alone, data=expected) == expected  # the override
    with pytest.raises(FileNotFoundError, match="not a class folder"):
        find_class_dir(alone, data=tmp_path)


def test_a_cached_run_without_data_learns_it(small_class, tmp_path):
    root = tmp_path / "runs"
    cached = ensure_trained(small_class, root, "fast", size=48, progress=False, iterations=20)
    assert find_class_dir(cached).resolve() == small_class.resolve()
    config = json.loads((cached / "config.json").read_text())
    del config["data"]  # as written by splatlab before it recorded the data
    (cached / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="names no training data"):
        find_class_dir(cached)
    stamp = (cached / "splats.ply").stat().st_mtime_ns
    assert ensure_trained(small_class, root, "fast", size=48, iterations=20) == cached
    assert (cached / "splats.ply").stat().st_mtime_ns == stamp  # not trained again
    assert find_class_dir(cached).resolve() == small_class.resolve()  # but its data recorded


def test_load_detector_needs_only_the_run_folder_and_has_the_defaults(small_class, small_run, monkeypatch):
    import splatlab
    from splatlab.data import load_mad_class
    from splatlab.detect import DetectorModel
    from splatlab.pose import pose_config
    from splatlab.run import run_eps2d

    monkeypatch.delenv("SPLATLAB_FAST", raising=False)
    model = splatlab.load_detector(small_run)
    assert model.anomaly.method == "cosine"  # the best measured map, as the benchmark and the demo
    assert model.pose_config == dataclasses.replace(pose_config("cpu"), eps2d=run_eps2d(small_run))
    # small_run was calibrated with the fast pose preset: the cpu pipeline's calibration is not that one
    assert model.calibration is None and not model.calibration_path("pose").is_file()
    paper = splatlab.load_detector(small_run, anomaly=splatlab_paper(), pose_config=pose_config("splatpose"))
    assert paper.anomaly.method == "splatpose" and paper.pose_config.k == 1 and paper.calibration is None
    monkeypatch.setenv("SPLATLAB_FAST", "1")
    fast = splatlab.load_detector(small_run)
    assert fast.calibration is not None and fast.calibration.method == "cosine"  # the saved one
    views = load_mad_class(small_class, size=48).train
    torch.testing.assert_close(model.views.images, views.images)
    by_hand = DetectorModel.from_run(small_run, views)
    torch.testing.assert_close(by_hand.retriever.cameras.viewmats, model.retriever.cameras.viewmats)


def splatlab_paper():
    from splatlab.anomaly import AnomalyConfig

    return AnomalyConfig.paper()
