"""``splatlab evaluate [DATA]``: the MAD-style evaluation of whole classes, or of pose estimation alone.

Per class (:func:`splatlab.evaluate.evaluate_class`): splats trained where absent (cached under ``runs/``),
a threshold calibrated on held-out good training views, every selected test image through the pipeline
and the baselines, MAD's metrics. The report folder (``--out``, replaced atomically) holds markdown tables,
ROC curves, example maps and ``results.json`` (:func:`splatlab.report.write_report`); ``--json`` prints
the summary as the last stdout line. ``--pose`` evaluates pose estimation only, against
``test_poses.json`` (:func:`splatlab.evaluate.evaluate_pose_class`). ``benchmarks/detect.py`` and
``benchmarks/pose.py`` call these functions.
"""

from __future__ import annotations

import json as jsonlib
import logging
import time
from pathlib import Path
from typing import Annotated, Literal

import tyro

from splatlab.evaluate import EvalConfig

log = logging.getLogger(__name__)


def select_classes(root: Path, classes: tuple[str, ...] | list[str] = ()) -> list[Path]:
    """The class folders of a dataset root, all or those named.

    Raises:
        ValueError: A name that is not a class of ``root`` (the message names ``--classes``).
    """
    from splatlab.data import list_classes

    class_dirs = list_classes(root)
    if classes:
        known = {d.name for d in class_dirs}
        missing = [c for c in classes if c not in known]
        if missing:
            raise ValueError(f"--classes: unknown {missing} in {root}; have {sorted(known)}")
        class_dirs = [d for d in class_dirs if d.name in set(classes)]
    return class_dirs


def _json_default(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)


def evaluate_cli(
    data: tyro.conf.Positional[Annotated[Path | None, tyro.conf.arg(metavar="DATA")]] = None,
    classes: tuple[str, ...] = (),
    out: Path = Path("reports/evaluate"),
    json: bool = False,
    max_queries: int | None = None,
    look: str = "clean",
    size: int = EvalConfig.size,
    runs: Path | None = None,
    train_preset: str = EvalConfig.train_preset,
    iterations: int | None = None,
    pose_preset: str | None = None,
    method: str = EvalConfig.method,
    compare: tuple[str, ...] = EvalConfig.compare_methods,
    appearance: str = EvalConfig.appearance,
    presmooth: float = EvalConfig.presmooth,
    error_floor: float | None = EvalConfig.error_floor,
    error_view_sigma: float | None = EvalConfig.error_view_sigma,
    calibration: Literal["pose", "gt_pose", "none"] = "pose",
    calib_every: int = EvalConfig.calib_every,
    baselines: bool = True,
    seed: int = 0,
    pose: bool = False,
    heldout: int = 0,
    device: str | None = None,
) -> int:
    """Evaluate whole classes the MAD way (image/pixel AUROC, AUPRO, pose AUC) and write a report folder.

    Args:
        data: Dataset root (MAD layout); default: the generated LEGO-MAD of --look at --size.
        classes: Class folder names (default: all).
        out: Report folder (markdown tables, ROC curves, example maps, results.json); replaced atomically.
        json: Print the summary as one JSON line at the end.
        max_queries: Test images per class, spread over defect types (--pose: the first ones); all by default.
        look: Look of the generated data: clean, real or real-relit (without DATA).
        size: Image size the classes are loaded and trained at.
        runs: Run root for the trained splats (default: runs/ or $SPLATLAB_RUNS).
        train_preset: Training preset of the splats: cpu, gpu or fast.
        iterations: Training steps (the preset's schedule stretched along); default: the preset's.
        pose_preset: Pose preset: cpu, gpu, splatpose (the paper's) or fast; default: cpu on a CPU.
        method: Anomaly map: cosine, splatpose, rgb, features or ssim.
        compare: Anomaly maps also scored on the same poses and references.
        appearance: Photometric alignment of the reference to the query: none, gain or affine.
        presmooth: Blur σ (px at 224²) of both images before the map; 0: none.
        error_floor: Divide the map by the splats' expected error at the pose plus this fraction of its
            mean (fitted on the training views); None: off.
        error_view_sigma: Std in degrees of the kernel that weighs the training views by how close their
            direction is to the query's when the expected error is formed; None: all views alike.
        calibration: Threshold from held-out good views through the pose pipeline, at their known pose,
            or none.
        calib_every: Calibrate on every n-th training view (8 = training's eval split).
        baselines: Also run the coarse-only, nearest-view and memory-bank baselines.
        seed: Seed of the query selection.
        pose: Evaluate pose estimation only (AUC@5/10/20°, errors, seconds per query); no report folder.
        heldout: With --pose, also query every n-th training view, excluded from retrieval (0 = none).
        device: Where to train, render and score (e.g. cuda); default: the CPU.
    """
    from splatlab.data import default_dataset

    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"{data}: dataset root not found")
    root = Path(data) if data is not None else default_dataset(size=size, look=look)
    class_dirs = select_classes(root, classes)
    config = EvalConfig(
        size=size, train_preset=train_preset, iterations=iterations, pose_preset=pose_preset, method=method,
        compare_methods=tuple(c for c in compare if c != "none"), appearance=appearance, presmooth=presmooth,
        calibration=calibration, calib_every=calib_every, max_queries=max_queries, baselines=baselines,
        seed=seed, error_floor=error_floor, error_view_sigma=error_view_sigma,
    )
    if pose:
        return _evaluate_poses(root, class_dirs, config, runs, heldout, json, device)
    from splatlab.evaluate import evaluate
    from splatlab.report import markdown_report, write_report

    t0 = time.perf_counter()
    summary, class_runs = evaluate(class_dirs, config, runs, progress=False, device=device)
    summary["meta"]["data"] = str(root)
    summary["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    report = write_report(out, summary, class_runs)
    if not json:
        print(markdown_report(summary))
    print(f"report: {report}")
    if json:
        print(jsonlib.dumps(summary, default=_json_default))
    return 0


def _evaluate_poses(root, class_dirs, config, runs, heldout, json, device) -> int:
    from splatlab.evaluate import evaluate_pose_class, pose_row_text, summarize_poses
    from splatlab.pose import default_preset, pose_config

    pconfig = pose_config(config.pose_preset or default_preset(device))
    rows = []
    for class_dir in class_dirs:
        rows.append(evaluate_pose_class(class_dir, pconfig, config, runs, heldout, device))
        print(pose_row_text(rows[-1]), flush=True)
    result = summarize_poses(rows, pconfig, config) | {"data": str(root), "heldout_every": heldout}
    print(f"mean AUC@5 {result['mean_auc5']:.2f}, {result['mean_seconds_per_query']:.2f} s per query")
    if json:
        print(jsonlib.dumps(result, default=_json_default))
    return 0
