"""The physically based look (Mitsuba 3): exact masks, determinism, alignment with the ray caster, errors."""

import json
from dataclasses import replace

import numpy as np
import pytest
import scipy.ndimage as ndi
import trimesh
from test_data_mad import tree_hash

from splatlab.data import data_dir, load_mad_class
from splatlab.data.check import check_dataset
from splatlab.data.defect_geometry import defective_mesh, geometry_mask, winding_number
from splatlab.data.defects import DEFECT_TYPES, sample_defect
from splatlab.data.make import (
    look_config,
    make_cli,
    make_dataset,
    random_test_camera,
    render_view,
    train_cameras,
)
from splatlab.data.pbr import PBRScene, RealismConfig, _mitsuba, kelvin_to_rgb
from splatlab.data.raycast import ColoredMesh, camera_rays, first_hits, load_mesh

CLASS = "05Parrot"  # the smallest shipped mesh
TINY_REAL = look_config(
    "real-relit",
    size=48,
    supersample=2,
    elevations_deg=(0.0, 50.0),
    azimuth_step_deg=90.0,
    test_good=1,
    test_per_defect=1,
)
TINY_REAL = replace(TINY_REAL, realism=replace(TINY_REAL.realism, spp=4))


@pytest.fixture(scope="module")
def mesh():
    return load_mesh(data_dir() / "meshes" / f"{CLASS}.ply")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("real") / "ds", TINY_REAL, classes=[CLASS])


def _draw(mesh, kind, rng, cfg):
    """A defect of ``kind`` on a random test view with a visible mask: (camera, defective mesh, mask)."""
    rig = train_cameras(cfg)
    for _ in range(30):
        cam = random_test_camera(rng, cfg, rig)
        o, d = (a.reshape(-1, 3) for a in camera_rays(cam, 0, cfg.supersample))
        hits, _ = first_hits(mesh, o, d)
        defect = sample_defect(kind, hits, d, rng, cfg.defects)
        if defect is None:
            continue
        bad = defective_mesh(defect, mesh)
        mask, _ = geometry_mask(mesh, bad, cam, 0, cfg.supersample, cfg.defects.mask_coverage)
        if mask.sum() >= 4:
            return cam, bad, mask
    raise AssertionError(f"no visible {kind} defect")


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_mask_is_where_visible_geometry_or_colour_differs(mesh, kind):
    """Mitsuba's own depth and albedo AOVs of the normal and the defective mesh differ exactly on the mask
    (up to its boundary pixels, which are partly covered)."""
    cfg = replace(TINY_REAL, size=64, supersample=3)
    cam, bad, mask = _draw(mesh, kind, np.random.default_rng(7), cfg)
    mi = _mitsuba()
    aov = mi.load_dict({"type": "aov", "aovs": "dd:depth,alb:albedo"})
    rc = replace(cfg.realism, spp=16)
    good_aov = PBRScene(mesh, rc, rc.light).render_channels(cam, 0, 0, aov)  # [H, W, depth + albedo]
    bad_aov = PBRScene(bad, rc, rc.light).render_channels(cam, 0, 0, aov)
    differs = (np.abs(good_aov - bad_aov) > 1e-3).any(axis=-1)
    assert differs.any() and mask.any()
    assert not (mask & ~differs).any(), "a mask pixel whose visible surface did not change"
    stray = differs & ~ndi.binary_dilation(mask)
    assert stray.sum() <= 1, f"{stray.sum()} changed pixels away from the mask"
    assert not geometry_mask(mesh, mesh, cam, 0, 3, 0.5)[0].any(), "a mesh differs from itself"


def test_mitsuba_matches_raycaster_geometry(mesh):
    """Same cameras, same mesh: Mitsuba's coverage is the ray caster's (conventions agree)."""
    cfg = replace(TINY_REAL, size=64, supersample=3)
    rig = train_cameras(cfg)
    scene = PBRScene(mesh, replace(cfg.realism, spp=16), cfg.realism.light)
    for i in (0, 5):
        _, alpha = scene.render(rig, i, seed=0)
        _, alpha_rc = render_view(mesh, rig, i, cfg)
        assert np.abs(alpha - alpha_rc).mean() < 0.01
        assert np.abs(alpha - alpha_rc[::-1]).mean() > 0.01  # the check can fail: a flipped render differs


def test_real_dataset_layout_seed_and_check(dataset, tmp_path):
    assert check_dataset(dataset)[0].problems == []
    c = load_mad_class(dataset / CLASS)
    assert c.train.images.shape == (8, 48, 48, 3)
    assert float(c.train.images[:, 0, 0].min()) == 1.0  # the background stays white
    assert [s.defect for s in c.test] == ["good", "Burrs", "Missing", "Stains"]
    assert all(s.mask.any() for s in c.test[1:])
    made = json.loads((dataset / "make_config.json").read_text())["config"]
    assert made["renderer"] == "mitsuba" and made["realism"]["test_light_rotation_deg"] == 40.0
    assert tree_hash(make_dataset(tmp_path / "again", TINY_REAL, classes=[CLASS])) == tree_hash(dataset)
    # Another seed: a new test set for the same training capture.
    other = make_dataset(tmp_path / "seed1", replace(TINY_REAL, seed=1), classes=[CLASS])
    assert tree_hash(other / CLASS / "train") == tree_hash(dataset / CLASS / "train")
    assert tree_hash(other / CLASS / "test") != tree_hash(dataset / CLASS / "test")


def test_real_look_differs_from_clean(dataset, mesh):
    """Glossy plastic under an area light is not the clean Lambert render of the same view."""
    c = load_mad_class(dataset / CLASS)
    clean, _ = render_view(mesh, c.train.cameras, 0, look_config("clean", size=48, supersample=2))
    assert np.abs(c.train.images[0].numpy() - clean).mean() > 0.01


def test_lighting_change_and_colour_temperature():
    np.testing.assert_allclose(kelvin_to_rgb(6500.0), np.ones(3))
    warm, cold = kelvin_to_rgb(3000.0), kelvin_to_rgb(12000.0)
    assert warm[0] > warm[2] and cold[2] > cold[0]
    cfg = RealismConfig(test_light_rotation_deg=90.0, test_light_strength=0.5, test_light_kelvin=4000.0)
    test = cfg.test_lighting()
    x, y, z = cfg.light.direction
    np.testing.assert_allclose(test.direction, (-y, x, z), atol=1e-12)
    assert test.strength == 0.5 * cfg.light.strength and test.kelvin == 4000.0
    with pytest.raises(ValueError, match="kelvin"):
        kelvin_to_rgb(-5.0)


def test_winding_number_tolerates_holes():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    open_box = ColoredMesh(box.vertices, box.faces[2:], np.full((10, 3), 0.5), box.vertex_normals)
    w = winding_number(open_box, np.array([[0.0, 0.0, 0.0], [0.2, -0.1, 0.3], [2.0, 0.0, 0.0]]))
    assert w[0] > 0.7 and w[1] > 0.5 and abs(w[2]) < 0.1  # one face missing: still inside


def test_bad_input(tmp_path, capsys):
    with pytest.raises(ValueError, match="--look: unknown look 'shiny'"):
        look_config("shiny")
    with pytest.raises(ValueError, match="size"):
        look_config("real", size=8)
    with pytest.raises(ValueError, match="unknown look"):
        make_cli(out=tmp_path / "x", look="shiny")
    assert not (tmp_path / "x").exists()
