"""Benchmark of the whole detection pipeline and its baselines on the default LEGO-MAD dataset.

    python benchmarks/detect.py --json                          # every class, every test image
    python benchmarks/detect.py --classes 01Cat --max-queries 12 # a quick look

Per class: train splats where absent (``ensure_trained``, cpu preset, 128²; runs are cached under
``runs/``), calibrate a threshold on held-out good training views (every 8th view, put through the same
pose pipeline as a test query), then run every selected test image through

- the full pipeline (retrieval, hypotheses, refinement, render, anomaly map: ``--method cosine`` by default,
  the shift-tolerant cosine map chosen on a development split, see :mod:`splatlab.anomaly`; SplatPose's
  recipe is scored on the same poses and references too, ``--compare``);
- baseline (a), coarse pose only: render at the retrieved training view's pose;
- baseline (b), nearest view: compare with the retrieved training image itself;
- baseline (c), a PatchCore-style memory bank of all training views' patch features.

Metrics (:mod:`splatlab.metrics`, percent): image AUROC, pixel AUROC, AUPRO to FPR 0.3, per defect type, and
the pose AUC against ``test_poses.json`` (evaluation only). A report folder (markdown, ROC curves, example
maps) is written to ``--out``. The last stdout line is one JSON object.

Timings depend on the machine's load (shared CPUs); the JSON records the load average.

``--data`` points at another dataset root. The development split used to choose methods and settings is
``splatlab data make ../devdata --seed 1 --test-good 30 --test-per-defect 10``: new test poses and defects,
the same training views as the default data (the rig does not depend on the seed), so the trained runs
are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def run_benchmark(args) -> tuple[dict, dict]:
    from splatlab.data import default_dataset, list_classes
    from splatlab.evaluate import EvalConfig, evaluate

    root = Path(args.data) if args.data else default_dataset(size=args.size, look=args.look)
    class_dirs = list_classes(root)
    if args.classes:
        wanted = set(args.classes)
        class_dirs = [d for d in class_dirs if d.name in wanted]
        missing = wanted - {d.name for d in class_dirs}
        if missing:
            raise SystemExit(
                f"--classes: unknown {sorted(missing)}; have {[d.name for d in list_classes(root)]}"
            )
    config = EvalConfig(
        size=args.size,
        train_preset=args.train_preset,
        pose_preset=args.pose_preset,
        method=args.method,
        compare_methods=tuple(args.compare),
        appearance=args.appearance,
        presmooth=args.presmooth,
        calibration=args.calibration,
        calib_every=args.calib_every,
        max_queries=args.max_queries,
        baselines=not args.no_baselines,
        seed=args.seed,
    )
    summary, runs = evaluate(class_dirs, config, args.runs, progress=False)
    summary["meta"]["data"] = str(root)
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
    p.add_argument("--look", default="clean", help="look of the generated data: clean or real")
    p.add_argument(
        "--appearance",
        default="affine",
        help="photometric alignment of the reference to the query: none, gain, affine (splatlab.appearance)",
    )
    p.add_argument("--presmooth", type=float, default=2.2, help="blur σ (px at 224²) of both images; 0: none")
    p.add_argument("--runs", default=None, help="run root for trained splats (default: runs/)")
    p.add_argument("--size", type=int, default=128, help="image size the classes are loaded and trained at")
    p.add_argument("--train-preset", default="cpu", help="training preset (cpu, gpu, fast)")
    p.add_argument(
        "--pose-preset", default=None, help="pose preset (cpu, gpu, splatpose, fast); default: cpu on a CPU"
    )
    p.add_argument("--method", default="cosine", help="anomaly map: cosine, splatpose, rgb, features, ssim")
    p.add_argument(
        "--compare",
        nargs="*",
        default=["splatpose"],
        help="anomaly maps also scored on the same poses and references (none: --compare)",
    )
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
