"""Bad input, case by case, on copies of a small generated class and its run folder.

Every case builds one bad input, runs the command a user would run (through ``splatlab.cli.main``, as from
a shell) and checks that:

- the answer is what the case calls for: a ``data check`` problem (exit 1) or warning (exit 0) naming the
  file, or a one-line ``splatlab <command>: <path>: ...`` error on stderr with exit code 2 (no traceback);
- the dataset folder (and the query files) are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatlab.cli import main

# ----------------------------------------------------------------------------------------------------------
# Building bad inputs from a good class folder `c` (a copy); each returns the file the message must name.
# ----------------------------------------------------------------------------------------------------------


def _transforms(c: Path) -> dict:
    return json.loads((c / "transforms.json").read_text())


def _set_pose(c: Path, frame: int, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    meta = _transforms(c)
    m = np.array(meta["frames"][frame]["transform_matrix"], dtype=float)
    meta["frames"][frame]["transform_matrix"] = edit(m).tolist()
    (c / "transforms.json").write_text(json.dumps(meta))  # json writes NaN as NaN, as numpy users would
    return c / "transforms.json"


def _set_angle(c: Path, value: float) -> Path:
    meta = _transforms(c)
    meta["camera_angle_x"] = value
    (c / "transforms.json").write_text(json.dumps(meta))
    return c / "transforms.json"


def _train_image(c: Path, i: int = 3) -> Path:
    return c / "train" / "good" / f"{i}.png"


def truncated(c: Path) -> Path:
    p = _train_image(c)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def zero_bytes(c: Path) -> Path:
    p = _train_image(c)
    p.write_bytes(b"")
    return p


def nan_pose(c: Path) -> Path:
    def edit(m):
        m[0, 3] = np.nan
        return m

    return _set_pose(c, 2, edit)


def scaled_pose(c: Path) -> Path:  # rotation block not orthonormal
    return _set_pose(c, 2, lambda m: np.diag([1.5, 1.5, 1.5, 1.0]) @ m)


def singular_pose(c: Path) -> Path:
    def edit(m):
        m[:3, 2] = 0.0
        return m

    return _set_pose(c, 2, edit)


def reflected_pose(c: Path) -> Path:
    return _set_pose(c, 2, lambda m: m @ np.diag([1.0, 1.0, -1.0, 1.0]))


def no_transforms(c: Path) -> Path:
    (c / "transforms.json").unlink()
    return c / "transforms.json"


def corrupt_json(c: Path) -> Path:
    p = c / "transforms.json"
    p.write_text(p.read_text()[:-40])
    return p


def image_without_frame(c: Path) -> Path:
    p = c / "train" / "good" / "999.png"
    shutil.copy(_train_image(c, 0), p)
    return p


def frame_without_image(c: Path) -> Path:
    p = _train_image(c, 5)
    p.unlink()
    return p


def mask_name_mismatch(c: Path) -> Path:
    d = c / "ground_truth" / "Burrs"
    (d / "0_mask.png").rename(d / "0-mask.png")
    return d / "0-mask.png"


def mask_size_mismatch(c: Path) -> Path:
    p = c / "ground_truth" / "Stains" / "0_mask.png"
    Image.open(p).resize((20, 20)).save(p)
    return p


def empty_class(c: Path) -> Path:
    for d in ("train", "test", "ground_truth"):
        shutil.rmtree(c / d)
    (c / "train").mkdir()
    return c


def _convert(mode: str) -> Callable[[Path], Path]:
    def build(c: Path) -> Path:
        p = _train_image(c, 4)
        im = Image.open(p).convert("RGB")
        if mode == "I;16":
            gray = np.asarray(im.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(gray).save(p)
        else:
            im.convert(mode).save(p)
        return p

    return build


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]
    check: str  # "problem", "warning" or "clean": what `splatlab data check` must say
    train: bool  # `splatlab train` must stop with a one-line error naming the file (exit 2)
    words: str = ""  # also in the message


DATA_CASES = [
    Case("truncated image", truncated, "problem", True, "not a readable image"),
    Case("zero-byte image", zero_bytes, "problem", True, "not a readable image"),
    Case("NaN pose", nan_pose, "problem", True, "NaN"),
    Case("non-rigid pose", scaled_pose, "problem", True, "not a rigid transform"),
    Case("singular pose", singular_pose, "problem", True, "singular"),
    Case("reflected pose", reflected_pose, "problem", True, "not a rigid transform"),
    Case("zero camera_angle_x", lambda c: _set_angle(c, 0.0), "problem", True, "camera_angle_x"),
    Case("NaN camera_angle_x", lambda c: _set_angle(c, float("nan")), "problem", True, "camera_angle_x"),
    Case("missing transforms.json", no_transforms, "problem", True, "missing"),
    Case("corrupt JSON", corrupt_json, "problem", True, "malformed"),
    Case("frame without an image", frame_without_image, "problem", True, "missing"),
    Case("image without a frame", image_without_frame, "problem", False, "without a frame"),
    Case("mask name mismatch", mask_name_mismatch, "problem", False, "mask without a test image"),
    Case("mask size mismatch", mask_size_mismatch, "problem", False, "mask is 20x20"),
    Case("empty class", empty_class, "problem", False, "empty class"),
    Case("16-bit image", _convert("I;16"), "warning", False, "16-bit"),
    Case("palette image", _convert("P"), "warning", False, "palette"),
    Case("grayscale image", _convert("L"), "clean", False),
    Case("RGBA image", _convert("RGBA"), "clean", False),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(capsys, command: str, path: Path, words: str) -> str:
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert "Traceback" not in err, err
    assert last.startswith(f"splatlab {command}: "), err
    assert str(path) in last or path.name in last, (path, last)
    assert words in last, (words, last)
    return last


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.name)
def test_bad_dataset(case: Case, small_class, tmp_path, capsys):
    c = tmp_path / "data" / small_class.name
    shutil.copytree(small_class, c)
    bad = case.build(c)
    before = _snapshot(c.parent)

    code = main(["data", "check", str(c)])
    out = capsys.readouterr().out
    if case.check == "clean":
        assert code == 0 and "ERROR" not in out and "WARNING" not in out, out
    else:
        tag = "ERROR" if case.check == "problem" else "WARNING"
        assert code == (1 if case.check == "problem" else 0), out
        lines = [ln for ln in out.splitlines() if ln.startswith(tag) and str(bad) in ln]
        assert lines and case.words in " ".join(lines), out

    if case.train:
        run = ["--out", str(tmp_path / "run"), "--preset", "fast", "--iterations", "5"]
        assert main(["train", str(c), *run]) == 2
        _one_line_error(capsys, "train", bad, case.words)
        assert not (tmp_path / "run" / "splats.ply").exists()  # stopped before training
    assert _snapshot(c.parent) == before  # nothing in the dataset folder changed


def test_converted_images_load_as_rgb(small_class, tmp_path):
    from splatlab.data.mad import read_image

    reference = read_image(_train_image(small_class, 4))
    luma = reference @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    for mode, expected, tol in (("I;16", luma, 0.01), ("L", luma, 0.01), ("RGBA", reference, 1e-6),
                                ("P", reference, 0.1)):
        c = tmp_path / mode.replace(";", "")
        shutil.copytree(small_class, c)
        img = read_image(_convert(mode)(c))
        assert img.shape == reference.shape and img.dtype == np.float32
        # a 16-bit image is scaled by 1/65535, not clipped to white as an 8-bit conversion would do
        got = img[..., 0] if expected.ndim == 2 else img
        assert np.abs(got - expected).mean() < tol, mode


# ----------------------------------------------------------------------------------------------------------
# Run folders and queries: `splatlab detect`
# ----------------------------------------------------------------------------------------------------------


def truncated_ply(run: Path) -> Path:
    p = run / "splats.ply"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def nan_ply(run: Path) -> Path:
    from splatlab.splats import load_ply, save_ply

    splats = load_ply(run / "splats.ply")
    splats["means"].data[3, 1] = float("nan")
    save_ply(splats, run / "splats.ply")
    return run / "splats.ply"


def no_ply(run: Path) -> Path:
    (run / "splats.ply").unlink()
    return run / "splats.ply"


RUN_CASES = [
    ("truncated PLY", truncated_ply, "PLY"),
    ("PLY with NaN", nan_ply, "non-finite"),
    ("run folder without splats.ply", no_ply, "not found"),
]


@pytest.mark.parametrize("name,build,words", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_run_folder(name, build, words, small_class, small_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    bad = build(run)
    query = small_class / "test" / "good" / "0.png"
    before = _snapshot(small_class)
    assert main(["detect", str(run), str(query), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    _one_line_error(capsys, "detect", bad, words)
    assert _snapshot(small_class) == before


def test_moved_class_folder_names_the_path_and_the_argument(small_class, small_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    config = json.loads((run / "config.json").read_text())
    config["data"] = {"class_dir": "../nowhere/01Cat", "class_dir_absolute": str(tmp_path / "gone"),
                      "size": 48}
    (run / "config.json").write_text(json.dumps(config))
    query = small_class / "test" / "good" / "0.png"
    assert main(["detect", str(run), str(query), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    line = _one_line_error(capsys, "detect", run / "config.json", "--data")
    assert str(tmp_path / "gone") in line and "nowhere/01Cat" in line


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


QUERY_CASES = [
    ("NaN query", lambda d: _npy(d / "nan.npy", np.full((48, 48, 3), np.nan, np.float32)), "NaN"),
    ("two channels", lambda d: _npy(d / "two.npy", np.zeros((48, 48, 2), np.float32)), "2 channels"),
    ("out of range", lambda d: _npy(d / "range.npy", np.full((48, 48, 3), 3.0, np.float32)), "[0, 1]"),
    ("truncated query", lambda d: truncated_query(d), "not a readable image"),
]


def truncated_query(d: Path) -> Path:
    p = d / "cut.png"
    Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:-30])
    return p


@pytest.mark.parametrize("name,build,words", QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_bad_query(name, build, words, small_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPLATLAB_FAST", "1")
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    queries = tmp_path / "queries"
    queries.mkdir()
    bad = build(queries)
    before = _snapshot(queries)
    out = tmp_path / "out"
    assert main(["detect", str(run), str(queries), "--out", str(out), "--no-progress"]) == 2
    _one_line_error(capsys, "detect", bad, words)
    assert _snapshot(queries) == before and not out.exists()  # checked before anything was written


def test_non_square_query_keeps_its_aspect_ratio(small_class, small_run, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SPLATLAB_FAST", "1")
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    queries = tmp_path / "queries"
    queries.mkdir()
    src = np.asarray(Image.open(small_class / "test" / "good" / "0.png").convert("RGB"))
    wide = np.full((150, 200, 3), 255, np.uint8)  # 200x150 (WxH): the object, centred, with more white
    up = np.asarray(Image.fromarray(src).resize((150, 150)))
    wide[:, 25:175] = up
    Image.fromarray(wide).save(queries / "wide.png")
    before = _snapshot(queries)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="splatlab.query"):
        assert main(["detect", str(run), str(queries), "--out", str(out), "--no-progress"]) == 0
    assert f"{queries / 'wide.png'}: is 200x150 (WxH)" in caplog.text and "padded with white" in caplog.text
    assert np.load(out / "wide_map.npy").shape == (150, 200)  # the map is cut back to the image as given
    assert _snapshot(queries) == before
