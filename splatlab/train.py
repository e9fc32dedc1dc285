"""Train 3D Gaussian splats of the defect-free object from its posed training views (SplatPose step 1).

The recipe is the original 3DGS one, as SplatPose runs it:

- random initial points in the object's box (SplatPose: 100k in [-1.3, 1.3]^3), random colours, opacity 0.1,
  sizes from the nearest-neighbour distance;
- one Adam optimiser per parameter (gsplat's convention): means 1.6e-4 x scene scale, decayed exponentially
  to 1/100 over the run; sh0 2.5e-3; shN 2.5e-3 / 20; opacities 5e-2; scales 5e-3; quats 1e-3;
- loss 0.8 L1 + 0.2 (1 - SSIM) (:func:`splatlab.losses.photometric_loss`) against views on white, rendered on
  white;
- densification and pruning by ``gsplat.strategy.DefaultStrategy`` through ``render()``'s ``meta``;
- the SH degree raised by one every ``sh_degree_interval`` steps up to ``sh_degree`` (SplatPose: 0).

One deviation is forced by gsplat 1.5.3: its ``DefaultStrategy`` tests ``step % reset_every == 0 & step > 0``,
which Python reads as a chained comparison that is always False, so it never resets opacities. The loop
below calls gsplat's own ``reset_opa`` op on that schedule instead (idempotent if gsplat fixes the test).

``train(views, out_dir=...)`` writes a run folder (``splats.ply``, ``config.json`` naming the class folder the
views came from, ``metrics.json``, ``history.json``, ``checkpoint.pt``; :mod:`splatlab.run` owns the folder:
its files, ``load_run`` and ``ensure_trained``); ``resume=True`` continues from the checkpoint and ends where
an uninterrupted run with the same seed ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tyro
from torch import Tensor

from splatlab.cameras import Cameras
from splatlab.losses import photometric_loss, psnr, ssim
from splatlab.splats import random_splats, render_splats
from splatlab.threads import thread_counts, use_threads

log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig", "TrainHistory", "default_config", "train", "evaluate", "split_views", "train_cli",
]

PRESETS = ("gpu", "cpu", "paper", "fast")
LOW_RES_EPS2D = 0.03  # the 2D low-pass (px²) of the 128² presets "cpu" and "fast"; see TrainConfig.preset
TIMERS = ("render", "loss", "backward", "optimizer", "densify", "eval")


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Defaults are SplatPose's full GPU run (preset ``gpu``)."""

    name: str = "gpu"  # name of the preset these values came from (metrics.json's "preset")
    resolution: int | None = None  # longer image side to train at (views area-downsampled); None = as given
    iterations: int = 30_000  # optimisation steps
    batch_size: int = 1  # training views rendered per step (the loss is their mean)
    seed: int = 0  # seeds initial points, view order and gsplat's split sampling
    eval: bool = True  # hold out every `eval_every_nth` view and report PSNR/SSIM on them
    eval_every_nth: int = 8  # views with index % this == 0 are held out (3DGS / Mip-NeRF 360 convention)
    eval_every: int = 0  # also evaluate the held-out views every this many steps (0 = only at the end)
    init_points: int = 100_000  # random initial Gaussians
    init_extent: float | None = 1.3  # half-side of the initial cube at the origin; None = from the cameras
    init_opacity: float = 0.1  # initial opacity of every Gaussian
    init_scale: float = 1.0  # initial size = this x RMS distance to the 3 nearest neighbours
    scene_scale: float | None = None  # scene extent; None = 1.1 x largest camera distance from their mean
    sh_degree: int = 0  # highest SH degree (SplatPose: 0, view-independent colour)
    sh_degree_interval: int = 1000  # raise the active SH degree by one every this many steps
    lr_means: float = 1.6e-4  # Adam lr of the means, times scene_scale
    lr_means_final: float = 0.01  # the means' lr decays exponentially to this fraction of its start
    lr_sh0: float = 2.5e-3  # Adam lr of the degree-0 SH coefficient (base colour)
    lr_shN: float = 2.5e-3 / 20  # Adam lr of the higher SH coefficients
    lr_opacities: float = 5e-2  # Adam lr of the opacity logits
    lr_scales: float = 5e-3  # Adam lr of the log-scales
    lr_quats: float = 1e-3  # Adam lr of the quaternions
    ssim_weight: float = 0.2  # loss = (1 - w) L1 + w (1 - SSIM)
    # The renderer's 2D low-pass in px² (gsplat: 0.3). The model is rendered with the value it was trained
    # with everywhere after (pose, references, calibration): it is saved in config.json.
    eps2d: float = 0.3
    refine_start: int = 500  # DefaultStrategy.refine_start_iter: first step that densifies
    refine_stop: int = 15_000  # DefaultStrategy.refine_stop_iter: no densification or reset from here on
    refine_every: int = 100  # DefaultStrategy.refine_every: steps between densifications
    reset_every: int = 3_000  # steps between opacity resets (0 = never)
    grow_grad2d: float = 2e-4  # DefaultStrategy.grow_grad2d: mean screen-gradient that triggers growth
    grow_scale3d: float = 0.01  # DefaultStrategy.grow_scale3d: duplicate below, split above (x scene_scale)
    prune_opa: float = 0.005  # DefaultStrategy.prune_opa: prune Gaussians less opaque than this
    prune_scale3d: float = 0.1  # DefaultStrategy.prune_scale3d: prune larger (x scene_scale) late in the run
    torch_threads: int | None = None  # torch intra-op threads while training on CPU; None = chosen by
    #   splatlab.threads from the image size (one for small images, where the Numba kernels do the work)
    backend: str = "auto"  # "auto" (gsplat on GPU, Numba kernel on CPU), "cpu", "torch" or "gsplat"
    checkpoint_every: int = 1_000  # write checkpoint.pt every this many steps (0 = only at the end)
    log_every: int = 10  # refresh the progress bar every this many steps

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"TrainConfig: {msg}")

        need(self.iterations > 0, f"iterations must be positive, got {self.iterations}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.init_points > 0, f"init_points must be positive, got {self.init_points}")
        need(0 <= self.sh_degree <= 3, f"sh_degree must be 0..3, got {self.sh_degree}")
        need(self.sh_degree_interval > 0, "sh_degree_interval must be positive")
        need(self.eval_every_nth >= 2, f"eval_every_nth must be >= 2, got {self.eval_every_nth}")
        need(0.0 <= self.ssim_weight <= 1.0, f"ssim_weight must be in [0, 1], got {self.ssim_weight}")
        need(self.eps2d >= 0.0, f"eps2d must be >= 0, got {self.eps2d}")
        need(0.0 < self.init_opacity < 1.0, f"init_opacity must be in (0, 1), got {self.init_opacity}")
        need(0.0 < self.lr_means_final <= 1.0, "lr_means_final must be in (0, 1]")
        need(self.refine_every > 0, "refine_every must be positive")
        need(self.resolution is None or self.resolution > 0, "resolution must be positive or None")
        need(self.backend in ("auto", "cpu", "torch", "gsplat"), f"unknown backend {self.backend!r}")

    @classmethod
    def preset(cls, name: str, /, **overrides: Any) -> TrainConfig:
        """A named preset, optionally with fields replaced.

        - ``gpu``: SplatPose's run: full resolution, 30k steps, 100k initial points.
        - ``cpu``: 128 px, 4000 steps from 5k half-size points, densifying every 100 steps until 1200, no
          opacity reset, and a 2D low-pass of 0.03 px² instead of 0.3: 38-43 dB held-out PSNR on LEGO-MAD
          in about 45 s of training on a 2-core laptop. The 2500 steps after densification sharpen the
          model that pose refinement fits: on the development split (LEGO-MAD seed 1) 1500 steps gave
          pose AUC@5 94.6, 4000 steps 95.7 (05Parrot 90.2 -> 91.9; 6000 steps: 92.6 from the true pose,
          for 50 % more time). At 128² gsplat's 0.3 px² blurs every silhouette by
          more than the pixel footprint of the (anti-aliased) views, so no model fits their edges, and the
          compromise shifts the pose optimum (05Parrot: 33.8 dB and pose AUC@5 82 with 0.3, 37.2 dB and 91
          with 0.03; 0.01 was no better). SH degree 2 (view-dependent colour): highlights that move with
          the view are drawn where the views saw them (realistic look, development split: image AUROC
          90.1 -> 92.2 with the same map, held-out PSNR +0.6 dB; see docs/realism.md).
        - ``paper``: the papers' 400 px (MAD, SplatPose) on a CPU: SplatPose's schedule in spirit
          (densification, then steps that sharpen), scaled to 2 cores: 5000 steps from 10k points,
          densifying every 100 steps until 2500, SH degree 2 and the low-pass of ``cpu``.
        - ``fast``: 128 px, 400 steps from 3k points, a lower growth threshold, the same low-pass as ``cpu``:
          30 dB on 01Cat in ~5 s, for notebooks and CI (``SPLATLAB_FAST=1``).
        """
        if name == "gpu":
            base = cls()
        elif name == "cpu":
            base = cls(
                name="cpu", resolution=128, iterations=4_000, batch_size=1, init_points=5_000,
                init_extent=None, init_scale=0.5, sh_degree=2, sh_degree_interval=500, refine_start=100,
                refine_stop=1_200, refine_every=100, reset_every=0, checkpoint_every=500, eps2d=LOW_RES_EPS2D,
            )
        elif name == "paper":
            base = cls(
                name="paper", resolution=400, iterations=5_000, batch_size=1, init_points=10_000,
                init_extent=None, init_scale=0.5, sh_degree=2, sh_degree_interval=500, refine_start=100,
                refine_stop=2_500, refine_every=100, reset_every=0, checkpoint_every=500, eps2d=LOW_RES_EPS2D,
            )
        elif name == "fast":
            base = cls(
                name="fast", resolution=128, iterations=400, batch_size=1, init_points=3_000,
                init_extent=None, init_scale=0.5, sh_degree_interval=100, refine_start=50, refine_stop=350,
                refine_every=50, grow_grad2d=1e-4, reset_every=0, checkpoint_every=200, eps2d=LOW_RES_EPS2D,
            )
        else:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(base, **overrides) if overrides else base

    def with_iterations(self, iterations: int) -> TrainConfig:
        """The same schedule stretched to ``iterations`` steps (densification/reset/SH steps scale along)."""
        f = iterations / self.iterations

        def s(x: int) -> int:
            return max(1, round(x * f)) if x > 0 else 0

        return dataclasses.replace(
            self, iterations=iterations, refine_start=s(self.refine_start), refine_stop=s(self.refine_stop),
            refine_every=s(self.refine_every), reset_every=s(self.reset_every),
            sh_degree_interval=s(self.sh_degree_interval),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        if "preset" in d and "name" not in d:  # run folders written before the field was renamed
            d["name"] = d.pop("preset")
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {unknown}")
        return cls(**d)


def default_config(device=None) -> TrainConfig:
    """``fast`` when ``SPLATLAB_FAST=1``; else ``gpu`` for an accelerator ``device``, ``cpu`` otherwise."""
    if os.environ.get("SPLATLAB_FAST", "") not in ("", "0"):
        return TrainConfig.preset("fast")
    if device is not None and torch.device(device).type != "cpu":
        return TrainConfig.preset("gpu")
    return TrainConfig.preset("cpu")


@dataclass
class TrainHistory:
    """What happened during training, step by step (JSON-friendly)."""

    step: list[int] = field(default_factory=list)  # step index of each record
    loss: list[float] = field(default_factory=list)  # training loss of the step's batch
    psnr: list[float] = field(default_factory=list)  # training PSNR of the step's batch, dB
    n_gaussians: list[int] = field(default_factory=list)  # Gaussians after the step
    seconds: list[float] = field(default_factory=list)  # wall time since the run started (resumes add up)
    timings: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in TIMERS})  # seconds per phase
    eval_step: list[int] = field(default_factory=list)  # steps done when the held-out views were evaluated
    eval_psnr: list[float] = field(default_factory=list)  # held-out PSNR at those steps, dB
    eval_ssim: list[float] = field(default_factory=list)  # held-out SSIM at those steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainHistory:
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------------------


def _as_views(views) -> tuple[Tensor, Cameras]:
    """Validate ``views`` (``.images`` [V,H,W,3] or a list of [H,W,3], ``.cameras``) -> (images, cameras)."""
    if not hasattr(views, "images") or not hasattr(views, "cameras"):
        raise ValueError("views must have .images [V, H, W, 3] and .cameras (e.g. splatlab.data.TrainViews)")
    images, cameras = views.images, views.cameras
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("views is empty: no training images")
        sizes = sorted({tuple(im.shape) for im in images})
        if len(sizes) > 1:
            raise ValueError(f"views.images have mixed sizes {sizes}; all views must share one size")
        images = torch.stack(list(images))
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"views.images must be [V, H, W, 3], got {getattr(images, 'shape', type(images))}")
    if images.shape[0] == 0:
        raise ValueError("views is empty: no training images")
    if not isinstance(cameras, Cameras) or len(cameras) != images.shape[0]:
        raise ValueError(f"views.cameras must be a Cameras batch of {images.shape[0]} (one per image)")
    V, H, W, _ = images.shape
    if (cameras.width, cameras.height) != (W, H):
        raise ValueError(
            f"views have mixed sizes: images are {W}x{H} but cameras are {cameras.width}x{cameras.height}"
        )
    return images.float(), cameras


def _resize(images: Tensor, cameras: Cameras, resolution: int | None) -> tuple[Tensor, Cameras]:
    """Area-downsample views so that the longer side is ``resolution`` (never upsamples). [V,H,W,3]"""
    V, H, W, _ = images.shape
    if resolution is None or max(H, W) <= resolution:
        return images, cameras
    s = resolution / max(H, W)
    w, h = max(1, round(W * s)), max(1, round(H * s))
    out = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="area")
    return out.permute(0, 2, 3, 1).contiguous(), cameras.resized(w, h)


def split_views(n_views: int, config: TrainConfig) -> tuple[Tensor, Tensor]:
    """Indices of training and held-out views: every ``eval_every_nth`` view (index % n == 0) held out.

    Returns:
        ``(train_idx [V_train], test_idx [V_test])``; ``test_idx`` is empty when ``config.eval`` is False.
    """
    idx = torch.arange(n_views)
    if not config.eval:
        return idx, idx[:0]
    held = idx % config.eval_every_nth == 0
    if held.all() or (~held).all():
        raise ValueError(f"eval=True needs at least 2 views to hold one out, got {n_views}")
    return idx[~held], idx[held]


def scene_extent(cameras: Cameras) -> float:
    """3DGS's scene scale: 1.1 x the largest distance of a camera centre from the centres' mean."""
    c = cameras.centers
    return 1.1 * float((c - c.mean(0)).norm(dim=-1).max().clamp_min(1e-6))


def object_extent(cameras: Cameras) -> float:
    """Half-side of a cube at the origin that every camera sees whole: min of depth x tan(fov / 2)."""
    depth = cameras.centers.norm(dim=-1)  # the object is centred at the origin
    half = 0.5 * min(cameras.width, cameras.height)
    focal = torch.maximum(cameras.Ks[:, 0, 0], cameras.Ks[:, 1, 1])
    return float((depth * half / focal).min())


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def _optimizers(splats, config: TrainConfig, scene_scale: float) -> dict[str, torch.optim.Adam]:
    lrs = {
        "means": config.lr_means * scene_scale, "quats": config.lr_quats, "scales": config.lr_scales,
        "opacities": config.lr_opacities, "sh0": config.lr_sh0, "shN": config.lr_shN,
    }
    # eps 1e-15 as 3DGS and gsplat's trainer: gradients of tiny Gaussians are tiny too. The fused kernel
    # (one call per parameter instead of a dozen tensor ops) is the same update up to rounding.
    fused = splats["means"].device.type in ("cpu", "cuda")
    return {k: torch.optim.Adam([{"params": [splats[k]], "lr": lr, "name": k}], eps=1e-15, fused=fused)
            for k, lr in lrs.items()}


def _strategy(config: TrainConfig):
    from gsplat.strategy import DefaultStrategy

    return DefaultStrategy(
        prune_opa=config.prune_opa, grow_grad2d=config.grow_grad2d, grow_scale3d=config.grow_scale3d,
        prune_scale3d=config.prune_scale3d, refine_start_iter=config.refine_start,
        refine_stop_iter=config.refine_stop, refine_every=config.refine_every,
        reset_every=config.reset_every if config.reset_every > 0 else 10 * config.iterations + 1,
    )


class _ViewSampler:
    """Epochs of shuffled training views drawn ``batch`` at a time from a seeded ``torch.Generator``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.gen, self.order, self.pos = n, torch.Generator().manual_seed(seed), torch.empty(0), 0

    def next(self, batch: int) -> Tensor:
        out = []
        while len(out) < batch:
            if self.pos >= len(self.order):
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            out.append(int(self.order[self.pos]))
            self.pos += 1
        return torch.tensor(out)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.gen.set_state(d["gen"])
        self.order, self.pos = d["order"].clone(), int(d["pos"])


@torch.no_grad()
def evaluate(splats, images: Tensor, cameras: Cameras, *, sh_degree: int | None = None,
             backend: str = "auto", batch: int = 8, eps2d: float = 0.3) -> dict[str, float]:
    """Mean per-view PSNR (dB) and SSIM of renders (on white, clamped to [0, 1]) against images.

    Args:
        splats: Trained parameters.
        images: Reference views on white. [V, H, W, 3]
        cameras: Their cameras. [V]
        sh_degree: SH degree to render with; all the splats hold by default.
        backend: Render backend.
        batch: Views rendered per call.
        eps2d: The renderer's 2D low-pass in px²; the model's own (``TrainConfig.eps2d``).
    """
    if len(images) == 0:
        raise ValueError("evaluate: no views given")
    white = torch.ones(3, device=images.device)
    psnrs, ssims = [], []
    for i in range(0, len(images), batch):
        idx = torch.arange(i, min(i + batch, len(images)))
        out, _, _ = render_splats(splats, cameras[idx], sh_degree=sh_degree, background=white,
                                  backend=backend, eps2d=eps2d)
        out = out.clamp(0, 1)
        psnrs += [float(psnr(o, t)) for o, t in zip(out, images[idx], strict=True)]
        ssims += ssim(out, images[idx], reduce=False).tolist()
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "n_views": len(psnrs)}


def train(
    views, config: TrainConfig | None = None, *, out_dir: str | os.PathLike | None = None,
    resume: bool = False, device=None, progress: bool = True, stop_at: int | None = None,
) -> tuple[torch.nn.ParameterDict, TrainHistory]:
    """Train splats of the object seen in ``views``.

    Args:
        views: Posed training views: ``.images`` on white in [0, 1] [V, H, W, 3] and ``.cameras`` [V]
            (a :class:`splatlab.data.TrainViews`).
        config: Hyper-parameters; :func:`default_config` when None.
        out_dir: Run folder for ``splats.ply``, ``config.json``, ``metrics.json``, ``checkpoint.pt``
            (created; its parent must exist). Nothing is written when None.
        resume: Continue from ``out_dir/checkpoint.pt`` if there is one (same config required).
        device: Device to train on; that of ``views.images`` when None.
        progress: Show a ``tqdm`` progress bar.
        stop_at: Stop after this step (checkpointing), as if interrupted; the run stays resumable.

    Returns:
        ``(splats, history)``; ``history`` also carries held-out PSNR/SSIM when ``config.eval``.
    """
    config = default_config(device) if config is None else config
    images, cameras = _as_views(views)
    device = images.device if device is None else torch.device(device)
    images, cameras = _resize(images.to(device), cameras.to(device), config.resolution)
    from splatlab import run as run_folder

    out = run_folder.prepare_run_dir(out_dir)
    train_idx, test_idx = split_views(len(images), config)
    scene_scale = config.scene_scale or scene_extent(cameras)
    ckpt = run_folder.load_checkpoint(out, config) if (resume and out is not None) else None
    source = (getattr(views, "class_dir", None), getattr(views, "size", None))
    threads = contextlib.nullcontext()
    if device.type == "cpu":
        torch_n, numba_n = thread_counts(images.shape[1] * images.shape[2])
        threads = use_threads(config.torch_threads or torch_n, numba_n)
    with threads:
        return _train_loop(images, cameras, train_idx, test_idx, config, out, ckpt, scene_scale, device,
                           progress, stop_at, source)


def _train_loop(images, cameras, train_idx, test_idx, config, out, ckpt, scene_scale, device, progress,
                stop_at, source):
    from tqdm.auto import tqdm

    from splatlab import run as run_folder

    train_images, train_cams = images[train_idx], cameras[train_idx]
    white = torch.ones(3, device=device)
    devices = [device] if device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):  # gsplat's split draws global randn
        torch.manual_seed(config.seed)
        extent = config.init_extent if config.init_extent is not None else object_extent(cameras)
        splats = random_splats(config.init_points, extent=extent, sh_degree=config.sh_degree,
                               init_opacity=config.init_opacity, init_scale=config.init_scale,
                               seed=config.seed, device=device)
        optimizers = _optimizers(splats, config, scene_scale)
        strategy = _strategy(config)
        strategy.check_sanity(splats, optimizers)
        state = strategy.initialize_state(scene_scale=scene_scale)
        sampler = _ViewSampler(len(train_idx), config.seed)
        history, start = TrainHistory(), 0
        if ckpt is not None:
            start, history, state = _restore(ckpt, splats, optimizers, sampler, device)
            optimizers = _optimizers(splats, config, scene_scale)
            for k, opt in optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][k])
            log.info("resuming %s at step %d", out, start)
        end = config.iterations if stop_at is None else min(stop_at, config.iterations)
        t_run = time.perf_counter() - (history.seconds[-1] if history.seconds else 0.0)
        timers = history.timings
        bar = tqdm(total=config.iterations, initial=start, disable=not progress, desc="train", leave=False)
        for step in range(start, end):
            sh_deg = min(step // config.sh_degree_interval, config.sh_degree)
            idx = sampler.next(config.batch_size).to(device)
            means_lr = config.lr_means * scene_scale * config.lr_means_final ** (step / config.iterations)
            optimizers["means"].param_groups[0]["lr"] = means_lr

            t0 = time.perf_counter()
            # every input is checked on the first step of this process; after it the parameters change only
            # by Adam and densification, and a non-finite value shows in the loss (checked just below)
            img, _, meta = render_splats(splats, train_cams[idx], sh_degree=sh_deg, background=white,
                                         backend=config.backend, eps2d=config.eps2d, check=step == start)
            t1 = time.perf_counter()
            strategy.step_pre_backward(splats, optimizers, state, step, meta)
            target = train_images[idx]
            loss = photometric_loss(img, target, config.ssim_weight)
            if not math.isfinite(float(loss.detach())):
                bad = [k for k, v in splats.items() if not bool(torch.isfinite(v).all())]
                raise FloatingPointError(
                    f"training diverged: non-finite loss at step {step} ({', '.join(bad) or 'render'})"
                )
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            for opt in optimizers.values():
                opt.step()
            for param in splats.values():  # each optimizer's zero_grad(set_to_none=True), minus the overhead
                param.grad = None
            t4 = time.perf_counter()
            strategy.step_post_backward(splats, optimizers, state, step, meta, packed=False)
            if config.reset_every > 0 and 0 < step < config.refine_stop and step % config.reset_every == 0:
                from gsplat.strategy.ops import reset_opa  # see the module docstring: gsplat never calls it

                reset_opa(splats, optimizers, state, value=2.0 * config.prune_opa)
            t5 = time.perf_counter()
            for k, dt in zip(TIMERS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=False):
                timers[k] += dt

            n = len(splats["means"])
            history.step.append(step)
            history.loss.append(float(loss.detach()))
            with torch.no_grad():
                history.psnr.append(float(psnr(img.clamp(0, 1), target)))
            history.n_gaussians.append(n)
            if (config.eval_every > 0 and len(test_idx) and (step + 1) % config.eval_every == 0
                    and step + 1 < config.iterations):  # the final evaluation follows the loop
                _record_eval(history, step + 1, splats, images[test_idx], cameras[test_idx], sh_deg, config)
            history.seconds.append(time.perf_counter() - t_run)
            bar.update(1)
            if step % config.log_every == 0 or step == end - 1:
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}", psnr=f"{history.psnr[-1]:.2f}", n=n)
            done = step + 1
            if out is not None and config.checkpoint_every > 0 and done % config.checkpoint_every == 0:
                run_folder.save_checkpoint(
                    out, _checkpoint(done, config, splats, optimizers, state, sampler, history)
                )
        bar.close()
        done = max(start, end)
        if out is not None and done < config.iterations:
            ckpt = _checkpoint(done, config, splats, optimizers, state, sampler, history)
            run_folder.save_checkpoint(out, ckpt)
            return splats, history

        if len(test_idx):
            _record_eval(history, done, splats, images[test_idx], cameras[test_idx], config.sh_degree, config)
        if out is not None:
            ckpt = _checkpoint(done, config, splats, optimizers, state, sampler, history)
            run_folder.save_checkpoint(out, ckpt)
            run_folder.write_outputs(out, config, splats, history, n_test=len(test_idx), class_dir=source[0],
                                     size=source[1])
    return splats, history


def _record_eval(history, step, splats, images, cameras, sh_degree, config) -> None:
    t = time.perf_counter()
    m = evaluate(splats, images, cameras, sh_degree=sh_degree, backend=config.backend, eps2d=config.eps2d)
    history.eval_step.append(int(step))
    history.eval_psnr.append(m["psnr"])
    history.eval_ssim.append(m["ssim"])
    history.timings["eval"] += time.perf_counter() - t
    log.info("step %d: held-out PSNR %.2f dB, SSIM %.4f", step, m["psnr"], m["ssim"])


# ----------------------------------------------------------------------------------------------------------
# Checkpoint state (the files themselves are splatlab.run's)
# ----------------------------------------------------------------------------------------------------------


def _checkpoint(step, config, splats, optimizers, state, sampler, history) -> dict:
    return {
        "step": step,
        "config": config.to_dict(),
        "params": {k: v.detach().cpu() for k, v in splats.items()},
        "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
        "strategy_state": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.items()},
        "sampler": sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "device_rng": _device_rng(splats["means"].device),
        "history": history.to_dict(),
    }


def _device_rng(device: torch.device) -> Tensor | None:
    """The accelerator RNG state (gsplat's split samples there on a GPU); None on the CPU."""
    return None if device.type == "cpu" else getattr(torch, device.type).get_rng_state(device)


def _restore(ckpt, splats, optimizers, sampler, device):
    for k, v in ckpt["params"].items():
        splats[k] = torch.nn.Parameter(v.to(device).contiguous())
    state = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in ckpt["strategy_state"].items()}
    sampler.load_state_dict(ckpt["sampler"])
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("device_rng") is not None and device.type != "cpu":
        getattr(torch, device.type).set_rng_state(ckpt["device_rng"], device)
    return int(ckpt["step"]), TrainHistory.from_dict(ckpt["history"]), state


def train_cli(
    data: tyro.conf.Positional[Path], out: Path, preset: str = "cpu", resume: bool = False,
    iterations: int | None = None,
    seed: int = 0, size: int | None = None, eval: bool = True, device: str | None = None,
) -> int:
    """Train splats of one class folder and write a run folder.

    Args:
        data: The class folder (MAD layout), e.g. data/lego-mad/01Cat.
        out: The run folder to write (its parent must exist).
        preset: gpu (SplatPose: full resolution, 30k steps), cpu (128 px, minutes) or fast (seconds).
        resume: Continue an interrupted run in OUT from its checkpoint.
        iterations: Stretch the preset's schedule to this many steps.
        seed: Random seed.
        size: Training resolution (longer side, px); the preset's when not given.
        eval: Hold out every 8th view and report PSNR/SSIM on them.
        device: Torch device to train on (default: CPU).
    """
    from splatlab.data.mad import load_train

    config = TrainConfig.preset(preset, seed=seed, eval=eval)
    if iterations is not None:
        config = config.with_iterations(iterations)
    if size is not None:
        config = dataclasses.replace(config, resolution=size)
    views = load_train(Path(data), config.resolution)
    splats, history = train(views, config, out_dir=out, resume=resume, device=device)
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    log.info(
        "%s: %d Gaussians in %.0f s; held-out PSNR %s dB, SSIM %s; wrote %s", Path(data).name,
        metrics["n_gaussians"], metrics["seconds"],
        "n/a" if metrics["psnr"] is None else f"{metrics['psnr']:.2f}",
        "n/a" if metrics["ssim"] is None else f"{metrics['ssim']:.4f}", out,
    )
    return 0
