"""`splatlab data check`: every error is reported, names its file, and leaves the folder unchanged."""

import json

import numpy as np
import pytest
from PIL import Image
from test_data_mad import tree_hash, write_fixture

from splatlab.data.check import check_cli, check_dataset


def _drop_transforms(c):
    (c / "transforms.json").unlink()
    return "transforms.json"


def _drop_frame_image(c):
    (c / "train" / "good" / "7.png").unlink()
    return "7.png"


def _image_without_frame(c):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(c / "train" / "good" / "12.png")
    return "12.png"


def _mask_without_image(c):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(c / "ground_truth" / "Burrs" / "5_mask.png")
    return "5_mask.png"


def _mask_wrong_size(c):
    Image.fromarray(np.zeros((4, 8), np.uint8)).save(c / "ground_truth" / "Missing" / "1_mask.png")
    return "1_mask.png"


def _defect_without_mask(c):
    (c / "ground_truth" / "Stains" / "0_mask.png").unlink()
    return "test/Stains/0.png"


def _stray_file(c):
    (c / "test" / "good" / "notes.txt").write_text("hello")
    return "notes.txt"


def _empty_class(c):
    import shutil

    for sub in ("train", "test", "ground_truth"):
        shutil.rmtree(c / sub)
    return "empty class"


BREAKERS = [
    _drop_transforms,
    _drop_frame_image,
    _image_without_frame,
    _mask_without_image,
    _mask_wrong_size,
    _defect_without_mask,
    _stray_file,
    _empty_class,
]


def test_valid_fixture_passes(tmp_path, capsys):
    write_fixture(tmp_path)
    assert check_cli(tmp_path) == 0
    out = capsys.readouterr().out
    assert "01Gorilla" in out and "8x8" in out


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_each_error_is_reported_and_names_its_file(tmp_path, capsys, breaker):
    c = write_fixture(tmp_path)
    needle = breaker(c)
    before = tree_hash(tmp_path)
    assert check_cli(tmp_path) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert errors and any(needle in line for line in errors), out
    assert tree_hash(tmp_path) == before  # nothing written or moved


def test_json_output(tmp_path, capsys):
    c = write_fixture(tmp_path)
    _stray_file(c)
    assert check_cli(c, json=True) == 1  # a class folder works too
    reports = json.loads(capsys.readouterr().out.split("\n]\n")[0] + "\n]")
    assert reports[0]["views"] == 12 and reports[0]["test"]["Burrs"] == 2
    assert any("notes.txt" in p for p in reports[0]["problems"])


def test_missing_folder(tmp_path, capsys):
    from splatlab.cli import main

    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"splatlab data check: {tmp_path / 'nope'}: folder not found"
    assert check_dataset(tmp_path)[0].problems  # no class folders inside
