"""Pose refinement: the camera update, its composition order, recovery of known poses, bad inputs."""

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from splatlab.cameras import (
    Cameras,
    camera_centers,
    intrinsics,
    look_at,
    perturb_viewmat,
    pose_error,
    se3_exp,
)
from splatlab.pose import (
    PoseConfig,
    PoseDivergedError,
    apply_delta,
    delta_between,
    estimate_pose,
    pose_config,
    refine,
)
from splatlab.pose_eval import basin, evaluate_poses
from splatlab.retrieval import Retriever
from splatlab.splats import random_splats, render_splats

SIZE = 48


def _scene():
    """A tiny opaque, colourful blob object and 8 cameras on a ring 4 units away (SIZE² images)."""
    splats = random_splats(250, extent=0.7, init_opacity=0.9, init_scale=1.6, seed=3)
    az = torch.arange(0.0, 360.0, 45.0)
    from splatlab.cameras import spherical_eye

    eye = spherical_eye(az, torch.full_like(az, 20.0), torch.full_like(az, 4.0))
    cams = Cameras(look_at(eye), intrinsics(1.1 * SIZE, SIZE, SIZE, n=len(az)), SIZE, SIZE)
    with torch.no_grad():
        images = render_splats(splats, cams, background=torch.ones(3), backend="cpu")[0]
    return splats, cams, images


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch/Numba thread: tiny renders gain nothing from more, and a shared machine is oversubscribed."""
    from splatlab.threads import use_threads

    with use_threads(1, 1):
        yield


@pytest.fixture(scope="module")
def scene():
    return _scene()


CFG = PoseConfig(steps=60, lr=0.01, backend="cpu", k=1, num_threads=1)


def test_delta_round_trip():
    g = torch.Generator().manual_seed(0)
    V0 = look_at(torch.tensor([3.0, 1.0, 2.0]))
    for s in (1.0, 4.0):
        delta = torch.randn(6, generator=g) * 0.2
        V1 = apply_delta(V0, delta, s)
        assert_close(delta_between(V0, V1, s), delta, atol=1e-5, rtol=1e-5)
        assert_close(apply_delta(V0, delta_between(V0, V1, s), s), V1, atol=1e-5, rtol=1e-5)
    assert_close(apply_delta(V0, torch.zeros(6)), V0)


def test_composition_order_rotates_about_camera_centre():
    V0 = look_at(torch.tensor([0.0, -4.0, 1.0]))
    delta = torch.tensor([0.0, 0.0, 0.0, 0.05, -0.1, 0.02])
    left = apply_delta(V0, delta)  # what the refinement does
    assert_close(left, se3_exp(delta) @ V0)
    right = V0 @ se3_exp(delta)  # the other order: a rotation about the world origin
    assert (left - right).abs().max() > 1e-2
    # A pure rotation in the camera frame keeps the camera centre and turns the viewing direction.
    assert_close(camera_centers(left), camera_centers(V0), atol=1e-5, rtol=0)
    assert (camera_centers(right) - camera_centers(V0)).norm() > 0.1
    # Translation is in camera axes and scaled: +x moves the camera right by s units.
    moved = apply_delta(V0, torch.tensor([1.0, 0, 0, 0, 0, 0]), 0.5)
    right_axis = V0[0, :3]  # camera x axis in world coordinates
    assert_close(camera_centers(moved) - camera_centers(V0), -0.5 * right_axis, atol=1e-5, rtol=0)


def test_moving_camera_equals_moving_gaussians(scene):
    """SplatPose moves the Gaussians by T; rendering them into V equals the fixed ones into V @ T."""
    splats, cams, _ = scene
    iso = {k: v.detach().clone() for k, v in splats.items()}
    iso["scales"] = iso["scales"].mean(-1, keepdim=True).expand(-1, 3).clone()  # rotation-invariant blobs
    T = se3_exp(torch.tensor([0.1, -0.05, 0.2, 0.1, 0.2, -0.15]))
    moved = dict(iso, means=iso["means"] @ T[:3, :3].T + T[:3, 3])
    V = cams.viewmats[:1]
    a = render_splats(moved, Cameras(V, cams.Ks[:1], SIZE, SIZE), background=torch.ones(3), backend="cpu")[0]
    b = render_splats(iso, Cameras(V @ T, cams.Ks[:1], SIZE, SIZE), background=torch.ones(3), backend="cpu")[
        0
    ]
    c = render_splats(iso, Cameras(T @ V, cams.Ks[:1], SIZE, SIZE), background=torch.ones(3), backend="cpu")[
        0
    ]
    assert_close(a, b, atol=2e-4, rtol=0)
    assert (a - c).abs().max() > 0.1


def _render_at(splats, viewmat, K):
    with torch.no_grad():
        return render_splats(
            splats, Cameras(viewmat[None], K[None], SIZE, SIZE), background=torch.ones(3), backend="cpu"
        )[0][0]


@pytest.mark.parametrize("pivot", ["camera", "object"])
def test_refine_recovers_known_delta(scene, pivot):
    """The δ that maps the start to a known target is recovered, in the documented frame."""
    splats, cams, _ = scene
    start, K = cams.viewmats[1], cams.Ks[1]
    s = 4.0 if pivot == "camera" else 1.0
    centre = splats["means"].detach().median(dim=0).values
    depth = float((start[:3, :3] @ centre + start[:3, 3])[2]) if pivot == "object" else 0.0
    true_delta = torch.tensor([0.02, -0.015, 0.01, 0.03, -0.04, 0.02])  # ~3°, ~0.1 units
    target = apply_delta(start, true_delta, s, depth)
    cfg = dataclasses.replace(CFG, translation_scale=s, pivot=pivot, steps=80, lr_decay_every=15)
    res = refine(_render_at(splats, target, K), splats, start, K, cfg)
    assert res.pivot_depth == pytest.approx(depth, abs=1e-4) and res.translation_scale == s
    rot0, _ = pose_error(start, target)
    rot, trans = pose_error(res.viewmat, target)
    assert rot0 > 2.5 and rot < 0.5 and trans < 0.04, (rot0, rot, trans)
    assert_close(delta_between(start, res.viewmat, s, depth), true_delta, atol=0.01, rtol=0)
    assert res.losses[-1] < 0.25 * res.losses[0]
    assert res.viewmats.shape == (len(res.losses), 4, 4) and res.scales.shape == res.losses.shape


def test_object_pivot_keeps_the_pivot_fixed():
    V0 = look_at(torch.tensor([0.0, -4.0, 1.0]))
    depth = float(torch.tensor([0.0, -4.0, 1.0]).norm())
    delta = torch.tensor([0.0, 0.0, 0.0, 0.1, -0.2, 0.05])
    V1 = apply_delta(V0, delta, 1.0, depth)
    origin = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert_close(V1 @ origin, V0 @ origin, atol=1e-5, rtol=0)  # the looked-at point stays put in the image
    assert_close(apply_delta(V0, delta, 1.0, 0.0), se3_exp(delta) @ V0)
    assert_close(delta_between(V0, V1, 1.0, depth), delta, atol=1e-5, rtol=0)


def test_refine_history_pyramid_early_stop_and_renders(scene):
    splats, cams, images = scene
    cfg = dataclasses.replace(
        CFG,
        steps=80,
        pyramid_scales=(0.5,),
        pyramid_steps=(10,),
        record_every=20,
        early_stop_patience=3,
        early_stop_tol=0.5,
    )
    start = perturb_viewmat(cams.viewmats[2], 3.0, seed=0)
    res = refine(images[2], splats, start, cams.Ks[2], cfg)
    assert res.stopped_early and len(res.losses) < 80
    assert_close(res.scales[:10], torch.full((10,), 0.5))
    assert res.renders[0].shape == (SIZE // 2, SIZE // 2, 3)
    assert res.renders[max(res.renders)].shape == (SIZE, SIZE, 3)
    assert set(res.timings) == {"coarse", "hypotheses", "refine", "total"}


def test_estimate_pose_multi_hypothesis_and_evaluation(scene):
    splats, cams, images = scene
    ret = Retriever.build(images, cams, "features")
    query_cam = perturb_viewmat(cams.viewmats[5], 4.0, seed=2)
    with torch.no_grad():
        query = render_splats(
            splats, Cameras(query_cam[None], cams.Ks[:1], SIZE, SIZE), background=torch.ones(3), backend="cpu"
        )[0][0]
    cfg = dataclasses.replace(CFG, k=3, short_steps=5, short_scale=1.0)
    res = estimate_pose(query, splats, ret, cfg)
    assert len(res.candidates) == 3 and res.candidates[0].index == 5
    assert res.short_losses.shape == (5, 3)
    assert res.chosen == int(torch.tensor([c.loss for c in res.candidates]).argmin())
    assert pose_error(res.viewmat, query_cam)[0] < 1.0
    ev = evaluate_poses(splats, ret, query[None], query_cam[None], cfg)
    summary = ev.summary()
    assert summary["auc5"] > 80 and summary["diverged"] == 0
    # from the truth, no search: a render of these very splats has its loss minimum at the truth, which the
    # refinement's best pose keeps (a search from the retrieved view does not land on it exactly)
    truth = evaluate_poses(splats, ret, query[None], query_cam[None], cfg, keep_results=True, from_truth=True)
    assert truth.rot_deg[0] < 1e-3 < ev.rot_deg[0]
    assert truth.results[0].candidates[0].index == -1 and truth.results[0].timings["coarse"] == 0.0
    # finalists: the best hypotheses refined fully side by side; the lowest final loss wins, so it can
    # only improve on refining the first alone (the batched rows are independent)
    best3 = estimate_pose(query, splats, ret, dataclasses.replace(cfg, finalists=3, record_every=10))
    assert best3.loss <= res.loss + 1e-6 and 0 <= best3.chosen < 3
    assert all(r.shape == (SIZE, SIZE, 3) for r in best3.renders.values())
    with pytest.raises(ValueError, match="finalists"):
        dataclasses.replace(cfg, finalists=0)
    # successive halving: after finalist_steps only the best finalist renders on; batched rows are
    # independent, so the survivor (here the same winner) follows the trajectory it had beside the others
    halved = estimate_pose(query, splats, ret, dataclasses.replace(cfg, finalists=3, finalist_steps=4))
    assert halved.chosen == best3.chosen and bool(torch.isfinite(halved.losses).all())
    assert_close(halved.losses, best3.losses, rtol=1e-4, atol=1e-6)
    assert_close(halved.viewmat, best3.viewmat, rtol=1e-4, atol=1e-5)
    from splatlab.pose import _frame, _optimise, _prepared, _schedule

    params, degree = _prepared(splats, "cpu")
    starts = cams.viewmats[[5, 4, 6]]
    hist = _optimise(
        params, degree, query, starts, cams.Ks[0], SIZE, SIZE, cfg, _schedule(cfg),
        _frame(params, starts, cfg), keep_best_after=4,
    )
    assert bool(torch.isfinite(hist["losses"][:4]).all())  # all three rendered for 4 steps, then one
    assert (torch.isfinite(hist["losses"][4:]).sum(1) == 1).all()
    with pytest.raises(ValueError, match="finalist_steps"):
        dataclasses.replace(cfg, finalist_steps=-1)
    import matplotlib

    matplotlib.use("Agg")
    from splatlab.viz import pose_figures as pf

    res = estimate_pose(query, splats, ret, dataclasses.replace(cfg, record_every=10, steps=25))
    assert sorted(res.renders) == [0, 10, 20, 24]
    figs = [
        pf.refinement_figure(res, query_cam),
        pf.candidates_figure(res, ret, query),
        pf.renders_figure(res, query),
        pf.error_cdf_figure({"a": ev.rot_deg}),
    ]
    assert len(figs[0].axes) == 3 and len(figs[1].axes) == 4 and len(figs[2].axes) == 8
    rot, _ = pf.errors_per_step(res, query_cam)
    assert rot[0] > rot[-1]
    import matplotlib.pyplot as plt

    plt.close("all")


def test_bad_queries_raise(scene):
    splats, cams, images = scene
    ret = Retriever.build(images, cams, "features")
    with pytest.raises(ValueError, match="is 32x32"):
        estimate_pose(torch.ones(32, 32, 3), splats, ret, CFG)
    with pytest.raises(ValueError, match="grayscale"):
        estimate_pose(torch.ones(SIZE, SIZE), splats, ret, CFG)
    with pytest.raises(ValueError, match="RGBA"):
        estimate_pose(torch.ones(SIZE, SIZE, 4), splats, ret, CFG)
    with pytest.raises(ValueError, match="NaN"):
        estimate_pose(torch.full((SIZE, SIZE, 3), float("nan")), splats, ret, CFG)
    with pytest.raises(ValueError, match="pyramid"):
        PoseConfig(pyramid_scales=(0.5,))


def test_divergence_is_reported(scene, monkeypatch):
    splats, cams, images = scene
    with pytest.raises(PoseDivergedError, match="diverged"):  # an infinite step size
        refine(images[0], splats, cams.viewmats[0], cams.Ks[0], dataclasses.replace(CFG, lr=float("inf")))
    import splatlab.pose as pose

    calls = {"n": 0}

    def nan_after_three(pred, target, w):
        calls["n"] += 1
        out = (pred - target).abs().mean()
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(pose, "photometric_loss", nan_after_three)
    with pytest.raises(PoseDivergedError, match="step 3") as info:
        refine(images[0], splats, cams.viewmats[0], cams.Ks[0], CFG)
    assert info.value.step == 3
    ev = evaluate_poses(splats, Retriever.build(images, cams, "features"), images[:1], cams.viewmats[:1], CFG)
    assert ev.summary()["diverged"] == 1 and ev.rot_deg[0] == float("inf")


def test_basin_and_presets(scene, monkeypatch):
    splats, cams, images = scene
    res = basin(
        splats,
        cams[:2],
        angles_deg=(2.0, 60.0),
        trials=2,
        config=dataclasses.replace(CFG, steps=40),
        images=images[:2],
    )
    assert res.rates.shape == (2,) and res.final_rot_deg.shape == (2, 2)
    assert res.rates[0] == 1.0 and res.rates[1] == 0.0
    from splatlab.viz.pose_figures import basin_figure

    assert len(basin_figure(res).axes) == 1
    monkeypatch.setenv("SPLATLAB_FAST", "1")
    assert pose_config("full") == pose_config("fast")
    monkeypatch.delenv("SPLATLAB_FAST")
    assert pose_config("full", k=5).k == 5


@pytest.mark.parametrize("num_threads", [None, 2])
def test_refine_threads_are_the_librarys_unless_given(scene, monkeypatch, num_threads):
    import numba

    import splatlab.pose as pose_mod
    from splatlab.threads import thread_counts, use_threads

    splats, cams, images = scene
    seen, original = [], pose_mod.photometric_loss

    def loss(*args, **kwargs):
        seen.append((torch.get_num_threads(), numba.get_num_threads()))
        return original(*args, **kwargs)

    monkeypatch.setattr(pose_mod, "photometric_loss", loss)
    cfg = dataclasses.replace(CFG, steps=2, num_threads=num_threads)
    with use_threads(3, 1):  # counts the library would not choose here, restored afterwards
        refine(images[0], splats, cams.viewmats[0], cams.Ks[0], cfg)
        assert (torch.get_num_threads(), numba.get_num_threads()) == (3, 1)
    assert seen and set(seen) == {thread_counts(SIZE * SIZE, num_threads)}


def test_view_dependent_colour_without_its_derivative():
    # SH-2 splats: colour_grad=False renders the same images (colours at each step's camera) and drops only
    # the colours' derivative, so the first loss is the same and both runs reach the true pose
    splats = random_splats(250, extent=0.7, init_opacity=0.9, init_scale=1.6, seed=3, sh_degree=2)
    with torch.no_grad():
        splats["shN"].normal_(0.0, 0.3, generator=torch.Generator().manual_seed(1))
    _, cams, _ = _scene()
    with torch.no_grad():
        image = render_splats(splats, Cameras(cams.viewmats[2:3], cams.Ks[2:3], SIZE, SIZE),
                              background=torch.ones(3), backend="cpu")[0][0]
    start = perturb_viewmat(cams.viewmats[2], 3.0, seed=0)
    exact = refine(image, splats, start, cams.Ks[2], dataclasses.replace(CFG, colour_grad=True))
    cheap = refine(image, splats, start, cams.Ks[2], CFG)
    assert_close(exact.losses[0], cheap.losses[0])
    assert not torch.equal(exact.losses, cheap.losses)  # the gradients differ, so the paths do
    assert pose_error(exact.viewmat, cams.viewmats[2])[0] < 0.5
    assert pose_error(cheap.viewmat, cams.viewmats[2])[0] < 0.5


def test_convergence_stop(scene):
    splats, cams, images = scene
    start = perturb_viewmat(cams.viewmats[2], 2.0, seed=1)
    full = refine(images[2], splats, start, cams.Ks[2], dataclasses.replace(CFG, steps=60))
    cfg = dataclasses.replace(CFG, steps=60, converge_window=4, converge_tol=5e-3)
    res = refine(images[2], splats, start, cams.Ks[2], cfg)
    assert res.stopped_early and len(res.losses) < 60
    # until the stop, the same steps as without it
    assert_close(res.losses, full.losses[: len(res.losses)])
    with pytest.raises(ValueError, match="converge"):
        dataclasses.replace(CFG, converge_window=-1)


def test_restart_when_the_winner_still_moves(scene):
    splats, cams, images = scene
    ret = Retriever.build(images, cams, "features")
    query_cam = perturb_viewmat(cams.viewmats[5], 3.0, seed=2)
    query = _render_at(splats, query_cam, cams.Ks[0])
    # a schedule that decays too fast to arrive: the camera is still turning at its end
    short = dataclasses.replace(CFG, steps=12, lr=0.02, lr_decay=0.5, lr_decay_every=3, record_every=4)
    once = estimate_pose(query, splats, ret, short)
    again = estimate_pose(query, splats, ret, dataclasses.replace(short, restart_moved_deg=0.05))
    assert len(once.losses) == 12 and len(again.losses) == 24 and len(again.viewmats) == 24
    assert_close(again.losses[:12], once.losses)  # the first pass is the same refinement
    assert again.loss < 0.5 * once.loss
    assert pose_error(again.viewmat, query_cam)[0] < 1.0 < pose_error(once.viewmat, query_cam)[0]
    assert sorted(again.renders) == [0, 4, 8, 11, 12, 16, 20, 23]
    assert once.restarted_at is None and again.restarted_at == 12
    import matplotlib

    matplotlib.use("Agg")
    from splatlab.viz.pose_figures import refinement_figure

    fig = refinement_figure(again, query_cam)  # the second pass is marked on both panels
    assert all(any(line.get_linestyle() == "--" for line in ax.lines) for ax in fig.axes[:2])
    import matplotlib.pyplot as plt

    plt.close(fig)
    # a converged winner is left alone
    calm = estimate_pose(query, splats, ret, dataclasses.replace(short, restart_moved_deg=90.0))
    assert len(calm.losses) == 12
    with pytest.raises(ValueError, match="restart"):
        dataclasses.replace(CFG, restart_moved_deg=-1.0)
