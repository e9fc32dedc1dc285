import numpy as np
import pytest
import torch
from torch.testing import assert_close

from splatlab.cameras import Cameras, intrinsics, look_at
from splatlab.splats import load_ply, random_splats, render_splats, save_ply, sh_degree_of, splats_from_points


def test_random_splats_layout_and_determinism():
    s = random_splats(100, sh_degree=2, seed=1)
    assert s["means"].shape == (100, 3) and s["quats"].shape == (100, 4)
    assert s["scales"].shape == (100, 3) and s["opacities"].shape == (100,)
    assert s["sh0"].shape == (100, 1, 3) and s["shN"].shape == (100, 8, 3)
    assert sh_degree_of(s) == 2
    assert (s["means"].abs() <= 1.3).all()
    assert_close(random_splats(100, sh_degree=2, seed=1)["means"], s["means"])


def test_knn_scales():
    # Points on a grid with spacing 0.1: the 3 nearest neighbours are 0.1 away.
    g = torch.stack(torch.meshgrid(*[torch.arange(5.0) * 0.1] * 3, indexing="ij"), -1).reshape(-1, 3)
    s = splats_from_points(g)
    assert_close(torch.exp(s["scales"][62]), torch.full((3,), 0.1), rtol=1e-4, atol=1e-6)


def test_ply_round_trip(tmp_path):
    s = random_splats(50, sh_degree=3, seed=0)
    with torch.no_grad():
        s["shN"].normal_()
    path = save_ply(s, tmp_path / "splats.ply")
    t = load_ply(path)
    for k in s:
        assert_close(t[k], s[k])
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file


def test_ply_renders_same_image(tmp_path):
    s = random_splats(200, extent=0.5, sh_degree=1, seed=2)
    cams = Cameras(look_at(torch.tensor([[2.5, 0.5, 0.8]])), intrinsics(40.0, 32, 32), 32, 32)
    a, _, _ = render_splats(s, cams, backend="torch", background=torch.ones(3))
    b, _, _ = render_splats(
        load_ply(save_ply(s, tmp_path / "s.ply")), cams, backend="torch", background=torch.ones(3)
    )
    assert_close(a, b)


def test_reads_gsplat_exporter_ply(tmp_path):
    from gsplat.exporter import export_splats

    s = random_splats(30, sh_degree=1, seed=4)
    export_splats(
        s["means"].detach(),
        s["scales"].detach(),
        s["quats"].detach(),
        s["opacities"].detach(),
        s["sh0"].detach(),
        s["shN"].detach(),
        format="ply",
        save_to=str(tmp_path / "g.ply"),
    )
    t = load_ply(tmp_path / "g.ply")
    for k in s:
        assert_close(t[k], s[k])


def test_bad_ply_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        load_ply(tmp_path / "nope.ply")
    good = save_ply(random_splats(40, seed=0), tmp_path / "good.ply")
    trunc = tmp_path / "trunc.ply"
    trunc.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="trunc.ply"):
        load_ply(trunc)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"this is not a ply file")
    with pytest.raises(ValueError, match="junk.ply"):
        load_ply(junk)
    # A PLY point cloud without splat properties.
    from plyfile import PlyData, PlyElement

    v = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(ValueError, match="missing properties"):
        load_ply(tmp_path / "points.ply")


def test_save_ply_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_ply(random_splats(5), tmp_path / "no" / "such" / "s.ply")


def test_splats_from_points_bad_input():
    with pytest.raises(ValueError, match="points"):
        splats_from_points(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        splats_from_points(torch.full((4, 3), float("nan")))
