"""Pose by 2D–3D matches and PnP: SplatPose+'s route, with SIFT as the offline matcher.

SplatPose+ (Liu et al., 2024) does no test-time optimisation: it retrieves similar training views, matches
local features of the query to them, lifts the views' matched keypoints to 3D and solves
Perspective-n-Point with RANSAC. Its learned matcher (SuperPoint + LightGlue) needs weights from a hub, so
splatlab's default :class:`SiftMatcher` (OpenCV SIFT, Lowe's ratio test, mutual nearest neighbours) is the
offline stand-in; any object with the two methods of :class:`Matcher` slots in instead.

One hypothesis per retrieved view:

1. **Render** the view at its known pose with expected depth (``render_mode="RGB+ED"``): the depth is an
   opacity-weighted mean of the Gaussians' camera z along each pixel.
2. **Match** the query against the view's image (the training photo by default, or the render).
3. **Lift** each matched view keypoint to 3D: ``X = R^T (z K^-1 [u, v, 1]^T - t)``. Silhouette pixels mix
   object and background, and the Gaussians along a grazing ray lie at many depths; keypoints whose box of
   half-side ``mask_radius`` holds a pixel with alpha below ``min_alpha`` are not lifted.
4. **Solve** ``cv2.solvePnPRansac`` with the known intrinsics, then Levenberg–Marquardt on the inliers.
   A hypothesis is rejected, with its reason, for too few matches or inliers, a non-finite solution, an
   object behind the camera, or a pose implausibly far from the view it came from.

With ``pool``, one more hypothesis solves every view's lifted matches together. The winner is the
hypothesis with the most inliers, or the lowest photometric loss of a render at each (``select``). When
none survives, the caller falls back to the retrieval pose and records
:attr:`PnPResult.fallback_reason`.

Pixel convention: splatlab's intrinsics put pixel ``(i, j)``'s centre at ``(i + 0.5, j + 0.5)``; OpenCV's
keypoints put it at ``(i, j)``. :class:`SiftMatcher` returns splatlab coordinates.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from splatlab.losses import photometric_loss
from splatlab.render import render

log = logging.getLogger(__name__)

__all__ = [
    "Features",
    "Matcher",
    "PnPConfig",
    "PnPHypothesis",
    "PnPResult",
    "SiftMatcher",
    "lift",
    "pnp_losses",
    "solve_hypothesis",
    "solve_pnp",
]


@dataclass(frozen=True)
class PnPConfig:
    """Settings of the PnP route (chosen on a development split, docs/pnp.md)."""

    k: int = 3  # retrieved training views matched against the query, one hypothesis each
    ratio: float = 0.9  # Lowe's ratio test of the SIFT matcher
    contrast_threshold: float = 0.01  # SIFT's contrast threshold (OpenCV: 0.04); lower finds more keypoints
    view_image: str = "train"  # image of each view that is matched: "train" (its photo) or "render"
    min_alpha: float = 0.95  # keypoints with a pixel of lower rendered alpha in their box are not lifted
    mask_radius: int = 0  # half-side of that box in pixels (0: the keypoint's own pixel; 1: its 3×3 box)
    ransac_px: float = 2.0  # RANSAC inlier threshold on the reprojection error, pixels at the image's size
    iterations: int = 2000  # RANSAC iterations
    confidence: float = 0.999  # RANSAC confidence
    seed: int = 0  # seed of RANSAC's samples (set on OpenCV's generator before each solve)
    min_matches: int = 6  # a view with fewer lifted matches gives no hypothesis
    min_inliers: int = 6  # a solution with fewer RANSAC inliers is rejected
    pool: bool = True  # also solve one hypothesis from every view's lifted matches together (view -1)
    max_jump_deg: float = 45.0  # a solution rotated more than this from its own view is degenerate
    select: str = "photometric"  # winner: "inliers" (most) or "photometric" (lowest loss of a render at each)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"PnPConfig.k must be >= 1, got {self.k}")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"PnPConfig.ratio must be in (0, 1], got {self.ratio}")
        if self.view_image not in ("train", "render"):
            raise ValueError(f"PnPConfig.view_image must be 'train' or 'render', got {self.view_image!r}")
        if self.select not in ("inliers", "photometric"):
            raise ValueError(f"PnPConfig.select must be 'inliers' or 'photometric', got {self.select!r}")
        if not 0 <= self.min_alpha <= 1:
            raise ValueError(f"PnPConfig.min_alpha must be in [0, 1], got {self.min_alpha}")
        if not self.ransac_px > 0 or self.iterations < 1 or not 0 < self.confidence < 1:
            raise ValueError("PnPConfig: need ransac_px > 0, iterations >= 1 and 0 < confidence < 1")
        if self.mask_radius < 0:
            raise ValueError(f"PnPConfig.mask_radius must be >= 0, got {self.mask_radius}")
        if self.min_matches < 4 or self.min_inliers < 4:
            raise ValueError("PnPConfig: PnP needs min_matches >= 4 and min_inliers >= 4")


# ----------------------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Local features of one image.

    Args:
        xy: Keypoint positions in splatlab pixel coordinates (pixel centres at +0.5). [n, 2]
        descriptors: One descriptor per keypoint. [n, D]
    """

    xy: np.ndarray
    descriptors: np.ndarray


class Matcher(Protocol):
    """What the PnP route needs of a local-feature matcher."""

    def describe(self, image: Tensor) -> Features:
        """Keypoints and descriptors of an RGB image in [0, 1]. [H, W, 3] -> Features"""
        ...

    def match(self, a: Features, b: Features) -> np.ndarray:
        """Index pairs ``(i in a, j in b)`` of accepted matches. [M, 2] int"""
        ...


@dataclass(frozen=True)
class SiftMatcher:
    """OpenCV SIFT (precise first-octave upscale), Lowe's ratio test and mutual nearest neighbours."""

    ratio: float = 0.8  # Lowe's ratio-test threshold
    contrast_threshold: float = 0.04  # SIFT's contrastThreshold (OpenCV's default 0.04)

    def describe(self, image: Tensor) -> Features:
        import cv2

        from splatlab.retrieval import _to_gray_u8

        # OpenCV's SIFT doubles the image for its first octave; without the precise upscale its keypoints sit
        # a quarter pixel off (+0.24 px in x and y on a blob, tests/test_pnp.py)
        sift = cv2.SIFT_create(contrastThreshold=self.contrast_threshold, enable_precise_upscale=True)
        kps, desc = sift.detectAndCompute(_to_gray_u8(image), None)
        if desc is None or not kps:
            return Features(np.zeros((0, 2)), np.zeros((0, 128), np.float32))
        xy = np.array([kp.pt for kp in kps], dtype=np.float64) + 0.5  # OpenCV -> splatlab pixel centres
        return Features(xy, desc.astype(np.float32))

    def match(self, a: Features, b: Features) -> np.ndarray:
        import cv2

        if len(a.descriptors) < 2 or len(b.descriptors) < 2:
            return np.zeros((0, 2), np.int64)
        bf = cv2.BFMatcher(cv2.NORM_L2)
        back = {m.queryIdx: m.trainIdx for m in bf.match(b.descriptors, a.descriptors)}
        pairs = [
            (p[0].queryIdx, p[0].trainIdx)
            for p in bf.knnMatch(a.descriptors, b.descriptors, k=2)
            if len(p) == 2
            and p[0].distance < self.ratio * p[1].distance
            and back.get(p[0].trainIdx) == p[0].queryIdx
        ]
        return np.array(pairs, dtype=np.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------------------------------------
# Lifting and solving
# ----------------------------------------------------------------------------------------------------------


def _eroded(alpha: np.ndarray, r: int) -> np.ndarray:
    """The minimum of ``alpha`` over each pixel's (2r+1)² box (outside the image counts as 0). [H, W]"""
    p = np.pad(alpha, r, constant_values=0.0)
    H, W = alpha.shape
    n = 2 * r + 1
    return np.min([p[dy : dy + H, dx : dx + W] for dy in range(n) for dx in range(n)], axis=0)


def lift(
    xy: np.ndarray,
    depth: np.ndarray,
    alpha: np.ndarray,
    viewmat: Tensor,
    K: Tensor,
    min_alpha: float,
    mask_radius: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """World points under pixel positions of one view, from its rendered expected depth.

    Args:
        xy: Positions in splatlab pixel coordinates (centres at +0.5). [M, 2]
        depth: Expected camera-z depth of the view. [H, W]
        alpha: Rendered opacity of the view. [H, W]
        viewmat: The view's world→camera matrix. [4, 4]
        K: The view's intrinsics. [3, 3]
        min_alpha: Positions whose pixel's box has a lower alpha are not lifted.
        mask_radius: Half-side of that box in pixels (0: the pixel itself).

    Returns:
        ``(points [M, 3] float64, valid [M] bool)``; rows of invalid positions are NaN.
    """
    H, W = depth.shape
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    col = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, W - 1)
    row = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, H - 1)
    z = depth[row, col].astype(np.float64)
    valid = (_eroded(alpha, mask_radius)[row, col] >= min_alpha) & np.isfinite(z) & (z > 0)
    Kd = K.detach().cpu().double().numpy()
    vm = viewmat.detach().cpu().double().numpy()
    cam = np.stack([(xy[:, 0] - Kd[0, 2]) / Kd[0, 0], (xy[:, 1] - Kd[1, 2]) / Kd[1, 1], np.ones(len(xy))], -1)
    cam = cam * z[:, None]
    world = (cam - vm[:3, 3]) @ vm[:3, :3]  # R^T (x - t), row-wise
    world[~valid] = np.nan
    return world, valid


@dataclass
class PnPHypothesis:
    """One retrieved view's PnP attempt.

    Args:
        view: Index of the training view in the retriever; -1 for the pooled hypothesis of every view.
        query_xy: Matched query keypoints (splatlab pixel coordinates). [M, 2]
        view_xy: The view's matched keypoints. [M, 2]
        points: World points lifted from the view (NaN where not lifted). [M, 3]
        lifted: Which matches were lifted. [M]
        inliers: Indices into the M matches of the RANSAC inliers. [I]
        viewmat: The solved world→camera matrix, or the view's own pose when unsolved. [4, 4]
        reprojection_px: Median reprojection error of the inliers at the solved pose (inf if unsolved).
        ok: Whether the hypothesis passed every check.
        reason: Why it was rejected ("" when ok).
        loss: Photometric loss of a render at ``viewmat`` (nan unless computed).
    """

    view: int
    query_xy: np.ndarray
    view_xy: np.ndarray
    points: np.ndarray
    lifted: np.ndarray
    inliers: np.ndarray
    viewmat: Tensor
    reprojection_px: float = float("inf")
    ok: bool = False
    reason: str = ""
    loss: float = float("nan")

    @property
    def n_matches(self) -> int:
        return len(self.query_xy)

    @property
    def n_inliers(self) -> int:
        return len(self.inliers)


@dataclass
class PnPResult:
    """All hypotheses of one query and the winner.

    Args:
        hypotheses: One per retrieved view, in retrieval order, then the pooled one (``PnPConfig.pool``).
        chosen: Index into ``hypotheses`` of the winner; -1 when every one failed (fallback).
        viewmat: The winner's camera, or the retrieval pose (the best-retrieved view's) on fallback. [4, 4]
        fallback_reason: Why the route fell back to the retrieval pose (None when it did not).
        select: How the winner was chosen ("inliers" or "photometric").
    """

    hypotheses: list[PnPHypothesis]
    chosen: int
    viewmat: Tensor
    fallback_reason: str | None = None
    select: str = "inliers"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def matches(self) -> int:
        """Matches of the winner (0 on fallback)."""
        return self.hypotheses[self.chosen].n_matches if self.chosen >= 0 else 0

    @property
    def inliers(self) -> int:
        """RANSAC inliers of the winner (0 on fallback)."""
        return self.hypotheses[self.chosen].n_inliers if self.chosen >= 0 else 0

    @property
    def reprojection_px(self) -> float:
        """Median inlier reprojection error of the winner in pixels (inf on fallback)."""
        return self.hypotheses[self.chosen].reprojection_px if self.chosen >= 0 else float("inf")


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = (np.trace(a[:3, :3] @ b[:3, :3].T) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def solve_hypothesis(
    view: int,
    query_xy: np.ndarray,
    view_xy: np.ndarray,
    points: np.ndarray,
    lifted: np.ndarray,
    view_viewmat: Tensor,
    K: Tensor,
    centre: np.ndarray,
    cfg: PnPConfig,
) -> PnPHypothesis:
    """RANSAC PnP on one view's lifted matches, then LM on the inliers, then the plausibility checks.

    Args:
        view: The view's index (recorded only).
        query_xy: Matched query keypoints. [M, 2]
        view_xy: The view's matched keypoints. [M, 2]
        points: Their lifted world points. [M, 3]
        lifted: Which matches were lifted. [M]
        view_viewmat: The view's camera (the start of the plausibility check). [4, 4]
        K: The query's intrinsics. [3, 3]
        centre: The object's centre in world coordinates (must be in front of the camera). [3]
        cfg: Thresholds.
    """
    import cv2

    h = PnPHypothesis(view, query_xy, view_xy, points, lifted, np.zeros(0, np.int64), view_viewmat.cpu())
    use = np.flatnonzero(lifted)
    if len(use) < cfg.min_matches:
        h.reason = f"{len(use)} lifted matches < min_matches {cfg.min_matches} ({len(query_xy)} matched)"
        return h
    obj = np.ascontiguousarray(points[use], dtype=np.float64)
    img = np.ascontiguousarray(query_xy[use], dtype=np.float64)
    Kd = K.detach().cpu().double().numpy()
    cv2.setRNGSeed(cfg.seed)  # OpenCV's RANSAC draws from its process-wide generator: same input, same pose
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            obj,
            img,
            Kd,
            None,
            iterationsCount=cfg.iterations,
            reprojectionError=cfg.ransac_px,
            confidence=cfg.confidence,
            flags=cv2.SOLVEPNP_EPNP,
        )
    except cv2.error as exc:  # degenerate point sets can make OpenCV's solvers throw
        h.reason = f"solvePnPRansac failed: {str(exc).strip().splitlines()[-1]}"
        return h
    if not ok or inl is None or len(inl) < cfg.min_inliers:
        h.reason = f"{0 if inl is None else len(inl)} inliers < min_inliers {cfg.min_inliers}"
        h.inliers = use[inl.ravel()] if inl is not None else h.inliers
        return h
    inl = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], Kd, None, rvec, tvec)
    R = cv2.Rodrigues(rvec)[0]
    vm = np.eye(4)
    vm[:3, :3], vm[:3, 3] = R, tvec.ravel()
    proj = cv2.projectPoints(obj[inl], rvec, tvec, Kd, None)[0].reshape(-1, 2)
    h.inliers = use[inl]
    h.reprojection_px = float(np.median(np.linalg.norm(proj - img[inl], axis=-1)))
    h.viewmat = torch.from_numpy(vm).float()
    if not np.isfinite(vm).all():
        h.reason = "non-finite PnP solution"
    elif (R @ centre + tvec.ravel())[2] <= 0:
        h.reason = "the object is behind the solved camera"
    elif (jump := _rotation_deg(vm, view_viewmat.detach().cpu().double().numpy())) > cfg.max_jump_deg:
        h.reason = f"solution rotated {jump:.0f}° from its view > max_jump_deg {cfg.max_jump_deg:g}"
    else:
        h.ok = True
    return h


def _render_views(params, sh_degree, viewmats, Ks, width, height, background, eps2d, backend):
    """Colour, expected depth and alpha of views at their poses. [V, H, W, 3], [V, H, W], [V, H, W]"""
    with torch.no_grad():
        out, alpha, _ = render(
            params["means"],
            params["quats"],
            params["scales"],
            params["opacities"],
            params["colors"],
            viewmats,
            Ks,
            width,
            height,
            sh_degree=sh_degree,
            background=background,
            render_mode="RGB+ED",
            backend=backend,
            eps2d=eps2d,
        )
    return out[..., :3].clamp(0, 1), out[..., 3], alpha[..., 0]


def solve_pnp(
    query: Tensor,
    params: dict[str, Tensor],
    sh_degree: int | None,
    cameras,
    indices: Tensor,
    cfg: PnPConfig,
    *,
    images: Tensor | None = None,
    background: Tensor | None = None,
    eps2d: float = 0.3,
    backend: str = "auto",
    ssim_weight: float = 0.0,
    matcher: Matcher | None = None,
) -> PnPResult:
    """One PnP hypothesis per retrieved view, and the winner (or the retrieval pose, with the reason).

    Args:
        query: RGB image on white in [0, 1]. [H, W, 3]
        params: Activated splat parameters (``means``, ``quats``, ``scales``, ``opacities``, ``colors``).
        sh_degree: SH degree of ``colors`` (None: plain colours).
        cameras: The training views' cameras (:class:`splatlab.cameras.Cameras`). [V]
        indices: Retrieved views, best first. [k]
        cfg: See :class:`PnPConfig`.
        images: The training views' photos (needed when ``cfg.view_image == "train"``). [V, H, W, 3]
        background: Render background (white for MAD). [3]
        eps2d: The renderer's 2D low-pass in px² (the splats' own).
        backend: Renderer backend.
        ssim_weight: SSIM weight of the photometric loss of ``select="photometric"``.
        matcher: Local-feature matcher; :class:`SiftMatcher` with ``cfg``'s settings by default.
    """
    import time

    if cfg.view_image == "train" and images is None:
        raise ValueError("PnPConfig.view_image='train' needs the training views' images (Retriever.images)")
    matcher = matcher or SiftMatcher(cfg.ratio, cfg.contrast_threshold)
    device = params["means"].device
    idx = torch.as_tensor(indices, dtype=torch.long).cpu()
    vms = cameras.viewmats[idx].to(device, torch.float32)
    Ks = cameras.Ks[idx].to(device, torch.float32)
    t0 = time.perf_counter()
    rgb, depth, alpha = _render_views(
        params, sh_degree, vms, Ks, cameras.width, cameras.height, background, eps2d, backend
    )
    t1 = time.perf_counter()
    centre = params["means"].median(dim=0).values.detach().cpu().double().numpy()
    fq = matcher.describe(query)
    hyps = []
    for j, v in enumerate(idx.tolist()):
        view_img = images[v] if cfg.view_image == "train" else rgb[j]
        fv = matcher.describe(view_img)
        pairs = matcher.match(fq, fv)
        qxy, vxy = fq.xy[pairs[:, 0]], fv.xy[pairs[:, 1]]
        pts, ok = lift(
            vxy, depth[j].cpu().numpy(), alpha[j].cpu().numpy(), vms[j], Ks[j], cfg.min_alpha, cfg.mask_radius
        )
        hyps.append(solve_hypothesis(v, qxy, vxy, pts, ok, vms[j], Ks[j], centre, cfg))
    if cfg.pool and len(hyps) > 1:  # every view's matches in one PnP; checked against the best view's pose
        cat = [
            np.concatenate([getattr(h, a) for h in hyps]) for a in ("query_xy", "view_xy", "points", "lifted")
        ]
        hyps.append(solve_hypothesis(-1, *cat, vms[0], Ks[0], centre, cfg))
    t2 = time.perf_counter()
    good = [j for j, h in enumerate(hyps) if h.ok]
    if good and cfg.select == "photometric":
        losses = pnp_losses(
            query,
            params,
            sh_degree,
            [hyps[j].viewmat for j in good],
            Ks[0],
            cameras,
            background,
            eps2d,
            backend,
            ssim_weight,
        )
        for j, loss in zip(good, losses, strict=True):
            hyps[j].loss = loss
        chosen = good[int(np.argmin(losses))]
    elif good:
        chosen = max(good, key=lambda j: (hyps[j].n_inliers, -hyps[j].reprojection_px))
    else:
        chosen = -1
    timings = {"render": t1 - t0, "match_solve": t2 - t1, "select": time.perf_counter() - t2}
    if chosen < 0:
        reason = "no PnP hypothesis passed: " + "; ".join(f"view {h.view}: {h.reason}" for h in hyps)
        log.warning("PnP fell back to the retrieval pose (%s)", reason)
        return PnPResult(hyps, -1, cameras.viewmats[idx[0]].float().cpu(), reason, cfg.select, timings)
    return PnPResult(hyps, chosen, hyps[chosen].viewmat, None, cfg.select, timings)


def pnp_losses(query, params, sh_degree, viewmats, K, cameras, background, eps2d, backend, ssim_weight):
    """Photometric loss of a render at each camera against the query (no gradients). [B] floats

    Args:
        viewmats: The cameras. [B][4, 4]
        K: Their intrinsics. [3, 3]
    """
    vm = torch.stack(viewmats).to(params["means"].device, torch.float32)
    with torch.no_grad():
        img, _, _ = render(
            params["means"],
            params["quats"],
            params["scales"],
            params["opacities"],
            params["colors"],
            vm,
            K.expand(len(vm), 3, 3),
            cameras.width,
            cameras.height,
            sh_degree=sh_degree,
            background=background,
            backend=backend,
            eps2d=eps2d,
        )
        target = query.to(img.device)
        return [float(photometric_loss(img[b], target, ssim_weight)) for b in range(len(vm))]
