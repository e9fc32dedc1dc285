"""Benchmark of the whole detection pipeline and its baselines on the default LEGO-MAD dataset.

    python benchmarks/detect.py --json                          # every class, every test image
    python benchmarks/detect.py --classes 01Cat --max-queries 12 # a quick look

Per class: train splats where absent (``ensure_trained``, cpu preset, 128²; runs are cached under
``runs/``), calibrate a threshold on held-out good training views (every 8th view, put through the same
pose pipeline as a test query), then run every selected test image through

- the full pipeline (retrieval, hypotheses, refinement, render, SplatPose anomaly map);
- baseline (a), coarse pose only: render at the retrieved training view's pose;
- baseline (b), nearest view: compare with the retrieved training image itself;
- baseline (c), a PatchCore-style memory bank of all training views' patch features.

Metrics (:mod:`splatlab.metrics`, percent): image AUROC, pixel AUROC, AUPRO to FPR 0.3, per defect type, and
the pose AUC against ``test_poses.json`` (evaluation only). A report folder (markdown, ROC curves, example
maps) is written to ``--out``. The last stdout line is one JSON object.

Timings depend on the machine's load (shared CPUs); the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return float(np.mean(xs)) if xs else float("nan")


def _summary_row(m: dict) -> dict:
    keys = (
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
    )
    return {k: m[k] for k in keys if k in m}


def run_benchmark(args) -> tuple[dict, dict]:
    from splatlab.anomaly import AnomalyConfig, CalibrationConfig
    from splatlab.baselines import MemoryBank, MemoryBankConfig, run_memory_bank
    from splatlab.data import default_dataset, list_classes, load_mad_class, load_test_poses
    from splatlab.detect import DetectorModel, class_metrics, run_class, select_queries
    from splatlab.pose import pose_config
    from splatlab.train import ensure_trained

    root = Path(args.data) if args.data else default_dataset(size=args.size)
    class_dirs = list_classes(root)
    if args.classes:
        wanted = set(args.classes)
        class_dirs = [d for d in class_dirs if d.name in wanted]
        missing = wanted - {d.name for d in class_dirs}
        if missing:
            raise SystemExit(
                f"--classes: unknown {sorted(missing)}; have {[d.name for d in list_classes(root)]}"
            )
    pose_cfg = pose_config(args.pose_preset)
    anomaly = AnomalyConfig(method=args.method)
    per_method: dict[str, list[dict]] = {"full": [], "coarse_only": [], "nearest_view": [], "memory_bank": []}
    runs: dict[str, dict] = {}
    for class_dir in class_dirs:
        name = class_dir.name
        t0 = time.perf_counter()
        run_dir = ensure_trained(class_dir, args.runs, args.train_preset, args.size, progress=False)
        t_train = time.perf_counter() - t0
        mc = load_mad_class(class_dir, size=args.size)
        model = DetectorModel.from_run(
            run_dir,
            mc.train,
            pose_config=pose_cfg,
            anomaly=anomaly,
            calibration_source=None if args.calibration == "none" else args.calibration,
        )
        t0 = time.perf_counter()
        if args.calibration != "none" and model.calibration is None:
            model.calibrate(
                mc.train, CalibrationConfig(source=args.calibration, holdout_every=args.calib_every)
            )
        t_cal = time.perf_counter() - t0
        idx = select_queries([s.defect for s in mc.test], args.max_queries, seed=args.seed)
        try:
            gt = load_test_poses(class_dir, size=args.size).cameras.viewmats
        except FileNotFoundError:
            logging.warning("%s has no test_poses.json: no pose AUC", name)
            gt = None
        runs[name] = {}
        for mode, key in (("full", "full"), ("coarse", "coarse_only"), ("nearest", "nearest_view")):
            if mode != "full" and args.no_baselines:
                continue
            run = run_class(
                model,
                mc.test,
                mode=mode,
                name=name,
                indices=idx,
                gt_viewmats=gt,
                n_examples=4 if mode == "full" else 0,
                progress=False,
            )
            runs[name][mode] = run
            per_method[key].append(class_metrics(run))
        if not args.no_baselines:
            t0 = time.perf_counter()
            bank = MemoryBank.fit(mc.train.images, MemoryBankConfig())
            fit = time.perf_counter() - t0
            run = run_memory_bank(bank, mc.test, name, idx)
            runs[name]["memory_bank"] = run
            m = class_metrics(run)
            m["fit_seconds"] = fit
            per_method["memory_bank"].append(m)
        full = per_method["full"][-1]
        full["train_seconds"], full["calibration_seconds"] = t_train, t_cal
        logging.info("partial %s", json.dumps({k: _summary_row(v[-1]) for k, v in per_method.items() if v}))
        logging.info(
            "%s: image %.1f pixel %.1f aupro %.1f (%.1f s/query)",
            name,
            full["image_auroc"],
            full["pixel_auroc"],
            full["aupro"],
            full["seconds_per_query"],
        )
    classes = [
        _summary_row(m) | {k: m[k] for k in ("train_seconds", "calibration_seconds")}
        for m in per_method["full"]
    ]
    summary = {
        "classes": classes,
        "mean_image_auroc": _mean(c["image_auroc"] for c in classes),
        "mean_pixel_auroc": _mean(c["pixel_auroc"] for c in classes),
        "mean_aupro": _mean(c["aupro"] for c in classes),
        "baselines": {},
    }
    for key in ("coarse_only", "nearest_view", "memory_bank"):
        rows = per_method[key]
        if rows:
            summary["baselines"][key] = {
                "mean_image_auroc": _mean(r["image_auroc"] for r in rows),
                "mean_pixel_auroc": _mean(r["pixel_auroc"] for r in rows),
                "mean_aupro": _mean(r["aupro"] for r in rows),
                "seconds_per_query": _mean(r["seconds_per_query"] for r in rows),
                "classes": [{k: r[k] for k in ("name", "image_auroc", "pixel_auroc", "aupro")} for r in rows],
            }
    summary["meta"] = {
        "data": str(root),
        "size": args.size,
        "method": args.method,
        "train_preset": args.train_preset,
        "pose_preset": args.pose_preset,
        "calibration": args.calibration,
        "max_queries": args.max_queries,
        "queries_per_class": [len(r["full"].scores) for r in runs.values()],
        "torch_threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    return summary, runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    p.add_argument("--classes", nargs="*", default=None, help="class folder names (default: all)")
    p.add_argument(
        "--max-queries", type=int, default=None, help="test images per class, spread over defect types"
    )
    p.add_argument("--out", default="reports/detect", help="report folder (replaced atomically)")
    p.add_argument("--data", default=None, help="dataset root (default: the generated LEGO-MAD at --size)")
    p.add_argument("--runs", default=None, help="run root for trained splats (default: runs/)")
    p.add_argument("--size", type=int, default=128, help="image size the classes are loaded and trained at")
    p.add_argument("--train-preset", default="cpu", help="training preset (cpu, gpu, fast)")
    p.add_argument("--pose-preset", default="cpu", help="pose preset (cpu, full, splatpose, fast)")
    p.add_argument("--method", default="splatpose", help="anomaly map: splatpose, rgb, features, ssim")
    p.add_argument(
        "--calibration",
        default="pose",
        choices=("pose", "gt_pose", "none"),
        help="threshold from held-out good views through the pose pipeline, at their known pose, or none",
    )
    p.add_argument(
        "--calib-every",
        type=int,
        default=8,
        help="calibrate on every n-th training view (8 = training's eval split)",
    )
    p.add_argument("--no-baselines", action="store_true", help="run the full pipeline only")
    p.add_argument("--seed", type=int, default=0, help="seed of the query selection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    t0 = time.perf_counter()
    summary, runs = run_benchmark(args)
    summary["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    from splatlab.report import write_report

    out = write_report(args.out, summary, runs)
    if not args.json:
        print((out / "README.md").read_text())
    print(f"report: {out}")
    if args.json:
        print(json.dumps(summary, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
