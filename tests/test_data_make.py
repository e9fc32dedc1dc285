"""The LEGO-MAD generator: determinism, sizes, masks, and agreement with splatlab's camera conventions."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import ConvexHull
from skimage.draw import polygon
from skimage.morphology import convex_hull_image
from test_data_mad import tree_hash

from splatlab.atomic import dir_mode
from splatlab.cli import main
from splatlab.data import data_dir, default_dataset, load_mad_class, load_test_poses
from splatlab.data.check import check_dataset
from splatlab.data.make import MakeConfig, make_cli, make_dataset, render_view
from splatlab.data.raycast import load_mesh

CLASS = "05Parrot"  # the smallest shipped mesh
TINY = MakeConfig(  # 48 px: at 32 px MAD-sized defects on the thin parrot are often below the acceptance size
    size=48, supersample=2, elevations_deg=(0.0, 50.0), azimuth_step_deg=90.0, test_good=1, test_per_defect=2
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("gen") / "ds", TINY, classes=[CLASS])


@pytest.fixture(scope="module")
def mesh():
    return load_mesh(data_dir() / "meshes" / f"{CLASS}.ply")


def test_layout_sizes_and_check(dataset):
    assert check_dataset(dataset)[0].problems == []
    c = load_mad_class(dataset / CLASS)
    assert c.train.images.shape == (8, 48, 48, 3)
    assert [s.defect for s in c.test] == ["good", "Burrs", "Burrs", "Missing", "Missing", "Stains", "Stains"]
    assert all(s.image.shape == (48, 48, 3) for s in c.test)
    assert not list(dataset.parent.glob(".ds.tmp-*"))  # the temporary folder is gone
    assert dataset.stat().st_mode & 0o777 == dir_mode()  # an ordinary folder, not mkdtemp's 0700
    torch.testing.assert_close(c.train.images[:, 0, 0], torch.ones(8, 3))  # white background corner


def test_same_seed_same_bytes(dataset, tmp_path):
    again = make_dataset(tmp_path / "ds", TINY, classes=[CLASS])
    assert tree_hash(again) == tree_hash(dataset)
    other = make_dataset(tmp_path / "ds2", replace(TINY, seed=1), classes=[CLASS])
    assert tree_hash(other) != tree_hash(dataset)


def test_masks_nonempty_and_inside_silhouette(dataset, mesh):
    cdir = dataset / CLASS
    poses = load_test_poses(cdir)
    samples = load_mad_class(cdir).test
    assert [str(s.path.relative_to(cdir)) for s in samples] == poses.paths
    for i, s in enumerate(samples):
        if s.label == 0:
            assert not s.mask.any()
            continue
        assert s.mask.sum() >= TINY.defects.min_mask_pixels
        _, alpha_good = render_view(mesh, poses.cameras, i, TINY)
        object_now = (s.image < 250 / 255).any(-1).numpy()  # the defective object's pixels (non-white)
        inside = torch.from_numpy(alpha_good > 0) if s.defect == "Missing" else torch.from_numpy(object_now)
        assert not (s.mask & ~inside).any(), f"{s.path}: mask outside the silhouette"


def test_good_test_image_matches_its_pose(dataset, mesh):
    """test_poses.json holds the pose each test image was rendered from."""
    cdir = dataset / CLASS
    poses = load_test_poses(cdir)
    good = load_mad_class(cdir).test[0]
    image, _ = render_view(mesh, poses.cameras, 0, TINY)
    torch.testing.assert_close(good.image, torch.from_numpy(image).float(), atol=2.5 / 255, rtol=0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_convention_projected_hull_matches_silhouette(dataset, mesh):
    """Project the mesh with the cameras read back from transforms.json: its hull is the silhouette."""
    c = load_mad_class(dataset / CLASS)
    big = c.train.cameras.resized(128, 128)  # 48 px hulls are too coarse for a 0.9 IoU bar
    flipped_ious = []
    for i in range(len(big)):
        image, _ = render_view(mesh, c.train.cameras, i, TINY)
        # The image on disk is this render (so the loaded cameras are the ones it was made with).
        torch.testing.assert_close(c.train.images[i], torch.from_numpy(image).float(), atol=2.5 / 255, rtol=0)
        _, alpha = render_view(mesh, big, i, TINY)
        V, K = big.viewmats[i].double().numpy(), big.Ks[i].double().numpy()
        x = mesh.vertices @ V[:3, :3].T + V[:3, 3]
        assert (x[:, 2] > 0).all()
        uv = x[:, :2] / x[:, 2:] * np.diag(K)[:2] + K[:2, 2]
        hull = uv[ConvexHull(uv).vertices]
        proj = np.zeros((big.height, big.width), bool)
        rr, cc = polygon(hull[:, 1] - 0.5, hull[:, 0] - 0.5, proj.shape)  # pixel centres at +0.5
        proj[rr, cc] = True
        sil = convex_hull_image(alpha >= 0.5)
        assert _iou(proj, sil) >= 0.9, f"view {i}: IoU {_iou(proj, sil):.3f}"
        flipped_ious.append(_iou(proj, convex_hull_image(alpha[::-1] >= 0.5)))
    assert min(flipped_ious) < 0.9  # the test can fail: an upside-down render would be caught


def test_user_mesh_and_refusals(tmp_path, capsys):
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    box.visual.face_colors = [200, 60, 40, 255]
    path = tmp_path / "box.ply"
    box.export(path)
    cfg = replace(TINY, test_per_defect=1, elevations_deg=(20.0,))
    root = make_dataset(tmp_path / "user", cfg, meshes={"01Box": path})
    c = load_mad_class(root / "01Box")
    assert len(c.train.images) == 4 and len(c.test) == 4
    assert abs(float(c.train.images[0][24, 24, 0]) - 1.0) > 0.05  # the red box is in the middle
    # An existing non-empty output is refused and left alone.
    before = tree_hash(root)
    args = ["--out", str(root), "--mesh", str(path), "--name", "02Box", "--size", "48"]
    assert main(["data", "make", *args]) == 2
    assert "splatlab data make: " in capsys.readouterr().err  # one line, the folder named
    with pytest.raises(FileExistsError, match="already exists"):
        make_cli(out=root, mesh=(path,), name=("02Box",), size=48)
    with pytest.raises(ValueError, match="one per file"):
        make_cli(out=tmp_path / "z", mesh=(path, path), name=("02Box",), size=48)
    with pytest.raises(ValueError, match="must differ"):  # two files with the same name, no --name
        make_cli(out=tmp_path / "z", mesh=(path, path), size=48)
    assert tree_hash(root) == before
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        make_dataset(tmp_path / "x", cfg, meshes={"01X": tmp_path / "nope.ply"})
    with pytest.raises(ValueError, match="Unicorn"):
        make_dataset(tmp_path / "y", cfg, classes=["Unicorn"])
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_heldout_meshes_are_other_parts_and_load():
    """The held-out animals load as their manifest says and share no LDraw part with the shipped classes."""
    shipped = json.loads((data_dir() / "meshes" / "classes.json").read_text())
    heldout = json.loads((data_dir() / "meshes-heldout" / "classes.json").read_text())
    assert len(heldout) >= 4
    assert not {e["part"] for e in shipped} & {e["part"] for e in heldout}
    assert not {e["name"] for e in shipped} & {e["name"] for e in heldout}
    for e in heldout:
        m = load_mesh(data_dir() / "meshes-heldout" / e["mesh"])
        assert len(m.faces) == e["faces"] and e["authors"], e["name"]
        radius = float(np.linalg.norm(m.vertices - m.center, axis=1).max())
        assert abs(radius - 1.0) < 0.05  # normalised like every mesh


def test_default_dataset_location_and_reuse(tmp_path, monkeypatch):
    """default_dataset() honours $SPLATLAB_DATA, generates once, then reuses the folder."""
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    shutil.copy(data_dir() / "meshes" / f"{CLASS}.ply", meshes)
    entries = [
        e for e in json.loads((data_dir() / "meshes" / "classes.json").read_text()) if e["name"] == CLASS
    ]
    (meshes / "classes.json").write_text(json.dumps(entries))
    monkeypatch.setenv("SPLATLAB_DATA", str(tmp_path))
    monkeypatch.setattr("splatlab.data.make.MakeConfig", lambda **kw: replace(TINY, **kw))
    root = default_dataset(size=40, seed=3)
    assert root == tmp_path / "cache" / "lego-mad-40px-seed3"
    assert (root / CLASS / "transforms.json").is_file()
    stamp = (root / "make_config.json").stat().st_mtime_ns
    assert default_dataset(size=40, seed=3) == root
    assert (root / "make_config.json").stat().st_mtime_ns == stamp
    assert Image.open(root / CLASS / "train" / "good" / "0.png").size == (40, 40)


def test_data_dir_default(monkeypatch):
    monkeypatch.delenv("SPLATLAB_DATA", raising=False)
    assert data_dir() == Path(__file__).resolve().parents[1] / "data"


def test_figures(dataset, mesh):
    import matplotlib

    matplotlib.use("Agg")
    from splatlab.viz.data_figures import class_rig_figure, defect_grid

    fig = class_rig_figure(dataset / CLASS, points=mesh.vertices[::20])
    names = [t.name for t in fig.data]
    assert names[:2] == ["object", "train (8)"] and "test Burrs (2)" in names
    grid = defect_grid(load_mad_class(dataset / CLASS).test, per_type=2)
    assert len(grid.axes) == 4 * 2
    assert any(ax.collections for ax in grid.axes)  # mask outlines were drawn
