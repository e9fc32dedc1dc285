"""The PnP route: known-answer PnP, lifting against the mesh's ray-cast depth, fallback, presets."""

import dataclasses

import numpy as np
import pytest
import torch

from splatlab.cameras import Cameras, intrinsics, look_at, pose_error, ring_rig, spherical_eye
from splatlab.pnp import Features, PnPConfig, SiftMatcher, lift, solve_hypothesis, solve_pnp
from splatlab.pose import PRESETS, PoseConfig, estimate_pose, pose_config
from splatlab.retrieval import Retriever
from splatlab.splats import activated, render_splats, splats_from_points

SIZE = 128


def _rot_deg(a, b) -> float:
    return float(pose_error(a.double(), b.double())[0])


@pytest.fixture(scope="module")
def scene():
    """A textured ellipsoid of opaque splats (random colours), its 36-view rig rendered from the splats, a
    retriever over them and a query from a pose between the rig's views (3.6° from the nearest)."""
    g = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    pts = pts * torch.tensor([1.0, 0.8, 0.9])  # an ellipsoid: no symmetry the colours must break alone
    colors = torch.rand(4000, 3, generator=g)
    splats = splats_from_points(pts, colors, init_opacity=0.99)
    rig = ring_rig((0.0, 25.0), 20.0, 4.0, 150.0, SIZE, SIZE)
    with torch.no_grad():
        images = render_splats(splats, rig, background=torch.ones(3), backend="cpu")[0].clamp(0, 1)
    retriever = Retriever.build(images, rig, method="sift")
    eye = spherical_eye(torch.tensor(3.0), torch.tensor(2.0), torch.tensor(4.1)).float()
    qcam = Cameras(look_at(eye)[None], intrinsics(150.0, SIZE, SIZE, 1), SIZE, SIZE)
    with torch.no_grad():
        query = render_splats(splats, qcam, background=torch.ones(3), backend="cpu")[0][0].clamp(0, 1)
    return splats, retriever, query, qcam.viewmats[0]


def _cfg(route: str, **pnp) -> PoseConfig:
    """The route on the synthetic scene; its renders are noise-free, so RANSAC's threshold is 1 px (at the
    default 2 px, matches a pixel off pull the solution ~1° along the rotation/translation ambiguity of this
    narrow field of view)."""
    pnp = {"k": 2, "ransac_px": 1.0} | pnp
    return PoseConfig(
        route=route, k=2, steps=15, lr=0.01, ssim_weight=0.0, backend="cpu", pnp=PnPConfig(**pnp)
    )


# ----------------------------------------------------------------------------------------------------------
# Solving
# ----------------------------------------------------------------------------------------------------------


def test_solve_hypothesis_known_answer_with_outliers():
    """Exact 2D–3D correspondences plus 20 % gross outliers: the pose comes back exactly, outliers out."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (100, 3))
    eye = spherical_eye(torch.tensor(40.0), torch.tensor(25.0), torch.tensor(4.0)).float()
    vm = look_at(eye)
    K = intrinsics(150.0, 128, 128)[0]
    cam = pts @ vm[:3, :3].double().numpy().T + vm[:3, 3].double().numpy()
    xy = (cam @ K.double().numpy().T)[:, :2] / cam[:, 2:]
    xy[:20] += rng.uniform(15, 40, (20, 2)) * rng.choice([-1, 1], (20, 2))
    start = look_at(spherical_eye(torch.tensor(55.0), torch.tensor(20.0), torch.tensor(4.0)).float())
    h = solve_hypothesis(7, xy, xy, pts, np.ones(100, bool), start, K, np.zeros(3), PnPConfig())
    assert h.ok and h.reason == ""
    assert _rot_deg(h.viewmat, vm) < 1e-3
    assert set(h.inliers.tolist()) == set(range(20, 100))
    assert h.reprojection_px < 1e-3


def test_solve_hypothesis_rejects_and_says_why():
    K = intrinsics(150.0, 128, 128)[0]
    vm = look_at(spherical_eye(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(4.0)).float())
    few = solve_hypothesis(0, np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 3)), np.ones(3, bool), vm, K,
                           np.zeros(3), PnPConfig())  # fmt: skip
    assert not few.ok and "min_matches" in few.reason
    rng = np.random.default_rng(1)  # random pairs: no consistent pose, too few inliers
    noise = solve_hypothesis(0, rng.uniform(0, 128, (40, 2)), np.zeros((40, 2)), rng.uniform(-1, 1, (40, 3)),
                             np.ones(40, bool), vm, K, np.zeros(3), PnPConfig(min_inliers=12))  # fmt: skip
    assert not noise.ok and noise.reason


def test_sift_keypoints_in_splatlab_pixel_coordinates():
    """A blob centred at (40.5, 30.5) in splatlab coordinates (the centre of pixel column 40, row 30) is found
    there: OpenCV's pixel-centre-at-integer convention is converted."""
    u, v = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5)
    blob = 1.0 - 0.8 * np.exp(-((u - 40.5) ** 2 + (v - 30.5) ** 2) / (2 * 3.0**2))
    f = SiftMatcher().describe(torch.tensor(blob, dtype=torch.float32)[..., None].expand(SIZE, SIZE, 3))
    assert len(f.xy) >= 1 and f.descriptors.shape == (len(f.xy), 128)
    nearest = f.xy[np.argmin(np.linalg.norm(f.xy - [40.5, 30.5], axis=-1))]
    assert np.abs(nearest - [40.5, 30.5]).max() < 0.15, nearest


def test_config_validation():
    with pytest.raises(ValueError, match="route"):
        PoseConfig(route="teleport")
    with pytest.raises(ValueError, match="select"):
        PnPConfig(select="vibes")
    with pytest.raises(ValueError, match="min_inliers"):
        PnPConfig(min_inliers=2)
    assert PRESETS["pnp"].route == "pnp" and PRESETS["pnp+refine"].route == "pnp+refine"


# ----------------------------------------------------------------------------------------------------------
# Lifting: expected depth of splats against the mesh's ray-cast depth
# ----------------------------------------------------------------------------------------------------------


def test_lift_matches_mesh_raycast_depth():
    """Opaque splats on the surface of a LEGO-MAD mesh, rendered with expected depth at a rig view: lifted
    interior pixels land on the ray-cast surface; silhouette pixels, which the alpha mask drops, do not."""
    import trimesh

    from splatlab.data import data_dir
    from splatlab.data.make import MakeConfig, train_cameras
    from splatlab.data.raycast import camera_rays, first_hits, load_mesh

    mesh = load_mesh(data_dir() / "meshes" / "05Parrot.ply")
    pts, _ = trimesh.sample.sample_surface_even(mesh.trimesh, 30000, seed=0)
    splats = splats_from_points(torch.tensor(pts, dtype=torch.float32), init_opacity=0.99)
    cams = train_cameras(MakeConfig(size=SIZE))
    i = 30
    with torch.no_grad():
        out, alpha, _ = render_splats(
            splats, cams[i : i + 1], background=torch.ones(3), render_mode="RGB+ED", backend="cpu", eps2d=0.03
        )
    depth, a = out[0, ..., 3].numpy(), alpha[0, ..., 0].numpy()
    o, d = camera_rays(cams, i)
    hits, _ = first_hits(mesh, o.reshape(-1, 3), d.reshape(-1, 3))
    uu, vv = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5)
    xy = np.stack([uu.ravel(), vv.ravel()], -1)
    world, valid = lift(xy, depth, a, cams.viewmats[i], cams.Ks[i], min_alpha=0.95)
    assert valid.sum() > 300 and not (valid & ~hits.hit).any()  # nothing lifted off the object
    err = np.linalg.norm(world - hits.points, axis=-1)
    assert np.median(err[valid]) < 0.005 and np.percentile(err[valid], 95) < 0.03  # object radius 1
    assert np.isnan(world[~valid]).all()
    unmasked, every = lift(xy, depth, a, cams.viewmats[i], cams.Ks[i], min_alpha=0.0)
    rim = every & ~valid & hits.hit
    assert (every & ~hits.hit).sum() > 20  # without the mask, background pixels would be lifted too
    assert np.percentile(np.linalg.norm(unmasked - hits.points, axis=-1)[rim], 90) > 0.05


# ----------------------------------------------------------------------------------------------------------
# The route through estimate_pose
# ----------------------------------------------------------------------------------------------------------


def test_pnp_route_known_answer(scene):
    splats, retriever, query, gt = scene
    res = estimate_pose(query, splats, retriever, _cfg("pnp"))
    assert res.route == "pnp" and res.fallback_reason is None and res.pnp.chosen >= 0
    start = min(_rot_deg(c.viewmat_start, gt) for c in res.candidates)
    assert start > 3.0  # the retrieved views alone are off
    assert _rot_deg(res.viewmat, gt) < min(0.5, start / 8), _rot_deg(res.viewmat, gt)
    assert res.pnp.inliers >= 20 and res.pnp.reprojection_px < 1.0
    assert {"coarse", "pnp", "total"} <= set(res.timings) and "refine" not in res.timings
    assert len(res.losses) == 1 and np.isfinite(res.loss)
    h = res.pnp.hypotheses[res.pnp.chosen]
    assert h.query_xy.shape == h.view_xy.shape == (h.n_matches, 2) and h.points.shape == (h.n_matches, 3)


@pytest.mark.parametrize("preset", ["pnp", "pnp+refine"])
def test_presets_run_through_estimate_pose(scene, preset, monkeypatch):
    monkeypatch.delenv("SPLATLAB_FAST", raising=False)
    splats, retriever, query, gt = scene
    cfg = pose_config(preset, backend="cpu", steps=10, eps2d=0.3)
    assert cfg.route == preset
    res = estimate_pose(query, splats, retriever, cfg)
    assert res.route == preset and _rot_deg(res.viewmat, gt) < 1.0
    if preset == "pnp+refine":
        assert "refine" in res.timings and len(res.losses) == 10
        assert res.loss <= float(res.losses[0]) + 1e-6  # refinement never ends worse than its PnP start
        assert _rot_deg(res.viewmat_init, res.pnp.viewmat) < 1e-4  # the refinement started at PnP
    monkeypatch.setenv("SPLATLAB_FAST", "1")
    assert pose_config(preset).route == preset  # fast settings, same route


def test_photometric_selection(scene):
    splats, retriever, query, gt = scene
    res = estimate_pose(query, splats, retriever, _cfg("pnp", select="photometric"))
    ok = [h for h in res.pnp.hypotheses if h.ok]
    assert all(np.isfinite(h.loss) for h in ok)
    assert res.pnp.hypotheses[res.pnp.chosen].loss == min(h.loss for h in ok)
    assert _rot_deg(res.viewmat, gt) < 0.5


@pytest.mark.parametrize("fill", [1.0, 0.6])
@pytest.mark.parametrize("route", ["pnp", "pnp+refine"])
def test_fallback_on_textureless_query(scene, route, fill):
    """A blank (or uniform grey) query has no keypoints: the route falls back to the retrieval pose."""
    splats, retriever, _, _ = scene
    blank = torch.full((SIZE, SIZE, 3), fill)
    res = estimate_pose(blank, splats, retriever, _cfg(route))
    assert res.pnp.chosen == -1 and res.fallback_reason and "min_matches" in res.fallback_reason
    top = retriever.top_k(blank, 1)[0][0]
    torch.testing.assert_close(res.viewmat_init, retriever.cameras.viewmats[top])
    if route == "pnp":
        torch.testing.assert_close(res.viewmat, retriever.cameras.viewmats[top])


def test_custom_matcher_slots_in(scene):
    """Any object with describe/match works; one that never matches makes every view fail, with reasons."""
    splats, retriever, query, _ = scene

    class Never:
        def describe(self, image):
            return SiftMatcher().describe(image)

        def match(self, a: Features, b: Features):
            return np.zeros((0, 2), np.int64)

    params = {k: v.detach() for k, v in activated(splats).items()}
    cfg = dataclasses.replace(PnPConfig(), k=2)
    res = solve_pnp(query, params, 0, retriever.cameras, torch.tensor([0, 1]), cfg, images=retriever.images,
                    background=torch.ones(3), backend="cpu", matcher=Never())  # fmt: skip
    assert res.chosen == -1 and res.fallback_reason.count("0 matched") == 3  # two views and the pooled one
    assert "view -1" in res.fallback_reason
