"""Figures of a pose estimate, drawn after the fact from its :class:`splatlab.pose.PoseResult` history.

All return a ``matplotlib.figure.Figure``; nothing here renders or optimises.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from splatlab.cameras import pose_error


def _figure(rows: int = 1, cols: int = 1, size=(4.0, 3.2)):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    return fig, axes


def errors_per_step(result, gt_viewmat: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (degrees) and translation errors of every full-refinement step. ([S], [S])"""
    rot, trans = pose_error(result.viewmats.double(), gt_viewmat.double().cpu().expand_as(result.viewmats))
    return rot.numpy(), trans.numpy()


def refinement_figure(result, gt_viewmat: Tensor | None = None):
    """Loss per step (log scale; pyramid levels shaded) and, with a ground truth, the pose errors.

    Args:
        result: A :class:`splatlab.pose.PoseResult`.
        gt_viewmat: The true world→camera matrix, if known. [4, 4]
    """
    fig, axes = _figure(1, 2 if gt_viewmat is not None else 1)
    ax = axes[0, 0]
    steps = np.arange(len(result.losses))
    ax.semilogy(steps, result.losses.numpy(), color="C0")
    scales = result.scales.numpy()
    for s in np.unique(scales):
        if s < 1.0:
            idx = steps[scales == s]
            ax.axvspan(idx.min() - 0.5, idx.max() + 0.5, color="0.9", zorder=0)
            ax.text(idx.mean(), ax.get_ylim()[1], f"×{s:g}", ha="center", va="top", fontsize=8)
    restart = result.restarted_at
    if restart is not None:
        ax.axvline(restart - 0.5, color="0.5", linestyle="--", linewidth=1)
        ax.text(restart, ax.get_ylim()[1], " second pass", ha="left", va="top", fontsize=8)
    ax.set(
        xlabel="step",
        ylabel="loss",
        title="Refinement loss" + (" (stopped early)" if result.stopped_early else ""),
    )
    if gt_viewmat is not None:
        rot, trans = errors_per_step(result, gt_viewmat)
        ax2 = axes[0, 1]
        if restart is not None:
            ax2.axvline(restart - 0.5, color="0.5", linestyle="--", linewidth=1)
        ax2.plot(steps, rot, color="C3", label="rotation (°)")
        ax2.set(xlabel="step", ylabel="rotation error (°)", title="Error to the true pose")
        ax3 = ax2.twinx()
        ax3.plot(steps, trans, color="C2", label="translation")
        ax3.set_ylabel("translation error")
        ax2.legend(handles=ax2.lines + ax3.lines, loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def candidates_figure(result, retriever, query: Tensor):
    """The query, then each retrieved candidate view with its similarity and brief-refinement loss.

    Args:
        result: A :class:`splatlab.pose.PoseResult` from :func:`splatlab.pose.estimate_pose`.
        retriever: The retriever it used (its ``images`` are shown).
        query: The query image. [H, W, 3]
    """
    n = len(result.candidates)
    fig, axes = _figure(1, n + 1, size=(2.4, 2.6))
    axes[0, 0].imshow(query.detach().cpu().clamp(0, 1).numpy())
    axes[0, 0].set_title("query", fontsize=9)
    for j, c in enumerate(result.candidates):
        ax = axes[0, j + 1]
        if retriever.images is not None:
            ax.imshow(retriever.images[c.index].detach().cpu().clamp(0, 1).numpy())
        mark = " ★" if j == result.chosen else ""
        ax.set_title(f"view {c.index}{mark}\nsim {c.similarity:.3g}, loss {c.loss:.3g}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def renders_figure(result, query: Tensor, max_panels: int = 6):
    """Recorded renders (``record_every``) next to the query, with |render − query| below.

    Args:
        result: A :class:`splatlab.pose.PoseResult` with recorded renders.
        query: The query image. [H, W, 3]
        max_panels: At most this many steps, evenly picked (the last is always shown).
    """
    steps = sorted(result.renders)
    if not steps:
        raise ValueError("result has no renders; estimate with config.record_every > 0")
    if len(steps) > max_panels:
        pick = np.unique(np.linspace(0, len(steps) - 1, max_panels).round().astype(int))
        steps = [steps[i] for i in pick]
    fig, axes = _figure(2, len(steps), size=(2.2, 2.2))
    q = query.detach().cpu()
    for j, s in enumerate(steps):
        img = result.renders[s]
        qs = torch.nn.functional.interpolate(q.permute(2, 0, 1)[None], size=img.shape[:2], mode="area")[0]
        axes[0, j].imshow(img.clamp(0, 1).numpy())
        axes[0, j].set_title(f"step {s}", fontsize=8)
        axes[1, j].imshow((img - qs.permute(1, 2, 0)).abs().mean(-1).numpy(), cmap="magma", vmin=0, vmax=0.5)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def basin_figure(basin_result, title: str = "Basin of convergence"):
    """Convergence rate against the starting rotation error (from :func:`splatlab.pose_eval.basin`)."""
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.plot(basin_result.angles_deg.numpy(), 100 * basin_result.rates.numpy(), "o-")
    ax.set(
        xlabel="starting rotation error (°)",
        ylabel=f"converged (< {basin_result.success_deg:g}°) %",
        ylim=(-5, 105),
        title=title,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def error_cdf_figure(rot_errors_deg: dict[str, Tensor], max_deg: float = 20.0):
    """Recall against rotation error per method or class (the curve whose area is the pose AUC).

    Args:
        rot_errors_deg: ``{label: rotation errors in degrees [Q]}``.
        max_deg: Right end of the x axis.
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    for label, e in rot_errors_deg.items():
        e = np.sort(np.asarray(e, dtype=float))
        ax.step(np.concatenate([[0], e]), np.arange(len(e) + 1) / len(e), where="post", label=label)
    ax.set(
        xlim=(0, max_deg), ylim=(0, 1.02), xlabel="rotation error (°)", ylabel="recall", title="Pose recall"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def matches_figure(result, retriever, query: Tensor, hypothesis: int | None = None):
    """The query beside a retrieved view with the PnP route's matches: inliers green, RANSAC outliers red,
    matches the alpha mask kept from being lifted (silhouette pixels) grey.

    Args:
        result: A :class:`splatlab.pose.PoseResult` of the "pnp" or "pnp+refine" route.
        retriever: The retriever it used (its ``images`` are shown).
        query: The query image. [H, W, 3]
        hypothesis: Index into ``result.pnp.hypotheses``; default the winner, or the single view with the most
            inliers when the winner is the pooled hypothesis or there is none.
    """
    if result.pnp is None:
        raise ValueError("result has no PnP record; estimate with route 'pnp' or 'pnp+refine'")
    hyps = result.pnp.hypotheses
    if hypothesis is None:
        hypothesis = result.pnp.chosen
        if hypothesis < 0 or hyps[hypothesis].view < 0:
            hypothesis = max((j for j, h in enumerate(hyps) if h.view >= 0), key=lambda j: hyps[j].n_inliers)
    h = hyps[hypothesis]
    q = query.detach().cpu().clamp(0, 1).numpy()
    v = retriever.images[h.view].detach().cpu().clamp(0, 1).numpy()
    W = q.shape[1]
    fig, axes = _figure(1, 1, size=(6.4, 3.4))
    ax = axes[0, 0]
    ax.imshow(np.concatenate([q, v], axis=1))
    inlier = np.zeros(h.n_matches, bool)
    inlier[h.inliers] = True
    for kind, sel, colour, width in (
        ("not lifted", ~h.lifted, "0.6", 0.6),
        ("outlier", h.lifted & ~inlier, "red", 0.6),
        ("inlier", inlier, "limegreen", 0.9),
    ):
        for (x0, y0), (x1, y1) in zip(h.query_xy[sel] - 0.5, h.view_xy[sel] - 0.5, strict=True):
            ax.plot([x0, x1 + W], [y0, y1], color=colour, lw=width)
        ax.plot([], [], color=colour, label=f"{kind} ({int(sel.sum())})")
    status = "" if h.ok else f" — rejected: {h.reason}"
    ax.set_title(
        f"query | view {h.view}: {h.n_matches} matches, {h.n_inliers} inliers, "
        f"{h.reprojection_px:.2f} px{status}",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.axis("off")
    fig.tight_layout()
    return fig


def error_time_figure(routes: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Rotation error against seconds per query, one marker colour per route (log error axis).

    Args:
        routes: ``{name: (seconds [Q], rotation errors in degrees [Q])}``.
    """
    fig, axes = _figure(1, 1, size=(4.6, 3.4))
    ax = axes[0, 0]
    for name, (secs, errs) in routes.items():
        ax.scatter(secs, np.maximum(errs, 1e-3), s=18, label=f"{name} (median {np.median(errs):.2f}°)")
    ax.set(xlabel="seconds per query", ylabel="rotation error (°)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
