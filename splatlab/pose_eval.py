"""Evaluation of pose estimation: errors against known poses, pose AUC, and the basin of convergence.

Ground truth comes from held-out training views or from generated test images
(:func:`splatlab.data.load_test_poses`); it is read only here, never by the estimation itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from splatlab.cameras import perturb_viewmat, pose_error
from splatlab.pose import PoseConfig, PoseDivergedError, estimate_pose, refine
from splatlab.retrieval import Retriever

__all__ = ["BasinResult", "PoseEvaluation", "basin", "evaluate_poses"]

log = logging.getLogger(__name__)


@dataclass
class PoseEvaluation:
    """Pose errors over a set of queries (inf for a diverged query).

    Args:
        rot_deg: Rotation errors in degrees. [Q]
        trans: Distances between estimated and true camera centres, world units. [Q]
        seconds: Wall time per query, coarse to final. [Q]
        auc: Pose AUC in [0, 1] at 5, 10 and 20 degrees.
        names: A label per query (e.g. its image path). [Q]
        results: The full results (None for diverged queries) when kept. [Q]
    """

    rot_deg: Tensor
    trans: Tensor
    seconds: Tensor
    auc: dict
    names: list[str]
    results: list | None = None

    def summary(self) -> dict:
        """AUCs in percent, medians and mean seconds per query, as plain floats."""
        return {
            "auc5": 100.0 * self.auc[5],
            "auc10": 100.0 * self.auc[10],
            "auc20": 100.0 * self.auc[20],
            "median_rot_deg": float(self.rot_deg.median()),
            "median_trans": float(self.trans.median()),
            "seconds_per_query": float(self.seconds.mean()),
            "n": len(self.rot_deg),
            "diverged": int((~torch.isfinite(self.rot_deg)).sum()),
        }


def evaluate_poses(
    splats,
    retriever: Retriever,
    queries: Tensor,
    gt_viewmats: Tensor,
    config: PoseConfig = PoseConfig(),
    device=None,
    exclude: list[list[int]] | None = None,
    names: list[str] | None = None,
    keep_results: bool = False,
    from_truth: bool = False,
) -> PoseEvaluation:
    """Estimate the pose of every query and compare it with the ground truth.

    Ground truth comes from held-out training views (``retriever.cameras`` with ``exclude=[[i], ...]``) or
    from generated test images (:func:`splatlab.data.load_test_poses`), read only here.

    With ``from_truth`` the search is skipped and each query's refinement starts at its true pose: where it
    ends is the minimum of the pose loss under these splats, so its error is the model's bias, which no
    search or step count removes (a diagnostic; the true pose is never an input otherwise).

    Args:
        splats: The object's splats.
        retriever: Training views and descriptors.
        queries: RGB images on white in [0, 1]. [Q, H, W, 3]
        gt_viewmats: Their true world→camera matrices. [Q, 4, 4]
        config: See :class:`PoseConfig`.
        device: Where to render; None means the device of the splats.
        exclude: Per query, training views not to retrieve. [Q][E]
        names: A label per query. [Q]
        keep_results: Keep every :class:`PoseResult` (with its history).
        from_truth: Refine from the true pose (``config``'s schedule) instead of estimating it.
    """
    from tqdm.auto import tqdm

    from splatlab.metrics import pose_auc

    if len(queries) != len(gt_viewmats) or len(queries) == 0:
        raise ValueError(
            f"queries [{len(queries)}] and gt_viewmats [{len(gt_viewmats)}] must be non-empty and match"
        )
    rot, trans, secs, results = [], [], [], []
    for i in tqdm(range(len(queries)), desc="poses", leave=False):
        t0 = time.perf_counter()
        try:
            if from_truth:
                res = refine(queries[i], splats, gt_viewmats[i].float(), retriever.cameras.Ks[0].float(),
                             config, device)
            else:
                res = estimate_pose(
                    queries[i], splats, retriever, config, device, None if exclude is None else exclude[i]
                )
        except PoseDivergedError as exc:
            log.warning("query %d diverged: %s", i, exc)
            rot.append(float("inf")), trans.append(float("inf")), results.append(None)
        else:
            r, t = pose_error(res.viewmat.double(), gt_viewmats[i].double().cpu())
            rot.append(float(r)), trans.append(float(t)), results.append(res if keep_results else None)
        secs.append(time.perf_counter() - t0)
    rot_t = torch.tensor(rot, dtype=torch.float64)
    return PoseEvaluation(
        rot_t,
        torch.tensor(trans, dtype=torch.float64),
        torch.tensor(secs),
        pose_auc(rot_t.numpy()),
        names or [str(i) for i in range(len(rot))],
        results if keep_results else None,
    )


@dataclass
class BasinResult:
    """Convergence rate of the refinement as a function of the starting error.

    Args:
        angles_deg: Starting rotation errors. [A]
        rates: Fraction of trials ending below ``success_deg``. [A]
        final_rot_deg: Final rotation error of every trial (inf if diverged). [A, T]
        success_deg: The success threshold in degrees.
    """

    angles_deg: Tensor
    rates: Tensor
    final_rot_deg: Tensor
    success_deg: float


def basin(
    splats,
    views,
    angles_deg=(2.0, 5.0, 10.0, 15.0, 20.0, 30.0),
    trials: int = 8,
    config: PoseConfig = PoseConfig(),
    images: Tensor | None = None,
    success_deg: float = 2.0,
    device=None,
    seed: int = 0,
) -> BasinResult:
    """Start from true poses rotated by θ about a random axis; how often does refinement come back?

    Args:
        splats: The object's splats.
        views: Cameras with true poses (e.g. held-out training views). [C]
        angles_deg: Starting errors θ. [A]
        trials: Trials per angle; trial t uses view ``t % C`` and seed ``seed + t``.
        config: Refinement settings (retrieval and hypotheses are not used).
        images: The views' images; None renders them from the splats (a perfect model). [C, H, W, 3]
        success_deg: A trial succeeds when its final rotation error is below this.
        device: Where to render; None means the device of the splats.
        seed: Base seed of the random axes.
    """
    if images is None:
        from splatlab.splats import render_splats

        with torch.no_grad():
            images = render_splats(
                splats,
                views,
                background=torch.tensor(config.background),
                backend=config.backend,
                eps2d=config.eps2d,
            )[0].cpu()
    errors = torch.full((len(angles_deg), trials), float("inf"), dtype=torch.float64)
    for a, theta in enumerate(angles_deg):
        for t in range(trials):
            gt = views.viewmats[t % len(views)]
            start = perturb_viewmat(gt, float(theta), seed=seed + t)
            try:
                res = refine(images[t % len(views)], splats, start, views.Ks[t % len(views)], config, device)
            except PoseDivergedError:
                continue
            errors[a, t] = pose_error(res.viewmat.double(), gt.double())[0]
    return BasinResult(
        torch.tensor([float(x) for x in angles_deg]),
        (errors < success_deg).double().mean(1),
        errors,
        float(success_deg),
    )
