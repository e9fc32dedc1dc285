"""Benchmark of pose estimation (coarse retrieval → hypotheses → refinement) on the default LEGO-MAD data.

    python benchmarks/pose.py            # a readable table
    python benchmarks/pose.py --json     # the same, plus one JSON object as the last line of stdout

A thin caller of :func:`splatlab.evaluate.evaluate_pose_class`, which ``splatlab evaluate --pose`` runs
too. For every class at 128²: the splats of the ``cpu`` training preset (trained first with
``ensure_trained`` if absent, into the default run folder), a retriever over the training views
(descriptors cached in the run folder), then :func:`splatlab.pose.estimate_pose` for every generated test
image (good and defective), compared with ``test_poses.json``. ``--heldout N`` adds every N-th training
view as a query, with its own view excluded from retrieval.

Reported per class: pose AUC at 5/10/20° (percent), median rotation error (degrees), median translation
error (world units; the camera is ~4 units from the object), wall seconds per query from the query image
to the final pose, and the CPU seconds of this process per query (less sensitive to other processes on
the machine). One warm-up estimate per class (Numba compilation) is not counted. Timings depend on the
machine's load, recorded as the load average before and after; ``--threads`` sets the torch/Numba threads
of the estimate (by default the library chooses them, :mod:`splatlab.threads`, as for the demo and CLI).

The pose preset is ``--pose-preset`` (``--preset`` is the same option, its older name), as in
``splatlab evaluate`` and ``splatlab detect``.

``--from-truth`` skips the search and starts each refinement at the true pose: the error it ends with is
that of the pose loss's minimum under these splats (the model's bias), a floor for the full pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_overrides(items: list[str], parser: argparse.ArgumentParser) -> tuple[dict, dict]:
    """``["steps=80", "pnp.k=5"]`` -> (PoseConfig overrides, PnPConfig overrides), values parsed as Python."""
    import ast

    from splatlab.pnp import PnPConfig
    from splatlab.pose import PoseConfig

    fields = {f.name for f in dataclasses.fields(PoseConfig)}
    fields |= {f"pnp.{f.name}" for f in dataclasses.fields(PnPConfig)}
    out, pnp = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare string such as method=sift
        if key.startswith("pnp."):
            pnp[key[4:]] = parsed
        else:
            out[key] = parsed
    return out, pnp


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument(
        "--pose-preset", "--preset", dest="pose_preset", default="cpu",
        help="pose preset of splatlab.pose.PRESETS (--preset: the same option)",
    )
    parser.add_argument("--train-preset", default="cpu", help="training preset of the splats")
    parser.add_argument("--iterations", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument(
        "--method", default=None, choices=["features", "sift"], help="retrieval (preset's by default)"
    )
    parser.add_argument("--size", type=int, default=128, help="image size of the default dataset")
    parser.add_argument("--data", default=None, help="dataset root (default: the generated LEGO-MAD)")
    parser.add_argument("--runs", default=None, help="run root for trained splats (default: runs/)")
    parser.add_argument("--classes", nargs="*", default=None, help="class names (default: all)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many test queries per class")
    parser.add_argument("--heldout", type=int, default=0, help="also query every N-th training view")
    parser.add_argument("--look", default="clean", help="look of the generated data: clean, real, real-relit")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/Numba threads per estimate (default: the library's)"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE",
        help="PoseConfig fields to override, e.g. --set steps=80 lr_decay_every=15 pnp.k=5",
    )
    parser.add_argument(
        "--from-truth", action="store_true",
        help="no search: refine each query from its true pose (where the pose loss's minimum lies)",
    )
    parser.add_argument(
        "--view-fraction", type=float, default=1.0,
        help="train on this share of the training views (evenly spread, splatlab.sweep.view_subset; 1 = all)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from splatlab.data import default_dataset
    from splatlab.evaluate import EvalConfig, evaluate_pose_class, pose_row_text, summarize_poses
    from splatlab.evaluate_cli import select_classes
    from splatlab.pose import pose_config
    from splatlab.threads import thread_counts

    overrides = {"num_threads": args.threads} | ({"method": args.method} if args.method else {})
    more, pnp_overrides = parse_overrides(args.set, parser)
    overrides |= more
    if not 0 < args.view_fraction <= 1:
        parser.error(f"--view-fraction must be in (0, 1], got {args.view_fraction}")
    try:
        config = pose_config(args.pose_preset, **overrides)
        config = dataclasses.replace(config, pnp=dataclasses.replace(config.pnp, **pnp_overrides))
    except (TypeError, ValueError) as e:
        parser.error(f"--pose-preset {args.pose_preset} with --set {args.set}: {e}")
    root = Path(args.data) if args.data else default_dataset(args.size, look=args.look)
    try:
        dirs = select_classes(root, args.classes or ())
    except ValueError as e:
        parser.error(str(e))
    eval_config = EvalConfig(size=args.size, train_preset=args.train_preset, iterations=args.iterations,
                             max_queries=args.limit or None)
    load_before = os.getloadavg()
    rows = []
    for class_dir in dirs:
        if args.view_fraction < 1.0:  # a class folder of links holding the kept views, beside the runs
            from splatlab.run import default_run_root
            from splatlab.sweep import view_subset

            views_root = Path(args.runs) if args.runs else default_run_root()
            class_dir = view_subset(class_dir, args.view_fraction, views_root / "views")
        rows.append(evaluate_pose_class(class_dir, config, eval_config, args.runs, args.heldout,
                                        from_truth=args.from_truth))
        print(pose_row_text(rows[-1]), flush=True)
    result = summarize_poses(rows, config, eval_config) | {
        "pose_preset": args.pose_preset,
        "data": str(root),
        "heldout_every": args.heldout,
        "view_fraction": args.view_fraction,
        "threads_torch_numba": thread_counts(args.size * args.size, args.threads),  # square images
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"mean AUC@5 {result['mean_auc5']:.2f}, {result['mean_seconds_per_query']:.2f} s per query")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
