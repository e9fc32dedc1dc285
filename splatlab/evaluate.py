"""The MAD-style evaluation of whole classes: train where needed, calibrate, detect, score, baselines.

Shared by ``splatlab demo``, ``splatlab evaluate`` (``benchmarks/detect.py``) and ``splatlab sweep``.
Per class:

1. splats of the good object (``ensure_trained``; runs are cached under ``runs/``);
2. a decision threshold from held-out good training views only (never test statistics);
3. every selected test image through the full pipeline and, optionally, three baselines:
   (a) coarse pose only, (b) the retrieved nearest training image itself, (c) a PatchCore-style memory bank;
   the other anomaly-map methods of ``compare_methods`` are scored on the same poses and references;
4. metrics in percent: image AUROC, pixel AUROC, AUPRO to FPR 0.3, per defect type, pose AUC.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from splatlab.anomaly import AnomalyConfig

log = logging.getLogger(__name__)

# method key in the summary -> detect() mode
MODES = {"full": "full", "coarse_only": "coarse", "nearest_view": "nearest"}


@dataclass(frozen=True)
class EvalConfig:
    size: int = 128  # image size the classes are loaded and trained at
    train_preset: str | None = "cpu"  # "cpu", "gpu" or "fast"; None: by device and SPLATLAB_FAST
    # training steps; None: the preset's. The preset's schedule (densification, SH steps) is stretched
    # along (TrainConfig.with_iterations), and the changed fields go into the run folder's name
    iterations: int | None = None
    # pose preset: "cpu", "gpu", "splatpose" (the paper's) or "fast"; None: splatlab.pose.default_preset
    # ("cpu" here: the evaluation runs on the CPU), as load_detector and `splatlab detect`
    pose_preset: str | None = None
    # Anomaly map (splatlab.anomaly.METHODS). "cosine" was chosen on a development split (LEGO-MAD seed 1),
    # see splatlab.anomaly; "splatpose" is the paper's recipe.
    method: str = "cosine"
    compare_methods: tuple[str, ...] = ("splatpose",)  # also scored on the same poses and references
    # Photometric alignment of the reference to the query before the map (splatlab.appearance) and the
    # blur σ (px at 224²) of both images before it; chosen on the realistic look's development split
    appearance: str = AnomalyConfig.appearance
    presmooth: float = AnomalyConfig.presmooth
    # the map divided by the splats' expected error plus this fraction of its mean (splatlab.expected_error);
    # None: off. Chosen on the realistic look's development split
    error_floor: float | None = AnomalyConfig.error_floor
    # σ in degrees of the view kernel of the expected error; None: every training view alike
    error_view_sigma: float | None = AnomalyConfig.error_view_sigma
    calibration: str = "pose"  # threshold from held-out views: "pose", "gt_pose" or "none"
    calib_every: int = 8  # calibrate on every n-th training view (8 = training's eval split)
    max_queries: int | None = None  # test images per class, spread over defect types; None = all
    baselines: bool = True  # also run the coarse-only, nearest-view and memory-bank baselines
    seed: int = 0  # seed of the query selection


def train_overrides(config: EvalConfig, device=None) -> dict[str, object]:
    """The ``TrainConfig`` fields ``config.iterations`` changes in the preset (for ``ensure_trained``)."""
    from splatlab.train import TrainConfig, default_config

    if config.iterations is None:
        return {}
    if config.iterations < 1:
        raise ValueError(f"iterations: must be positive, got {config.iterations}")
    base = default_config(device) if config.train_preset is None else TrainConfig.preset(config.train_preset)
    stretched = base.with_iterations(config.iterations).to_dict()
    return {k: v for k, v in stretched.items() if v != base.to_dict()[k]}


def _mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return float(np.mean(xs)) if xs else float("nan")


_ROW_KEYS = (
    "name",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "per_defect",
    "seconds_per_query",
    "stage_seconds",
    "pose_auc",
    "median_rot_deg",
    "decision",
    "n",
    "train_seconds",
    "calibration_seconds",
    "fit_seconds",
)


def evaluate_class(
    class_dir: str | Path,
    config: EvalConfig = EvalConfig(),
    runs_root: str | Path | None = None,
    progress: bool = True,
    device=None,
) -> tuple[dict[str, dict], dict[str, object]]:
    """Evaluate one class folder.

    Args:
        class_dir: A MAD-layout class folder.
        config: What to run.
        runs_root: Where trained runs are cached; ``runs/`` by default.
        progress: Show progress bars.
        device: Where to train, render and score; None means the CPU.

    Returns:
        ``(metrics, runs)``: per method key ("full", "coarse_only", ...) a metric dict and a
        :class:`splatlab.detect.ClassRun`.
    """
    from splatlab.anomaly import AnomalyConfig, CalibrationConfig
    from splatlab.baselines import MemoryBank, MemoryBankConfig, run_memory_bank
    from splatlab.data import load_mad_class, load_test_poses
    from splatlab.detect import DetectorModel, class_metrics, run_class, select_queries
    from splatlab.pose import default_preset, pose_config
    from splatlab.run import ensure_trained

    class_dir = Path(class_dir)
    name = class_dir.name
    t0 = time.perf_counter()
    run_dir = ensure_trained(class_dir, runs_root, config.train_preset, config.size, device=device,
                             progress=progress, **train_overrides(config, device))
    t_train = time.perf_counter() - t0
    mc = load_mad_class(class_dir, size=config.size)
    model = DetectorModel.from_run(
        run_dir,
        mc.train,
        pose_config=pose_config(config.pose_preset or default_preset(device)),
        anomaly=AnomalyConfig(method=config.method, appearance=config.appearance, presmooth=config.presmooth,
                              error_floor=config.error_floor, error_view_sigma=config.error_view_sigma),
        calibration_source=None if config.calibration == "none" else config.calibration,
        device=device,
    )
    t0 = time.perf_counter()
    if model.anomaly.error_floor is not None:
        model.expected_error_field(progress=progress)  # fitted (or read) once, before the first detection
    if config.calibration != "none" and model.calibration is None:
        log.info("%s: calibrating on held-out good views", name)
        model.calibrate(
            mc.train, CalibrationConfig(source=config.calibration, holdout_every=config.calib_every)
        )
    t_cal = time.perf_counter() - t0
    idx = select_queries([s.defect for s in mc.test], config.max_queries, seed=config.seed)
    try:
        gt = load_test_poses(class_dir, size=config.size).cameras.viewmats  # evaluation only
    except FileNotFoundError:
        log.warning("%s has no test_poses.json: no pose AUC", name)
        gt = None
    metrics: dict[str, dict] = {}
    runs: dict[str, object] = {}
    for key, mode in MODES.items():
        if key != "full" and not config.baselines:
            continue
        log.info("%s: %s on %d test images", name, key, len(idx))
        run = run_class(
            model,
            mc.test,
            mode=mode,
            name=name,
            indices=idx,
            gt_viewmats=gt,
            n_examples=4 if key == "full" else 0,
            progress=progress,
            other_methods=config.compare_methods if key == "full" else (),
        )
        runs[key], metrics[key] = run, class_metrics(run)
        for method in run.other_maps:
            metrics[f"map:{method}"] = class_metrics(run.with_method(method))
    if config.baselines:
        t0 = time.perf_counter()
        bank = MemoryBank.fit(mc.train.images, MemoryBankConfig())
        fit = time.perf_counter() - t0
        run = run_memory_bank(bank, mc.test, name, idx)
        runs["memory_bank"], metrics["memory_bank"] = run, class_metrics(run) | {"fit_seconds": fit}
    metrics["full"] |= {"train_seconds": t_train, "calibration_seconds": t_cal}
    return metrics, runs


def summarize(per_class: list[dict[str, dict]], config: EvalConfig) -> dict:
    """The benchmark summary (AUROCs in percent) from :func:`evaluate_class` metrics of several classes."""
    classes = [{k: m["full"][k] for k in _ROW_KEYS if k in m["full"]} for m in per_class]
    summary = {
        "classes": classes,
        "mean_image_auroc": _mean(c["image_auroc"] for c in classes),
        "mean_pixel_auroc": _mean(c["pixel_auroc"] for c in classes),
        "mean_aupro": _mean(c["aupro"] for c in classes),
        "mean_seconds_per_query": _mean(c["seconds_per_query"] for c in classes),
        "baselines": {},
    }
    for key in ("coarse_only", "nearest_view", "memory_bank"):
        rows = [m[key] for m in per_class if key in m]
        if rows:
            summary["baselines"][key] = {
                "mean_image_auroc": _mean(r["image_auroc"] for r in rows),
                "mean_pixel_auroc": _mean(r["pixel_auroc"] for r in rows),
                "mean_aupro": _mean(r["aupro"] for r in rows),
                "seconds_per_query": _mean(r["seconds_per_query"] for r in rows),
                "classes": [{k: r[k] for k in ("name", "image_auroc", "pixel_auroc", "aupro")} for r in rows],
            }
    # The anomaly-map methods on the same poses and references: the pipeline's own first.
    summary["maps"] = {}
    for method, key in [(config.method, "full")] + [(m, f"map:{m}") for m in config.compare_methods]:
        rows = [m[key] for m in per_class if key in m]
        if rows and method not in summary["maps"]:
            summary["maps"][method] = {
                "mean_image_auroc": _mean(r["image_auroc"] for r in rows),
                "mean_pixel_auroc": _mean(r["pixel_auroc"] for r in rows),
                "mean_aupro": _mean(r["aupro"] for r in rows),
                "classes": [{k: r[k] for k in ("name", "image_auroc", "pixel_auroc", "aupro")} for r in rows],
            }
    summary["meta"] = asdict(config) | {
        "torch_threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    return summary


def evaluate(
    class_dirs: list[Path],
    config: EvalConfig = EvalConfig(),
    runs_root: str | Path | None = None,
    progress: bool = True,
    device=None,
) -> tuple[dict, dict[str, dict[str, object]]]:
    """Evaluate several classes; returns the summary and, per class, the runs (for reports)."""
    if not class_dirs:
        raise ValueError("class_dirs is empty: nothing to evaluate")
    per_class, runs = [], {}
    for class_dir in class_dirs:
        metrics, runs[Path(class_dir).name] = evaluate_class(class_dir, config, runs_root, progress, device)
        per_class.append(metrics)
        full = metrics["full"]
        log.info(
            "%s: image AUROC %.1f, pixel AUROC %.1f, AUPRO %.1f (%.2f s/query)",
            full["name"],
            full["image_auroc"],
            full["pixel_auroc"],
            full["aupro"],
            full["seconds_per_query"],
        )
    return summarize(per_class, config), runs


# ----------------------------------------------------------------------------------------------------------
# Pose estimation alone (benchmarks/pose.py, `splatlab evaluate --pose`)
# ----------------------------------------------------------------------------------------------------------


def pose_queries(class_dir: str | Path, size: int, heldout: int, train_views):
    """Test images with their true viewmats, plus (optionally) every ``heldout``-th training view.

    Returns:
        ``(images [Q, H, W, 3], viewmats [Q, 4, 4], excludes [Q], names [Q])``; a held-out training view
        excludes itself from retrieval.
    """
    from splatlab.data import load_mad_class, load_test_poses

    class_dir = Path(class_dir)
    cls = load_mad_class(class_dir, size=size)
    poses = load_test_poses(class_dir, size=size)
    by_path = {p: i for i, p in enumerate(poses.paths)}
    images, gts, excludes, names = [], [], [], []
    for sample in cls.test:
        rel = sample.path.relative_to(class_dir).as_posix()
        if rel not in by_path:
            raise ValueError(f"{class_dir / 'test_poses.json'}: has no pose for {rel}")
        images.append(sample.image)
        gts.append(poses.cameras.viewmats[by_path[rel]])
        excludes.append(None)
        names.append(rel)
    if heldout:
        for i in range(0, len(train_views.images), heldout):
            images.append(train_views.images[i])
            gts.append(train_views.cameras.viewmats[i])
            excludes.append([i])
            names.append(f"train/{i}")
    return torch.stack(images), torch.stack(gts), excludes, names


def evaluate_pose_class(
    class_dir: str | Path,
    pose_config,
    config: EvalConfig = EvalConfig(),
    runs_root: str | Path | None = None,
    heldout: int = 0,
    device=None,
    from_truth: bool = False,
) -> dict:
    """Pose accuracy and speed of one class: coarse retrieval, hypotheses and refinement of every query.

    Args:
        class_dir: A MAD-layout class folder with ``test_poses.json`` (read for the errors only).
        pose_config: A :class:`splatlab.pose.PoseConfig`; its ``eps2d`` is replaced by the run's.
        config: Image size, training preset and iterations of the splats, and ``max_queries`` (the first
            queries, not a spread: the order of the test folders).
        runs_root: Where trained runs are cached; ``runs/`` by default.
        heldout: Also query every n-th training view, its own view excluded from retrieval (0 = none).
        device: Where to train and render; None means the CPU.
        from_truth: Refine each query from its true pose, no search: the pose loss's own error
            (:func:`splatlab.pose_eval.evaluate_poses`).

    Returns:
        AUC at 5/10/20° (percent), median rotation (degrees) and translation errors (world units), wall
        and CPU seconds per query, the worst query. One warm-up estimate (Numba compilation) is not timed.
    """
    import dataclasses

    from splatlab.data import load_mad_class
    from splatlab.pose import estimate_pose
    from splatlab.pose_eval import evaluate_poses
    from splatlab.retrieval import Retriever
    from splatlab.run import ensure_trained, run_eps2d
    from splatlab.splats import load_ply

    class_dir = Path(class_dir)
    run = ensure_trained(class_dir, runs_root, config.train_preset, config.size, device=device,
                         progress=False, **train_overrides(config, device))
    splats = load_ply(run / "splats.ply", device=device)
    pose_config = dataclasses.replace(pose_config, eps2d=run_eps2d(run))  # render the splats as trained
    train_views = load_mad_class(class_dir, size=config.size).train
    retriever = Retriever.build(train_views.images, train_views.cameras, pose_config.method, cache_dir=run,
                                device=device)
    images, gts, excludes, names = pose_queries(class_dir, config.size, heldout, train_views)
    if config.max_queries:
        n = config.max_queries
        images, gts, excludes, names = images[:n], gts[:n], excludes[:n], names[:n]
    warm = dataclasses.replace(pose_config, steps=2, short_steps=1, pyramid_scales=(), pyramid_steps=())
    estimate_pose(images[0], splats, retriever, warm, device)
    cpu0 = time.process_time()
    ev = evaluate_poses(
        splats, retriever, images, gts, pose_config, device, exclude=excludes, names=names, keep_results=True,
        from_truth=from_truth,
    )
    cpu_seconds = time.process_time() - cpu0
    s = ev.summary()
    done = [r for r in ev.results if r is not None]
    stages = sorted({k for r in done for k in r.timings})
    ev.results = None  # the histories are not needed any more
    worst = int(torch.argmax(ev.rot_deg))
    return {
        "name": class_dir.name,
        "auc5": round(s["auc5"], 2),
        "auc10": round(s["auc10"], 2),
        "auc20": round(s["auc20"], 2),
        "median_rot_deg": round(s["median_rot_deg"], 3),
        "median_trans": round(s["median_trans"], 4),
        "seconds_per_query": round(s["seconds_per_query"], 3),
        "cpu_seconds_per_query": round(cpu_seconds / len(images), 3),
        "n_queries": s["n"],
        "failures_10deg": int((ev.rot_deg > 10).sum()),
        "seconds_by_stage": {k: round(_mean(r.timings.get(k, 0.0) for r in done), 3) for k in stages},
        "pnp_fallbacks": sum(r.fallback_reason is not None for r in done),
        "second_passes": sum(r.restarted_at is not None for r in done),  # PoseConfig.restart_moved_deg
        "diverged": s["diverged"],
        "worst": {"query": names[worst], "rot_deg": round(float(ev.rot_deg[worst]), 2)},
        "mean_rot_deg": round(float(ev.rot_deg.clamp(max=180).mean()), 3),
        "from_truth": from_truth,
    }


def summarize_poses(rows: list[dict], pose_config, config: EvalConfig) -> dict:
    """The pose summary of several classes (means of the per-class AUCs and seconds), with the settings."""
    import dataclasses

    return {
        "classes": rows,
        "mean_auc5": round(_mean(r["auc5"] for r in rows), 2),
        "mean_auc10": round(_mean(r["auc10"] for r in rows), 2),
        "mean_auc20": round(_mean(r["auc20"] for r in rows), 2),
        "failures_10deg": sum(r["failures_10deg"] for r in rows),
        "mean_seconds_per_query": round(
            sum(r["seconds_per_query"] * r["n_queries"] for r in rows) / sum(r["n_queries"] for r in rows), 3
        ),
        "config": dataclasses.asdict(pose_config),
        "train_preset": config.train_preset,
        "iterations": config.iterations,
        "size": config.size,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }


def pose_row_text(r: dict) -> str:
    """One class's pose results as a line of text."""
    return (
        f"{r['name']:<10} AUC@5 {r['auc5']:6.2f}  @10 {r['auc10']:6.2f}  @20 {r['auc20']:6.2f}  "
        f"median {r['median_rot_deg']:.3f}° {r['median_trans']:.4f}  {r['seconds_per_query']:.2f} s/query "
        f"{r['seconds_by_stage']}  >10°: {r['failures_10deg']}  second passes: {r['second_passes']}  "
        f"worst {r['worst']['query']} {r['worst']['rot_deg']}°"
    )
