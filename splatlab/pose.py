"""Pose of an unposed query image: coarse retrieval, then gradient refinement through the renderer.

SplatPose's recipe, step by step:

1. **Coarse.** A :class:`splatlab.retrieval.Retriever` ranks the training views by similarity to the query;
   the ``k`` best are the candidate starting poses.
2. **Multi-hypothesis.** Each candidate is refined briefly (``short_steps``, all candidates in one batched
   render); the one with the lowest loss wins. This settles symmetric or ambiguous views, where the most
   similar-looking training view is not always the nearest one.
3. **Refinement.** The winner is refined fully: a 6-vector δ in se(3) is applied to the camera,
   ``viewmat = se3_exp(δ') @ viewmat₀`` (left-multiplication: δ acts in the *camera* frame, so its
   rotation part turns the camera about its own centre and its translation part moves it along its own
   axes). Adam minimises ``0.8·L1 + 0.2·(1−SSIM)`` between the render on white and the query, with lr 0.01
   decayed ×0.8 every 100 steps for 175 steps (SplatPose's defaults). Optionally the early steps run at
   reduced resolution (a pyramid), the run stops early on a plateau, and a winner still turning when the
   schedule ends runs its full-size steps once more (``restart_moved_deg``).

**Reduced sizes.** At scale ``a`` the query is downsampled with area interpolation and the cameras'
intrinsics are scaled by ``a``. The renderer's 2D low-pass filter (``eps2d``, 0.3 px²) is given in pixels,
so it is scaled by ``a²`` too: left at 0.3 low-res px² it would fatten every Gaussian (at 1/4 size by 16×
in full-size pixels), the render would be darker than the query and the loss would have no minimum near the
true pose (measured: the refinement walked 3° away from the truth at 64²).

SplatPose moves the Gaussians by the inverse transform instead of moving the camera; rendering the
Gaussians moved by ``T`` into camera ``V`` equals rendering the fixed Gaussians into ``V @ T``. The order
matters (SplatPose needed a post-publication fix to its quaternion order), so ``tests/test_pose.py``
checks it explicitly.

**Translation scaling.** δ = (ρ, φ) holds radians in φ but world units in ρ. A rotation by φ shifts the
object in the image by about ``f·φ`` pixels, a sideways move by ρ only by ``f·ρ/d`` at distance ``d``, so
with one learning rate the translation would move ``d`` times too slowly. The optimised vector is
therefore ``δ = (ρ/s, φ)`` with ``s`` = the start camera's distance to the splats' centre (about 4 on
MAD-like rigs) unless ``translation_scale`` fixes it: lr 0.01 then moves about 0.6° or 0.04 units a step.

Everything the optimiser visited is kept in a :class:`PoseResult`; figures are drawn afterwards from it
(:mod:`splatlab.viz.pose_figures`). Evaluation (rotation/translation errors, pose AUC) and the basin of
convergence are in :mod:`splatlab.pose_eval`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from splatlab.appearance import APPEARANCES, align_render
from splatlab.cameras import rotation_angle_deg, se3_exp, se3_log
from splatlab.losses import photometric_loss
from splatlab.pnp import PnPConfig, PnPResult, pnp_losses, solve_pnp
from splatlab.render import render
from splatlab.render.sh import eval_sh
from splatlab.retrieval import Retriever, check_query
from splatlab.splats import activated, sh_degree_of
from splatlab.threads import threads_for
from splatlab.train import LOW_RES_EPS2D

log = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "ROUTES",
    "Candidate",
    "PoseConfig",
    "PoseDivergedError",
    "PoseResult",
    "apply_delta",
    "default_preset",
    "delta_between",
    "estimate_pose",
    "pose_config",
    "refine",
]


#: Routes to a pose: "refine" (retrieval, hypotheses, gradient refinement: SplatPose), "pnp" (2D–3D matches
#: and PnP from the retrieved views, no optimisation: SplatPose+, :mod:`splatlab.pnp`) and "pnp+refine" (the
#: PnP pose as the start of the full refinement, no brief hypotheses).
ROUTES: tuple[str, ...] = ("refine", "pnp", "pnp+refine")


@dataclass(frozen=True)
class PoseConfig:
    """Settings of coarse-to-fine pose estimation; defaults are SplatPose's refinement plus 3 hypotheses."""

    method: str = "features"  # coarse retrieval: "features" (EfficientNet-lite0) or "sift" (match counts)
    k: int = 3  # candidate training views refined briefly; 1 = trust the best match (SplatPose)
    short_steps: int = 25  # steps of the brief refinement of every candidate (ignored when k = 1)
    # The best this many candidates after the brief refinement are refined fully, side by side (one batched
    # render per step), and the lowest final loss wins; 1 = SplatPose's single refinement.
    finalists: int = 1
    # Full-size steps after which only the finalist with the lowest loss so far goes on (successive halving:
    # the others stop rendering); 0 = every finalist runs all steps.
    finalist_steps: int = 0
    short_scale: float = 0.5  # image-size factor of the brief refinement (smaller is faster)
    steps: int = 175  # steps of the full refinement of the winner, pyramid steps included (SplatPose: 175)
    lr: float = 0.01  # Adam learning rate on δ (SplatPose: 0.01)
    lr_decay: float = 0.8  # learning-rate factor applied every lr_decay_every steps (SplatPose: 0.8)
    lr_decay_every: int = 100  # steps between learning-rate decays (SplatPose: 100)
    ssim_weight: float = 0.2  # loss = (1 - w)·L1 + w·(1 - SSIM) (SplatPose / 3DGS: 0.2)
    # Rotation centre of δ: "camera" (its own centre, se3_exp(δ) @ viewmat₀) or "object" (the splats'
    # centre on the optical axis).
    pivot: str = "object"
    # World units per unit of δ's translation; None: the camera-to-centre distance ("camera" pivot) or the
    # object radius ("object" pivot).
    translation_scale: float | None = None
    # Image-size factors of the early full-refinement steps, coarse to fine, e.g. (0.25, 0.5).
    pyramid_scales: tuple[float, ...] = ()
    pyramid_steps: tuple[int, ...] = ()  # steps at each pyramid scale; the remaining steps run at full size
    early_stop_patience: int = 0  # stop after this many full-size steps without improvement; 0 = off
    early_stop_tol: float = 1e-3  # relative loss decrease that counts as an improvement
    # Convergence stop: end the full-size steps once every refined pose has moved by less than
    # ``converge_tol`` (largest component of δ: radians, and translation in units of δ's scale) over the last
    # ``converge_window`` steps; 0 = off. Checked once only one finalist is left (``finalist_steps``).
    converge_window: int = 0
    converge_tol: float = 1e-3
    # Restart: a winner whose camera still turned by more than this many degrees over its last
    # ``restart_window`` full-size steps has not converged (it started far off, and the decayed learning rate
    # stopped it short): its full-size steps run once more from its best pose, lr restarted; 0 = off.
    restart_moved_deg: float = 0.0
    restart_window: int = 8
    record_every: int = 0  # keep a render every n steps of the full refinement (and the last); 0 = none
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # render background; MAD objects are on white
    # Photometric alignment of each render to the query before the loss (splatlab.appearance): "none",
    # "gain" or "affine" per colour channel, re-fitted at every step.
    appearance: str = "none"
    # The renderer's 2D low-pass in px² at full size (scaled by scale² at reduced sizes): the splats' own, the
    # TrainConfig.eps2d they were trained with (DetectorModel.from_run sets it from the run folder).
    eps2d: float = 0.3
    # Differentiate view-dependent (SH) colour with respect to the pose too. False: the colours are still
    # evaluated at every step's camera, but as constants: their derivative is small beside the geometry's,
    # and skipping it saves a sixth to a quarter of a step. No effect on SH-degree-0 splats.
    colour_grad: bool = False
    backend: str = "auto"  # renderer: "auto" (gsplat on CUDA, Numba kernel on CPU), "cpu", "torch", "gsplat"
    # CPU threads (torch and Numba) while estimating, restored after; None = chosen by splatlab.threads
    # from the image size
    num_threads: int | None = None
    route: str = "refine"  # one of ROUTES
    pnp: PnPConfig = PnPConfig()  # the PnP route's settings (routes "pnp" and "pnp+refine")

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.method not in ("features", "sift"):
            raise ValueError(f"method must be 'features' or 'sift', got {self.method!r}")
        if self.finalists < 1:
            raise ValueError(f"finalists must be >= 1, got {self.finalists}")
        if self.finalist_steps < 0:
            raise ValueError(f"finalist_steps must be >= 0, got {self.finalist_steps}")
        if self.k < 1 or self.steps < 1 or self.short_steps < 0:
            raise ValueError(
                f"need k >= 1, steps >= 1, short_steps >= 0; got {self.k}, {self.steps}, {self.short_steps}"
            )
        if not self.lr > 0 or not 0 < self.lr_decay <= 1 or self.lr_decay_every < 1:
            raise ValueError("need lr > 0, 0 < lr_decay <= 1 and lr_decay_every >= 1")
        if len(self.pyramid_scales) != len(self.pyramid_steps):
            raise ValueError("pyramid_scales and pyramid_steps must have the same length")
        if any(not 0 < s <= 1 for s in (*self.pyramid_scales, self.short_scale)):
            raise ValueError("pyramid_scales and short_scale must be in (0, 1]")
        if sum(self.pyramid_steps) > self.steps or any(n < 0 for n in self.pyramid_steps):
            raise ValueError(f"pyramid_steps must be >= 0 and sum to at most steps={self.steps}")
        if self.appearance not in APPEARANCES:
            raise ValueError(f"appearance must be one of {APPEARANCES}, got {self.appearance!r}")
        if self.pivot not in ("camera", "object"):
            raise ValueError(f"pivot must be 'camera' or 'object', got {self.pivot!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if self.converge_window < 0 or not self.converge_tol > 0:
            raise ValueError(
                f"need converge_window >= 0 and converge_tol > 0, got {self.converge_window}, "
                f"{self.converge_tol}"
            )
        if self.restart_moved_deg < 0 or self.restart_window < 1:
            raise ValueError(
                f"need restart_moved_deg >= 0 and restart_window >= 1, got {self.restart_moved_deg}, "
                f"{self.restart_window}"
            )
        if self.translation_scale is not None and not self.translation_scale > 0:
            raise ValueError(f"translation_scale must be positive or None, got {self.translation_scale}")


#: Named settings. "splatpose": the paper's refinement from the single best match. "gpu": the defaults
#: (PoseConfig()), the preset for CUDA (:func:`default_preset`); "full" is its older name.
#: "cpu": tuned for LEGO-MAD 128² with splats of the ``cpu`` training preset on a 2-core CPU: 5 hypotheses
#: refined 8 steps at 1/4 size, the best 2 of them then up to 48 full-size steps side by side (two of the
#: benchmark's 240 queries failed with 3 and 1: the true neighbour was 4th, or lost the brief refinement),
#: lr 0.03 decayed x0.6 every 8 steps (the schedule of 60 steps every 10, compressed: the same end lr; on the
#: development split's 105 queries AUC@5 96.92 against 96.71; 42 steps every 7 lost 0.8), and the L1
#: loss alone (from the true pose it lands nearer the truth than with SSIM, 0.36° vs 0.39° mean on 01Cat,
#: and skips SSIM's cost). The schedule was checked without any model error: a query rendered from the
#: splats themselves, started 2° off, ends 0.04° off (mean, 01Cat; 40 steps with decay 0.7 ended 0.19° off).
#: No early stop: a plateau rule stopped too soon here (01Cat AUC@5 89). The losing finalist stops after 8
#: full-size steps, and SH colour is not differentiated (``colour_grad``): the same pose AUC@5 on the
#: development split in about half the time (docs/speed.md). No convergence stop (``converge_window``): with
#: 4 steps and 1e-3 it saved about 3 of the 48 steps and no AUC (−0.2 with the 60-step schedule).
#: A winner that still turned by more than 0.25° over its last 8 steps is refined once more (``restart_*``;
#: about one query in eight on the development splits, pose AUC@5 +0.5 on both looks, docs/speed.md).
#: "paper": the papers' 400² with splats of the ``paper`` training preset: the search of "cpu", then the full
#: refinement at 1/4 and 1/2 size (15 + 15 steps) before 40 steps at 400², the losing finalist dropped
#: after 8 of them. 40 full-size steps were chosen on a 400² development split (docs/speed.md): pose
#: AUC@5° 97.5 with 20, 98.7 with 40, 98.7 with 60.
#: "fast": a few steps, for tests and SPLATLAB_FAST=1. "cpu" and "fast" render with the 2D low-pass of the
#: training presets of the same names (``LOW_RES_EPS2D``); "splatpose" and "full" with gsplat's 0.3.
PRESETS: dict[str, PoseConfig] = {
    "splatpose": PoseConfig(k=1),
    "gpu": PoseConfig(),
    "full": PoseConfig(),
    "cpu": PoseConfig(
        k=5,
        finalists=2,
        finalist_steps=8,
        short_steps=8,
        short_scale=0.25,
        steps=48,
        lr=0.03,
        lr_decay=0.6,
        lr_decay_every=8,
        ssim_weight=0.0,
        eps2d=LOW_RES_EPS2D,
        restart_moved_deg=0.25,
    ),
    "paper": PoseConfig(
        k=5,
        finalists=2,
        finalist_steps=8,
        short_steps=8,
        short_scale=0.125,
        steps=70,
        pyramid_scales=(0.25, 0.5),
        pyramid_steps=(15, 15),
        lr=0.03,
        lr_decay=0.6,
        lr_decay_every=10,
        ssim_weight=0.0,
        eps2d=LOW_RES_EPS2D,
    ),
    "fast": PoseConfig(
        k=2, short_steps=4, short_scale=0.5, steps=20, lr=0.02, early_stop_patience=5, eps2d=LOW_RES_EPS2D
    ),
}
#: "pnp": SplatPose+'s route, PnP from SIFT matches to the retrieved views (:class:`PnPConfig`), no
#: refinement. "pnp+refine": the PnP pose as the one start of "cpu"'s refinement, 40 steps (docs/pnp.md).
PRESETS["pnp"] = dataclasses.replace(PRESETS["cpu"], route="pnp")
PRESETS["pnp+refine"] = dataclasses.replace(
    PRESETS["cpu"], route="pnp+refine", finalists=1, steps=40, lr_decay_every=10
)  # the schedule it was measured with (before "cpu" was compressed)


def default_preset(device=None) -> str:
    """The pose preset splatlab uses by default: ``gpu`` on an accelerator ``device``, else ``cpu``.

    The same choice everywhere (``load_detector``, ``splatlab detect``, ``splatlab demo``,
    ``benchmarks/detect.py``); :func:`pose_config` turns either into ``fast`` under ``SPLATLAB_FAST=1``.
    """
    if device is not None and torch.device(device).type != "cpu":
        return "gpu"
    return "cpu"


def pose_config(preset: str = "full", **overrides) -> PoseConfig:
    """A preset's :class:`PoseConfig` with overrides; ``SPLATLAB_FAST=1`` gives "fast" on the same route."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    base = PRESETS[preset]
    if os.environ.get("SPLATLAB_FAST") == "1":  # "fast" settings on the preset's route
        base = dataclasses.replace(PRESETS["fast"], route=base.route, pnp=base.pnp)
    return dataclasses.replace(base, **overrides)


class PoseDivergedError(RuntimeError):
    """The refinement produced a non-finite loss or pose; ``.step`` is the step where it happened."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# ----------------------------------------------------------------------------------------------------------
# The camera update
# ----------------------------------------------------------------------------------------------------------


def _scaled(delta: Tensor, translation_scale) -> Tensor:
    s = torch.as_tensor(translation_scale, dtype=delta.dtype, device=delta.device)
    s = s[..., None] if s.ndim else s
    return torch.cat([delta[..., :3] * s, delta[..., 3:]], dim=-1)


def _pivot(depth, like: Tensor) -> Tensor:
    """Translations by ``(0, 0, depth)`` in camera coordinates. [..., 4, 4]"""
    d = torch.as_tensor(depth, dtype=like.dtype, device=like.device)
    P = torch.eye(4, dtype=like.dtype, device=like.device).expand(d.shape + (4, 4)).clone()
    P[..., 2, 3] = d
    return P


def apply_delta(viewmat: Tensor, delta: Tensor, translation_scale=1.0, pivot_depth=0.0) -> Tensor:
    """Move cameras by δ in their own frame: ``P @ se3_exp((s·ρ, φ)) @ P⁻¹ @ viewmat``.

    ``P`` translates by ``(0, 0, pivot_depth)`` along the optical axis, so φ turns the camera about the
    point it looks at ``pivot_depth`` ahead (0: about its own centre, the plain ``se3_exp(δ) @ viewmat``).

    Args:
        viewmat: World→camera matrices. [..., 4, 4]
        delta: Update vectors ``(ρ, φ)``: translation in units of ``s`` along the camera axes, then a
            rotation vector in radians. [..., 6]
        translation_scale: ``s``, world units per unit of ρ; a float or one per camera. [] or [...]
        pivot_depth: Distance of the rotation centre along the optical axis; one or per camera. [] or [...]

    Returns:
        The moved world→camera matrices. [..., 4, 4]
    """
    T = se3_exp(_scaled(delta, translation_scale))
    P = _pivot(pivot_depth, T)
    return P @ T @ torch.linalg.inv(P) @ viewmat


def delta_between(viewmat0: Tensor, viewmat1: Tensor, translation_scale=1.0, pivot_depth=0.0) -> Tensor:
    """The δ with ``apply_delta(viewmat0, δ, s, pivot_depth) == viewmat1`` (its inverse). [..., 6]"""
    P = _pivot(pivot_depth, viewmat0.double())
    xi = se3_log(torch.linalg.inv(P) @ viewmat1.double() @ torch.linalg.inv(viewmat0.double()) @ P)
    s = torch.as_tensor(translation_scale, dtype=xi.dtype, device=xi.device)
    return _scaled(xi, 1.0 / s).to(viewmat0.dtype)


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One coarse hypothesis: a training view and how well its brief refinement went.

    Args:
        index: Index of the training view in the retriever.
        similarity: Retrieval similarity (cosine, or SIFT match count).
        viewmat_start: The training view's camera. [4, 4]
        viewmat: The camera after the brief refinement. [4, 4]
        loss: The lowest loss of the brief refinement (inf if it was skipped).
    """

    index: int
    similarity: float
    viewmat_start: Tensor
    viewmat: Tensor
    loss: float


@dataclass
class PoseResult:
    """The estimated pose and everything the estimate went through.

    Args:
        viewmat: Final world→camera matrix (lowest loss at full size). [4, 4]
        viewmat_init: Start of the full refinement (the winning candidate after its brief refinement). [4, 4]
        K: Intrinsics of the query at full size. [3, 3]
        width: Query width in pixels.
        height: Query height in pixels.
        candidates: The coarse hypotheses, in retrieval order.
        chosen: Index into ``candidates`` of the winner.
        losses: Loss at every full-refinement step, a second pass's (``restart_moved_deg``) appended. [S]
        viewmats: Camera at every full-refinement step (the one ``losses`` was evaluated at). [S, 4, 4]
        scales: Image-size factor of every step (pyramid). [S]
        short_losses: Loss of every candidate at every brief-refinement step. [S_short, k]
        renders: ``{step: render}`` every ``record_every`` steps, at that step's size. {int: [h, w, 3]}
        timings: Seconds per stage: "coarse", "hypotheses" (refine route) or "pnp" (PnP routes), "refine",
            "total".
        loss: The final (lowest full-size) loss.
        stopped_early: Whether the plateau rule ended the refinement.
        restarted_at: Index into ``losses`` of the second pass's first step; None when there was none.
        translation_scale: ``s`` used for δ's translation part.
        pivot_depth: Depth of the rotation centre used (0: the camera centre).
        route: The route taken (:data:`ROUTES`).
        pnp: The PnP route's hypotheses (matches, inliers, reprojection errors) and winner; None otherwise.
        fallback_reason: Why the PnP route fell back to the retrieval pose; None when it did not.
    """

    viewmat: Tensor
    viewmat_init: Tensor
    K: Tensor
    width: int
    height: int
    candidates: list[Candidate]
    chosen: int
    losses: Tensor
    viewmats: Tensor
    scales: Tensor
    short_losses: Tensor
    renders: dict[int, Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    loss: float = float("nan")
    stopped_early: bool = False
    restarted_at: int | None = None
    translation_scale: float = 1.0
    pivot_depth: float = 0.0
    route: str = "refine"
    pnp: PnPResult | None = None
    fallback_reason: str | None = None


# ----------------------------------------------------------------------------------------------------------
# The optimisation loop (batched over candidates)
# ----------------------------------------------------------------------------------------------------------


def _prepared(splats, device) -> tuple[dict[str, Tensor], int]:
    """Activated splats on ``device``, checked once here so that the refinement's renders need not be."""
    p = {k: v.detach().to(device) for k, v in activated(splats).items()}
    for name, t in p.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"splats: {name} contains NaN or Inf values")
    p["quats"] = F.normalize(p["quats"], dim=-1)
    return p, sh_degree_of(splats)


def _resize_query(query: Tensor, h: int, w: int) -> Tensor:
    if (h, w) == tuple(query.shape[:2]):
        return query
    return F.interpolate(query.permute(2, 0, 1)[None], size=(h, w), mode="area")[0].permute(1, 2, 0)


def _optimise(
    params,
    sh_degree,
    query,
    viewmats0,
    K,
    width,
    height,
    cfg: PoseConfig,
    schedule,
    frame,
    record_every=0,
    keep_best_after=0,
):
    """Adam on δ [B, 6] for every (scale, steps) of ``schedule``; returns the history as a dict.

    With ``keep_best_after`` > 0, after that many steps at the final scale only the row with the lowest loss
    so far is rendered; the others keep their best pose and record NaN losses from then on.
    """
    B, device = viewmats0.shape[0], viewmats0.device
    delta = torch.zeros(B, 6, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    background = torch.tensor(cfg.background, device=device)
    losses, vms, scales, renders = [], [], [], {}
    best = torch.full((B,), float("inf"))
    best_vm = viewmats0.detach().clone()
    vm_all = viewmats0.detach().clone()
    active = torch.arange(B)
    stall, step, stopped = 0, 0, False
    final_scale = schedule[-1][0]
    moves: list[Tensor] = []  # δ after each full-size step, for the convergence stop
    for scale, n in schedule:
        w, h = max(11, round(width * scale)), max(11, round(height * scale))
        Ks = (K * K.new_tensor([[w / width], [h / height], [1.0]])).expand(B, 3, 3)
        target = _resize_query(query, h, w)
        best.fill_(float("inf"))  # losses at different sizes do not compare: the last level decides
        last_img = torch.ones(B, h, w, 3)
        for i in range(n):
            if scale == final_scale and keep_best_after and i == keep_best_after and len(active) > 1:
                active = active[torch.argmin(best[active])][None]
            for g in opt.param_groups:  # StepLR's schedule: lr · decay^(step // every)
                g["lr"] = cfg.lr * cfg.lr_decay ** (step // cfg.lr_decay_every)
            if not bool(torch.isfinite(delta).all()):
                raise PoseDivergedError(
                    f"pose refinement diverged: the pose update became non-finite at step {step}", step
                )
            rows = active.to(device)
            whole = len(active) == B
            vm = apply_delta(
                viewmats0 if whole else viewmats0[rows],
                delta if whole else delta[rows],
                *(frame if whole else (f[rows] for f in frame)),
            )
            colors, degree = params["colors"], sh_degree
            if sh_degree and not cfg.colour_grad:  # evaluated at this camera, without their derivative
                with torch.no_grad():
                    campos = torch.linalg.inv(vm)[:, :3, 3]
                    if device.type == "cpu":
                        from splatlab.render.cpu_sh import eval_sh_cpu as sh
                    else:
                        sh = eval_sh
                    colors = sh(sh_degree, params["means"][None] - campos[:, None], colors)
                degree = None
            img, alpha, _ = render(
                params["means"],
                params["quats"],
                params["scales"],
                params["opacities"],
                colors,
                vm,
                Ks[: len(active)],
                w,
                h,
                sh_degree=degree,
                background=background,
                backend=cfg.backend,
                eps2d=cfg.eps2d * (w / width) ** 2,
                check=False,  # the splats were checked once (_prepared), the pose just above
            )
            if cfg.appearance != "none":
                img = align_render(img, alpha, target.expand_as(img), cfg.appearance, background)
            loss = torch.stack([photometric_loss(im, target, cfg.ssim_weight) for im in img])
            if not bool(torch.isfinite(loss).all()):
                raise PoseDivergedError(
                    f"pose refinement diverged: non-finite loss {loss.tolist()} at step {step}", step
                )
            cur = torch.full((B,), float("nan"))
            cur[active] = loss.detach().cpu()
            vm_all[rows] = vm.detach()
            losses.append(cur)
            vms.append(vm_all.clone())
            scales.append(scale)
            last_img[active] = img.detach().cpu()
            if record_every and (step % record_every == 0):
                renders[step] = last_img.clone()  # every hypothesis [B, H, W, 3]
            improved = cur[active] < best[active] * (1.0 - cfg.early_stop_tol)
            better = torch.zeros(B, dtype=torch.bool)
            better[active] = cur[active] < best[active]
            best = torch.where(better, cur, best)
            best_vm[better.to(device)] = vm_all[better.to(device)]
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            step += 1
            if scale == final_scale and cfg.converge_window and _converged(delta, rows, moves, cfg, i):
                stopped = True
                break
            if scale == final_scale and cfg.early_stop_patience:
                stall = 0 if bool(improved.any()) else stall + 1
                if stall >= cfg.early_stop_patience:
                    stopped = True
                    break
    if record_every and losses and (step - 1) not in renders:
        renders[step - 1] = last_img.clone()
    return {
        "losses": torch.stack(losses),
        "viewmats": torch.stack(vms),
        "scales": torch.tensor(scales),
        "renders": renders,
        "best": best,
        "best_viewmats": best_vm,
        "stopped": stopped,
    }


def _converged(delta: Tensor, rows: Tensor, moves: list[Tensor], cfg: PoseConfig, i: int) -> bool:
    """Whether the active rows of δ moved less than ``converge_tol`` over the last ``converge_window`` steps.

    ``moves`` holds δ after the previous full-size steps (appended here, the oldest dropped); ``i`` is the
    index of the step just taken at the final scale. Not before successive halving has left one finalist.
    """
    moves.append(delta.detach().clone())
    if len(moves) > cfg.converge_window + 1:
        moves.pop(0)
    if len(moves) <= cfg.converge_window or (rows.numel() > 1 and i < cfg.finalist_steps):
        return False
    return bool((moves[-1][rows] - moves[0][rows]).abs().max() < cfg.converge_tol)


def _still_moving(viewmats: Tensor, cfg: PoseConfig) -> bool:
    """Whether a camera turned by more than ``restart_moved_deg`` in its last steps. [S, 4, 4] -> bool"""
    w = cfg.restart_window
    if not cfg.restart_moved_deg or len(viewmats) <= w:
        return False
    turn = rotation_angle_deg(viewmats[-1, :3, :3] @ viewmats[-1 - w, :3, :3].transpose(0, 1))
    return bool(turn > cfg.restart_moved_deg)


def _restarted(hist, b, params, degree, q, K, cams, cfg: PoseConfig, frame) -> dict:
    """Row ``b`` of ``hist`` refined once more from its best pose at full size, the histories joined."""
    full_size_steps = max(cfg.steps - sum(cfg.pyramid_steps), 1)  # as in _schedule
    more = _optimise(params, degree, q, hist["best_viewmats"][b : b + 1], K, cams.width, cams.height,
                     cfg, [(1.0, full_size_steps)], frame, cfg.record_every)
    row = slice(b, b + 1)
    offset = len(hist["losses"])
    won, i = (more, 0) if bool(more["best"][0] < hist["best"][b]) else (hist, b)  # the lower loss stays
    return {
        "losses": torch.cat([hist["losses"][:, row], more["losses"]]),
        "viewmats": torch.cat([hist["viewmats"][:, row], more["viewmats"].to(hist["viewmats"])]),
        "scales": torch.cat([hist["scales"], more["scales"]]),
        "renders": {k: r[row] for k, r in hist["renders"].items()}
        | {offset + k: r for k, r in more["renders"].items()},
        "best": won["best"][i : i + 1],
        "best_viewmats": won["best_viewmats"][i : i + 1],
        "stopped": hist["stopped"],
        "restarted_at": offset,
    }


def _frame(params, viewmats: Tensor, cfg: PoseConfig) -> tuple[Tensor, Tensor]:
    """Translation scale ``s`` [B] and pivot depth [B] of δ for each starting camera."""
    means = params["means"]
    centre = means.median(dim=0).values
    depth = (viewmats[:, :3, :3] @ centre + viewmats[:, :3, 3])[:, 2].clamp_min(1e-3)
    if cfg.pivot == "object":
        pivot = depth
        radius = torch.quantile((means - centre).norm(dim=-1)[:100_000].float(), 0.9).clamp_min(1e-3)
        auto = radius.expand_as(depth)
    else:
        pivot = torch.zeros_like(depth)
        auto = (torch.linalg.inv(viewmats)[:, :3, 3] - centre).norm(dim=-1).clamp_min(1e-3)
    s = auto if cfg.translation_scale is None else torch.full_like(depth, float(cfg.translation_scale))
    return s, pivot


def _schedule(cfg: PoseConfig) -> list[tuple[float, int]]:
    levels = [(s, n) for s, n in zip(cfg.pyramid_scales, cfg.pyramid_steps, strict=True) if n > 0]
    return (
        levels + [(1.0, cfg.steps - sum(n for _, n in levels))]
        if cfg.steps > sum(cfg.pyramid_steps)
        else levels
    )


def refine(
    query: Tensor, splats, viewmat0: Tensor, K: Tensor, config: PoseConfig = PoseConfig(), device=None
) -> PoseResult:
    """Refine one starting pose by gradient descent (step 3 only: no retrieval, no hypotheses).

    Args:
        query: RGB image on white in [0, 1]. [H, W, 3]
        splats: The object's splats (``ParameterDict`` layout of :mod:`splatlab.splats`).
        viewmat0: Starting world→camera matrix. [4, 4]
        K: Intrinsics of the query in pixels. [3, 3]
        config: Steps, learning rate, pyramid, early stop, recording.
        device: Where to run; None means the device of the splats.
    """
    pixels = query.shape[0] * query.shape[1] if getattr(query, "ndim", 0) >= 2 else 0
    with threads_for(pixels, config.num_threads):
        return _refine(query, splats, viewmat0, K, config, device)


def _refine(query, splats, viewmat0, K, config, device) -> PoseResult:
    device = splats["means"].device if device is None else torch.device(device)
    if viewmat0.shape != (4, 4) or K.shape != (3, 3):
        raise ValueError(
            f"viewmat0 must be [4, 4] and K [3, 3], got {tuple(viewmat0.shape)}, {tuple(K.shape)}"
        )
    query = check_query(query)
    params, degree = _prepared(splats, device)
    vm0 = viewmat0.to(device, torch.float32)[None]
    frame = _frame(params, vm0, config)
    t0 = time.perf_counter()
    hist = _optimise(
        params,
        degree,
        query.to(device),
        vm0,
        K.to(device, torch.float32),
        query.shape[1],
        query.shape[0],
        config,
        _schedule(config),
        frame,
        config.record_every,
    )
    cand = Candidate(-1, float("nan"), vm0[0].cpu(), vm0[0].cpu(), float("inf"))
    return _result(
        hist,
        vm0[0],
        K,
        query,
        [cand],
        0,
        torch.zeros(0, 1),
        frame,
        0,
        {"coarse": 0.0, "hypotheses": 0.0, "refine": time.perf_counter() - t0},
    )


def _result(
    hist, viewmat_init, K, query, candidates, chosen, short_losses, frame, j, timings, b=0
) -> PoseResult:
    """The PoseResult of row ``b`` of a (batched) refinement history; ``j`` indexes ``frame``."""
    timings = dict(timings, total=sum(timings.values()))
    return PoseResult(
        viewmat=hist["best_viewmats"][b].cpu(),
        viewmat_init=viewmat_init.detach().cpu(),
        K=K.detach().cpu(),
        width=query.shape[1],
        height=query.shape[0],
        candidates=candidates,
        chosen=chosen,
        losses=hist["losses"][:, b],
        viewmats=hist["viewmats"][:, b].cpu(),
        scales=hist["scales"],
        short_losses=short_losses,
        renders={step: r[b] for step, r in hist["renders"].items()},
        timings=timings,
        loss=float(hist["best"][b]),
        stopped_early=hist["stopped"],
        restarted_at=hist.get("restarted_at"),
        translation_scale=float(frame[0][j]),
        pivot_depth=float(frame[1][j]),
    )


def estimate_pose(
    query: Tensor,
    splats,
    retriever: Retriever,
    config: PoseConfig = PoseConfig(),
    device=None,
    exclude: list[int] | None = None,
) -> PoseResult:
    """The pose of a query image: coarse retrieval, brief refinement of k hypotheses, full refinement.

    Args:
        query: RGB image on white in [0, 1], the size of the training views. [H, W, 3]
        splats: The object's splats (``ParameterDict`` layout of :mod:`splatlab.splats`).
        retriever: Training views and their descriptors; its cameras give the candidate poses and K.
        config: See :class:`PoseConfig`.
        device: Where to render; None means the device of the splats.
        exclude: Training views not to retrieve (a held-out query's own view). [E]

    Raises:
        ValueError: The query is not RGB [H, W, 3] of the training views' size, or holds NaN.
        PoseDivergedError: The loss or pose became non-finite; the message names the step.
    """
    with threads_for(retriever.cameras.height * retriever.cameras.width, config.num_threads):
        return _estimate(query, splats, retriever, config, device, exclude)


def _estimate(query, splats, retriever, config, device, exclude) -> PoseResult:
    cams = retriever.cameras
    query = check_query(query, cams.height, cams.width)
    device = splats["means"].device if device is None else torch.device(device)
    t0 = time.perf_counter()
    idx, sim = retriever.top_k(query, config.k if config.route == "refine" else config.pnp.k, exclude=exclude)
    t1 = time.perf_counter()
    params, degree = _prepared(splats, device)
    q = query.to(device)
    K = cams.Ks[idx[0]].to(device, torch.float32)
    if config.route != "refine":
        return _estimate_pnp(q, params, degree, retriever, idx, sim, K, config, t1 - t0)
    starts = cams.viewmats[idx].to(device, torch.float32)
    frame = _frame(params, starts, config)
    short = torch.zeros(0, len(idx))
    after = starts
    best_short = torch.full((len(idx),), float("inf"))
    if len(idx) > 1 and config.short_steps > 0:
        short_cfg = dataclasses.replace(config, early_stop_patience=0, converge_window=0)
        h = _optimise(
            params,
            degree,
            q,
            starts,
            K,
            cams.width,
            cams.height,
            short_cfg,
            [(config.short_scale, config.short_steps)],
            frame,
        )
        short, best_short, after = h["losses"], h["best"], h["best_viewmats"]
    # the `finalists` best hypotheses are refined fully, together (one batched render per step)
    finalists = torch.argsort(best_short, stable=True)[: max(1, min(config.finalists, len(idx)))]
    t2 = time.perf_counter()
    hist = _optimise(
        params,
        degree,
        q,
        after[finalists],
        K,
        cams.width,
        cams.height,
        config,
        _schedule(config),
        tuple(f[finalists] for f in frame),
        config.record_every,
        config.finalist_steps,
    )
    b = int(torch.argmin(hist["best"]))  # the lowest final loss wins
    chosen = int(finalists[b])
    if _still_moving(hist["viewmats"][:, b], config):
        one = tuple(f[chosen : chosen + 1] for f in frame)
        hist = _restarted(hist, b, params, degree, q, K, cams, config, one)
        b = 0  # the joined history holds the winner alone
    t3 = time.perf_counter()
    candidates = [
        Candidate(int(i), float(v), starts[j].cpu(), after[j].detach().cpu(), float(best_short[j]))
        for j, (i, v) in enumerate(zip(idx.tolist(), sim.tolist(), strict=True))
    ]
    return _result(
        hist,
        after[chosen],
        K,
        query,
        candidates,
        chosen,
        short,
        frame,
        chosen,
        {"coarse": t1 - t0, "hypotheses": t2 - t1, "refine": t3 - t2},
        b,
    )


def _estimate_pnp(
    q, params, degree, retriever, idx, sim, K, config: PoseConfig, coarse_s: float
) -> PoseResult:
    """Routes "pnp" and "pnp+refine": PnP hypotheses from the retrieved views, then optionally refinement."""
    cams = retriever.cameras
    background = torch.tensor(config.background, device=q.device)
    t1 = time.perf_counter()
    pnp = solve_pnp(
        q,
        params,
        degree,
        cams,
        idx,
        config.pnp,
        images=retriever.images,
        background=background,
        eps2d=config.eps2d,
        backend=config.backend,
        ssim_weight=config.ssim_weight,
    )
    hyps = pnp.hypotheses
    # starts: the winner, then the other good hypotheses by inliers; on fallback the retrieved views
    good = sorted(
        (j for j, h in enumerate(hyps) if h.ok and j != pnp.chosen), key=lambda j: -hyps[j].n_inliers
    )
    order = ([pnp.chosen] + good) if pnp.chosen >= 0 else list(range(len(idx)))
    order = order[: 1 if config.route == "pnp" else max(1, config.finalists)]
    starts = torch.stack([hyps[j].viewmat if pnp.chosen >= 0 else cams.viewmats[idx[j]] for j in order])
    starts = starts.to(q.device, torch.float32)
    frame = _frame(params, starts, config)
    t2 = time.perf_counter()
    if config.route == "pnp":  # no refinement: the history is the answer's loss alone
        h = hyps[order[0]] if pnp.chosen >= 0 else None
        if h is not None and math.isfinite(h.loss):
            loss = h.loss
        else:
            args = (K, cams, background, config.eps2d, config.backend, config.ssim_weight)
            loss = pnp_losses(q, params, degree, [starts[0]], *args)[0]
        best = torch.tensor([loss])
        hist = {
            "losses": best[None],
            "viewmats": starts[None].detach(),
            "scales": torch.ones(1),
            "renders": {},
        }
        hist |= {"best": best, "best_viewmats": starts.detach(), "stopped": False}
    else:
        hist = _optimise(
            params,
            degree,
            q,
            starts,
            K,
            cams.width,
            cams.height,
            config,
            _schedule(config),
            frame,
            config.record_every,
        )
    b = int(torch.argmin(hist["best"]))
    chosen = order[b]
    t3 = time.perf_counter()
    views = [(int(i), float(v), cams.viewmats[i]) for i, v in zip(idx.tolist(), sim.tolist(), strict=True)]
    views += [(-1, float("nan"), cams.viewmats[idx[0]])] * (len(hyps) - len(views))  # the pooled one
    candidates = [
        Candidate(i, v, vm.float().cpu(), h.viewmat.float().cpu(), h.loss)
        for (i, v, vm), h in zip(views, hyps, strict=True)
    ]
    timings = {"coarse": coarse_s, "pnp": t2 - t1}
    if config.route == "pnp":
        timings["pnp"] += t3 - t2  # the loss at the PnP pose is part of the answer, not a refinement
    else:
        timings["refine"] = t3 - t2
    res = _result(hist, starts[b], K, q, candidates, chosen, torch.zeros(0, len(idx)), frame, b, timings, b)
    res.route, res.pnp, res.fallback_reason = config.route, pnp, pnp.fallback_reason
    return res
