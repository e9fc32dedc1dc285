"""Training on a tiny synthetic scene: a few hundred Gaussians seen by a ring of 32x32 cameras."""

import json
from dataclasses import dataclass

import pytest
import torch
from torch.testing import assert_close

from splatlab.cameras import Cameras, ring_rig
from splatlab.pose import pose_config
from splatlab.run import load_run, run_eps2d
from splatlab.splats import load_ply, random_splats, render_splats
from splatlab.train import LOW_RES_EPS2D, TrainConfig, default_config, split_views, train

SIZE = 32


@dataclass(frozen=True)
class Views:
    images: torch.Tensor
    cameras: Cameras


@pytest.fixture(scope="module")
def views():
    """24 views of a ground-truth blob of 150 opaque-ish Gaussians, on white. images [24, 32, 32, 3]"""
    cams = ring_rig(elevations_deg=(-20.0, 30.0), azimuth_step_deg=30.0, focal=40.0, width=SIZE, height=SIZE)
    gt = random_splats(150, extent=0.6, init_opacity=0.6, init_scale=1.0, seed=123)
    with torch.no_grad():
        images, _, _ = render_splats(gt, cams, background=torch.ones(3))
    return Views(images.clamp(0, 1).contiguous(), cams)


def tiny(**overrides) -> TrainConfig:
    base = dict(
        name="test",
        resolution=None,
        iterations=40,
        batch_size=2,
        init_points=300,
        init_extent=0.8,
        refine_start=10,
        refine_stop=30,
        refine_every=10,
        reset_every=0,
        checkpoint_every=10,
        log_every=1,
    )
    base.update(overrides)
    return TrainConfig.preset("fast", **base)


def test_loss_falls_and_heldout_psnr_rises(views):
    splats, h = train(views, tiny(eval_every=5, refine_start=1000), progress=False)
    first, last = sum(h.loss[:5]) / 5, sum(h.loss[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert h.eval_step == list(range(5, 41, 5))  # the final evaluation is not doubled
    assert h.eval_psnr[-1] > h.eval_psnr[0] + 1.0, h.eval_psnr
    assert len(h.step) == len(h.loss) == len(h.psnr) == len(h.n_gaussians) == len(h.seconds) == 40
    assert all(v >= 0 for v in h.timings.values()) and h.timings["render"] > 0


def test_densification_grows_and_prunes_on_schedule(views):
    # every Gaussian with any screen gradient grows; nothing is pruned
    cfg = tiny(grow_grad2d=1e-12, prune_opa=1e-6, iterations=12, refine_start=9, refine_every=10)
    splats, h = train(views, cfg, progress=False)
    n = h.n_gaussians
    assert n[0] == n[9] == 300 and n[10] > 300  # refines only at step 10 (> start, % every == 0)
    assert n[10] == n[11] == len(splats["means"])
    assert all(splats[k].shape[0] == n[-1] for k in splats)
    # grow nothing, prune all below opacity 0.2: the initial 0.1 has not moved that far in 10 steps
    cfg = tiny(prune_opa=0.2, grow_grad2d=1.0, iterations=12, refine_start=9)
    splats, h = train(views, cfg, progress=False)
    assert h.n_gaussians[9] == 300 and h.n_gaussians[10] < 300
    # refine_stop ends densification
    cfg = tiny(grow_grad2d=1e-12, iterations=25, refine_start=5, refine_stop=12)
    _, h = train(views, cfg, progress=False)
    assert len(set(h.n_gaussians[11:])) == 1


def test_optimizer_state_consistent_after_densification(views, tmp_path):
    cfg = tiny(grow_grad2d=1e-12, iterations=21, refine_start=9)
    splats, h = train(views, cfg, progress=False, out_dir=tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    n = len(splats["means"])
    assert n == h.n_gaussians[-1] != 300
    for k, p in splats.items():
        st = ckpt["optimizers"][k]["state"][0]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape, k
    assert ckpt["strategy_state"]["grad2d"].shape == (n,)


def test_resume_equals_uninterrupted(views, tmp_path):
    cfg = tiny(grow_grad2d=2e-5, iterations=30, refine_start=5, refine_every=8, checkpoint_every=7)
    straight, h1 = train(views, cfg, progress=False, out_dir=tmp_path / "a")
    _, h_half = train(views, cfg, progress=False, out_dir=tmp_path / "b", stop_at=15)
    assert len(h_half.step) == 15 and not (tmp_path / "b" / "splats.ply").exists()
    resumed, h2 = train(views, cfg, progress=False, out_dir=tmp_path / "b", resume=True)
    assert h2.step == list(range(30)) and h1.n_gaussians == h2.n_gaussians
    assert h1.n_gaussians[-1] != 300  # densification happened on both sides of the interruption
    # The Numba backward sums per-thread gradient buffers, so the same seed is equal up to float rounding
    # (bitwise equal in practice); the Gaussian counts above must match exactly.
    for k in straight:
        assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6)
    # a resume with another config is refused
    with pytest.raises(ValueError, match="differs"):
        train(views, tiny(iterations=31), progress=False, out_dir=tmp_path / "b", resume=True)


def test_outputs_load_back(views, tmp_path):
    run = tmp_path / "run"
    splats, h = train(views, tiny(iterations=20), progress=False, out_dir=run)
    for name in ("splats.ply", "config.json", "metrics.json", "checkpoint.pt", "history.json"):
        assert (run / name).is_file(), name
    loaded, cfg, metrics = load_run(run)
    assert cfg == tiny(iterations=20)
    assert metrics["n_gaussians"] == len(splats["means"]) and metrics["preset"] == "test"
    assert metrics["psnr"] == pytest.approx(h.eval_psnr[-1]) and 0 < metrics["ssim"] <= 1
    assert not list(run.glob(".*.tmp"))  # atomic writes left no temp files
    cams = views.cameras[[1, 5]]
    with torch.no_grad():
        a, _, _ = render_splats(splats, cams, background=torch.ones(3))
        b, _, _ = render_splats(load_ply(run / "splats.ply"), cams, background=torch.ones(3))
    assert_close(a, b)
    json.loads((run / "config.json").read_text())


def test_deterministic_for_a_seed(views):
    a, ha = train(views, tiny(iterations=12), progress=False)
    b, hb = train(views, tiny(iterations=12), progress=False)
    c, hc = train(views, tiny(iterations=12, seed=1), progress=False)
    assert_close(a["means"], b["means"], rtol=1e-5, atol=1e-6)
    assert ha.loss == pytest.approx(hb.loss, rel=1e-5)
    assert not torch.allclose(a["means"][:10], c["means"][:10])


def test_bad_inputs(views, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        train(Views(views.images[:0], views.cameras[[]]), tiny(), progress=False)
    with pytest.raises(ValueError, match="empty"):
        train(Views([], views.cameras), tiny(), progress=False)
    mixed = [views.images[0], views.images[1, :20]]
    with pytest.raises(ValueError, match="mixed sizes"):
        train(Views(mixed, views.cameras[:2]), tiny(), progress=False)
    with pytest.raises(ValueError, match="mixed sizes"):
        train(Views(views.images, views.cameras.resized(40, 40)), tiny(), progress=False)
    with pytest.raises(FileNotFoundError, match="parent"):
        train(views, tiny(), progress=False, out_dir=tmp_path / "missing" / "run")
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset("huge")
    with pytest.raises(ValueError, match="iterations"):
        tiny(iterations=0)


def test_presets_and_default_config(monkeypatch):
    gpu, cpu, fast = (TrainConfig.preset(p) for p in ("gpu", "cpu", "fast"))
    assert gpu == TrainConfig() and gpu.name == "gpu"
    assert gpu.iterations == 30_000 and gpu.init_points == 100_000
    assert gpu.sh_degree == 0 and cpu.resolution == 128
    assert fast.iterations < cpu.iterations < gpu.iterations
    paper = TrainConfig.preset("paper")  # the papers' 400² on a CPU
    assert paper.resolution == 400 and cpu.iterations <= paper.iterations < gpu.iterations
    monkeypatch.setenv("SPLATLAB_FAST", "1")
    assert default_config().name == "fast"
    monkeypatch.delenv("SPLATLAB_FAST")
    assert default_config().name == "cpu"
    stretched = cpu.with_iterations(cpu.iterations * 2)
    assert stretched.refine_stop == 2 * cpu.refine_stop
    train_idx, test_idx = split_views(17, cpu)
    assert test_idx.tolist() == [0, 8, 16] and len(train_idx) == 14


def test_eps2d_is_a_property_of_the_run(tmp_path):
    cpu, fast = TrainConfig.preset("cpu"), TrainConfig.preset("fast")
    assert TrainConfig().eps2d == 0.3  # gsplat's, for the gpu preset
    assert cpu.eps2d == fast.eps2d == LOW_RES_EPS2D < 0.3
    assert pose_config("cpu").eps2d == pose_config("fast").eps2d == LOW_RES_EPS2D
    with pytest.raises(ValueError, match="eps2d"):
        TrainConfig(eps2d=-0.1)
    assert run_eps2d(tmp_path) == 0.3  # no config.json: gsplat's default
    (tmp_path / "config.json").write_text(json.dumps(cpu.to_dict()))
    assert run_eps2d(tmp_path) == LOW_RES_EPS2D
    legacy = {k: v for k, v in cpu.to_dict().items() if k != "eps2d"}  # written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert run_eps2d(tmp_path) == 0.3


def write_mad_class(views, root):
    """Write the tiny scene as a MAD-layout class folder (train views + transforms.json)."""
    import math

    import numpy as np
    from PIL import Image

    from splatlab.cameras import viewmat_to_opengl_c2w

    c = root / "01Blob"
    (c / "train" / "good").mkdir(parents=True)
    c2w = viewmat_to_opengl_c2w(views.cameras.viewmats)
    frames = []
    for i, im in enumerate(views.images):
        Image.fromarray((im.numpy() * 255).round().astype(np.uint8)).save(c / "train" / "good" / f"{i}.png")
        frames.append({"file_path": f"./train/good/{i}.png", "transform_matrix": c2w[i].tolist()})
    angle = 2 * math.atan(0.5 * SIZE / float(views.cameras.Ks[0, 0, 0]))
    (c / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return c


def test_ensure_trained_caches_and_cli_trains(views, tmp_path):
    from splatlab.cli import main
    from splatlab.run import ensure_trained

    class_dir = write_mad_class(views, tmp_path)
    run = ensure_trained(class_dir, tmp_path / "runs", "fast", size=None, progress=False, iterations=15)
    assert run.parent == tmp_path / "runs" and run.name.startswith("01Blob-fast-")
    stamp = (run / "splats.ply").stat().st_mtime_ns
    assert ensure_trained(class_dir, tmp_path / "runs", preset="fast", size=None, iterations=15) == run
    assert (run / "splats.ply").stat().st_mtime_ns == stamp  # cached: not trained again
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "seed": 7}))  # a run of other settings is redone
    again = ensure_trained(class_dir, tmp_path / "runs", "fast", size=None, progress=False, iterations=15)
    assert again == run and load_run(run)[1].seed == 0 and (run / "splats.ply").stat().st_mtime_ns != stamp
    with pytest.raises(FileNotFoundError, match="class_dir"):
        ensure_trained(tmp_path / "nope", tmp_path / "runs")

    out = tmp_path / "cli-run"
    assert main(["train", str(class_dir), "--out", str(out), "--preset", "fast", "--iterations", "12"]) == 0
    _, cfg, metrics = load_run(out)
    assert cfg.iterations == 12 and cfg.name == "fast" and metrics["psnr"] > 10


def test_non_finite_loss_stops_training(views, monkeypatch):
    import splatlab.train as train_module

    calls = {"n": 0}

    def nan_after_three(pred, target, w):
        calls["n"] += 1
        out = (pred - target).abs().mean()
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(train_module, "photometric_loss", nan_after_three)
    with pytest.raises(FloatingPointError, match="step 3"):
        train(views, tiny(iterations=10), progress=False)
