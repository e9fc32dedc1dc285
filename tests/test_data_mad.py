"""The MAD loader on a tiny MAD-layout fixture written here, with MAD's exact names."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splatlab.cameras import look_at, opengl_c2w_to_viewmat, spherical_eye, viewmat_to_opengl_c2w
from splatlab.data import list_classes, load_mad_class, load_test_poses, natural_key

N_VIEWS = 12  # > 10 so that lexical order ("10" < "2") and numeric order differ
W = H = 8
ANGLE_X = 0.69


def train_pixels(i: int) -> np.ndarray:
    """A distinct RGBA image per view: colour encodes the index, alpha is 50% in the top half. [H, W, 4]"""
    a = np.zeros((H, W, 4), np.uint8)
    a[..., 0] = 10 * i
    a[..., 1] = 200
    a[..., 3] = 255
    a[: H // 2, :, 3] = 128
    return a


def write_fixture(root: Path, name: str = "01Gorilla") -> Path:
    """Write one MAD-Sim-style class folder and return it."""
    c = root / name
    (c / "train" / "good").mkdir(parents=True)
    frames = []
    eye = spherical_eye(
        torch.arange(N_VIEWS) * 30.0, torch.full((N_VIEWS,), 20.0), torch.full((N_VIEWS,), 4.0)
    )
    c2w = viewmat_to_opengl_c2w(look_at(eye))
    for i in range(N_VIEWS):
        Image.fromarray(train_pixels(i), "RGBA").save(c / "train" / "good" / f"{i}.png")
        frames.append({"file_path": f"./train/good/{i}.png", "transform_matrix": c2w[i].tolist()})
    (c / "transforms.json").write_text(json.dumps({"camera_angle_x": ANGLE_X, "frames": frames}))
    for kind in ("good", "Burrs", "Missing", "Stains"):
        (c / "test" / kind).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((H, W, 3), 40 * k + 3, np.uint8)).save(c / "test" / kind / f"{k}.png")
            if kind != "good":
                (c / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                m = np.zeros((H, W), np.uint8)
                m[2 * k : 2 * k + 2, :4] = 255  # 2x2-aligned blocks survive a 2x downscale
                Image.fromarray(m).save(c / "ground_truth" / kind / f"{k}_mask.png")
    (c / "license").write_text("test fixture\n")
    (c / "readme").write_text("test fixture\n")
    return c


def tree_hash(root: Path) -> str:
    """Hash of every path, size and content under ``root``."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def mad_class(tmp_path):
    return write_fixture(tmp_path)


def test_natural_order():
    names = ["10.png", "9.png", "1.png", "02Cat", "1Dog", "100.png"]
    assert sorted(names, key=natural_key) == ["1.png", "1Dog", "02Cat", "9.png", "10.png", "100.png"]


def test_loads_train_views_with_cameras(mad_class):
    before = tree_hash(mad_class)
    c = load_mad_class(mad_class)
    assert c.name == "01Gorilla"
    assert c.train.images.shape == (N_VIEWS, H, W, 3) and c.train.images.dtype == torch.float32
    assert [p.name for p in c.train.paths] == [f"{i}.png" for i in range(N_VIEWS)]  # numeric, not lexical
    # View i is identified by its red channel: numeric order all the way.
    torch.testing.assert_close(c.train.images[:, -1, 0, 0], torch.arange(N_VIEWS) * 10 / 255.0)
    meta = json.loads((mad_class / "transforms.json").read_text())
    expected = opengl_c2w_to_viewmat(torch.tensor([f["transform_matrix"] for f in meta["frames"]]))
    torch.testing.assert_close(c.train.cameras.viewmats, expected)
    f = 0.5 * W / math.tan(0.5 * ANGLE_X)
    torch.testing.assert_close(
        c.train.cameras.Ks[0], torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    )
    assert tree_hash(mad_class) == before  # the loader never writes


def test_rgba_composited_on_white(mad_class):
    img = load_mad_class(mad_class).train.images[3]
    a = 128 / 255.0
    expected_top = torch.tensor([30 / 255.0 * a + (1 - a), 200 / 255.0 * a + (1 - a), 0.0 * a + (1 - a)])
    torch.testing.assert_close(img[0, 0], expected_top)
    torch.testing.assert_close(img[-1, 0], torch.tensor([30 / 255.0, 200 / 255.0, 0.0]))


def test_test_samples_labels_masks(mad_class):
    test = load_mad_class(mad_class).test
    assert [(s.defect, s.path.name) for s in test][:3] == [
        ("good", "0.png"),
        ("good", "1.png"),
        ("Burrs", "0.png"),
    ]
    assert {s.defect for s in test} == {"good", "Burrs", "Missing", "Stains"}
    for s in test:
        assert s.image.shape == (H, W, 3) and s.mask.shape == (H, W) and s.mask.dtype == torch.bool
        assert s.label == int(s.defect != "good")
        k = int(s.path.stem)
        expected = torch.zeros(H, W, dtype=torch.bool)
        if s.label:
            expected[2 * k : 2 * k + 2, :4] = True
        assert torch.equal(s.mask, expected)


def test_size_downscales_consistently(mad_class):
    full, half = load_mad_class(mad_class), load_mad_class(mad_class, size=W // 2)
    assert half.train.images.shape == (N_VIEWS, H // 2, W // 2, 3)
    # Area interpolation: each output pixel is the mean of a 2x2 block.
    torch.testing.assert_close(
        half.train.images,
        full.train.images.reshape(N_VIEWS, H // 2, 2, W // 2, 2, 3).mean((2, 4)),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(half.train.cameras.Ks[:, :2], full.train.cameras.Ks[:, :2] / 2)
    assert half.train.cameras.width == W // 2
    for s in half.test:  # nearest: mask values stay boolean and keep their place
        assert s.mask.shape == (H // 2, W // 2)
        if s.label:
            assert s.mask.any()


def test_missing_transforms_names_the_file(mad_class):
    (mad_class / "transforms.json").unlink()
    with pytest.raises(FileNotFoundError, match="transforms.json"):
        load_mad_class(mad_class)


def test_missing_mask_names_the_file(mad_class):
    (mad_class / "ground_truth" / "Stains" / "1_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="1_mask.png"):
        load_mad_class(mad_class)


def test_list_classes_numeric(tmp_path):
    for name in ("10Zebra", "2Bird", "01Gorilla"):
        (tmp_path / name / "train").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    assert [p.name for p in list_classes(tmp_path)] == ["01Gorilla", "2Bird", "10Zebra"]


def test_test_poses_order_and_resize(mad_class):
    frames = []
    for kind in ("Stains", "good"):
        for k in (10, 2):
            frames.append(
                {
                    "file_path": f"test/{kind}/{k}.png",
                    "viewmat": torch.eye(4).tolist(),
                    "K": [[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]],
                }
            )
    (mad_class / "test_poses.json").write_text(json.dumps({"width": W, "height": H, "frames": frames}))
    poses = load_test_poses(mad_class, size=W // 2)
    assert poses.paths == ["test/good/2.png", "test/good/10.png", "test/Stains/2.png", "test/Stains/10.png"]
    torch.testing.assert_close(poses.cameras.Ks[0, 0, 0], torch.tensor(5.0))
