"""Benchmark of pose estimation (coarse retrieval → hypotheses → refinement) on the default LEGO-MAD data.

    python benchmarks/pose.py            # a readable table
    python benchmarks/pose.py --json     # the same, plus one JSON object as the last line of stdout

For every class of the default dataset at 128²: the splats of the ``cpu`` training preset (trained first
with :func:`splatlab.train.ensure_trained` if absent, into the default run folder), a retriever over the
120 training views (descriptors cached in the run folder), then :func:`splatlab.pose.estimate_pose` for
every generated test image (good and defective), compared with ``test_poses.json``. ``--heldout N`` adds
every N-th training view as a query, with its own view excluded from retrieval.

Reported per class: pose AUC at 5/10/20° (percent), median rotation error (degrees), median translation
error (world units; the camera is ~4 units from the object) and wall seconds per query from the query
image to the final pose (retrieval, brief refinement of the hypotheses, full refinement), and the CPU
seconds of this process per query (less sensitive to other processes on the machine). One warm-up
estimate per class (Numba compilation) is not counted. Timings depend on the machine's load, recorded as
the load average before and after; ``--threads`` sets the torch/Numba threads of the estimate (by default
the library chooses them, :mod:`splatlab.threads`, as it does for the demo and the CLI).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def class_queries(class_dir, size: int, heldout: int, train_views):
    """Test images with their true viewmats, plus (optionally) every ``heldout``-th training view."""
    from splatlab.data import load_mad_class, load_test_poses

    cls = load_mad_class(class_dir, size=size)
    poses = load_test_poses(class_dir, size=size)
    by_path = {p: i for i, p in enumerate(poses.paths)}
    images, gts, excludes, names = [], [], [], []
    for sample in cls.test:
        rel = sample.path.relative_to(class_dir).as_posix()
        if rel not in by_path:
            raise ValueError(f"{class_dir}/test_poses.json has no pose for {rel}")
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


def sparse_model(run, train_views, fraction: float, preset: str):
    """Splats trained on an evenly spaced ``fraction`` of the training views (cached beside the full run),
    and those views: ``(run_dir, splats, views)``."""
    from splatlab.atomic import open_atomic
    from splatlab.data.mad import TrainViews
    from splatlab.splats import load_ply
    from splatlab.train import TrainConfig, train

    if not 0 < fraction <= 1:
        raise ValueError(f"--view-fraction must be in (0, 1], got {fraction}")
    n = len(train_views.images)
    keep = torch.linspace(0, n - 1, max(2, round(fraction * n))).round().long().unique()
    views = TrainViews(train_views.images[keep], train_views.cameras[keep], [])
    out = run.parent / f"{run.name}-views{len(keep)}"
    if not (out / "splats.ply").is_file():
        resolution = json.loads((run / "config.json").read_text())["resolution"]
        config = dataclasses.replace(TrainConfig.preset(preset), resolution=resolution, eval=False)
        train(views, config, out_dir=out, resume=True, progress=False)
        with open_atomic(out / "views.json", "w") as f:
            json.dump({"kept": keep.tolist(), "of": n, "preset": preset}, f)
    return out, load_ply(out / "splats.ply"), views


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--preset", default="cpu", help="pose preset of splatlab.pose.PRESETS")
    parser.add_argument("--train-preset", default="cpu", help="training preset of the splats")
    parser.add_argument(
        "--method", default=None, choices=["features", "sift"], help="retrieval (preset's by default)"
    )
    parser.add_argument("--size", type=int, default=128, help="image size of the default dataset")
    parser.add_argument(
        "--data", default=None, help="dataset root (default: the generated LEGO-MAD at --size)"
    )
    parser.add_argument("--classes", nargs="*", default=None, help="class names (default: all)")
    parser.add_argument(
        "--limit", type=int, default=0, help="at most this many test queries per class (0 = all)"
    )
    parser.add_argument(
        "--heldout", type=int, default=0, help="also query every N-th training view (0 = none)"
    )
    parser.add_argument("--look", default="clean", help="look of the generated data: clean, real, real-relit")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/Numba threads per estimate (default: the library's)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="PoseConfig fields to override, e.g. --set steps=80 lr_decay_every=15 pnp.k=5",
    )
    parser.add_argument(
        "--view-fraction",
        type=float,
        default=1.0,
        help="train on this share of the training views (evenly spaced; 1 = all) and retrieve among them",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from splatlab.data import default_dataset, list_classes, load_mad_class
    from splatlab.pose import estimate_pose, pose_config
    from splatlab.pose_eval import evaluate_poses
    from splatlab.retrieval import Retriever
    from splatlab.run import ensure_trained, run_eps2d
    from splatlab.splats import load_ply
    from splatlab.threads import thread_counts

    overrides = {"num_threads": args.threads} | ({"method": args.method} if args.method else {})
    more, pnp_overrides = parse_overrides(args.set, parser)
    overrides |= more
    try:
        config = pose_config(args.preset, **overrides)
        config = dataclasses.replace(config, pnp=dataclasses.replace(config.pnp, **pnp_overrides))
    except (TypeError, ValueError) as e:
        parser.error(f"--preset {args.preset} with --set {args.set}: {e}")
    root = Path(args.data) if args.data else default_dataset(args.size, look=args.look)
    dirs = list_classes(root)
    if args.classes:
        dirs = [d for d in dirs if d.name in set(args.classes)]
        if not dirs:
            parser.error(f"--classes: none of {args.classes} in {root}")
    load_before = os.getloadavg()
    rows, all_seconds, all_errors = [], [], []
    for class_dir in dirs:
        run = ensure_trained(class_dir, None, args.train_preset, args.size, progress=False)
        splats = load_ply(run / "splats.ply")
        config = dataclasses.replace(config, eps2d=run_eps2d(run))  # render the splats as trained
        train_views = load_mad_class(class_dir, size=args.size).train
        if args.view_fraction < 1.0:
            run, splats, train_views = sparse_model(run, train_views, args.view_fraction, args.train_preset)
        retriever = Retriever.build(train_views.images, train_views.cameras, config.method, cache_dir=run)
        images, gts, excludes, names = class_queries(class_dir, args.size, args.heldout, train_views)
        if args.limit:
            images, gts, excludes, names = (
                images[: args.limit],
                gts[: args.limit],
                excludes[: args.limit],
                names[: args.limit],
            )
        estimate_pose(
            images[0],
            splats,
            retriever,
            dataclasses.replace(config, steps=2, short_steps=1, pyramid_scales=(), pyramid_steps=()),
        )  # warm-up
        cpu0 = time.process_time()
        ev = evaluate_poses(
            splats, retriever, images, gts, config, exclude=excludes, names=names, keep_results=True
        )
        cpu_seconds = time.process_time() - cpu0
        s = ev.summary()
        done = [r for r in ev.results if r is not None]
        stages = sorted({k for r in done for k in r.timings})
        stage_s = {k: round(statistics.mean(r.timings.get(k, 0.0) for r in done), 3) for k in stages}
        ev.results = None  # the histories are not needed any more
        worst = int(torch.argmax(ev.rot_deg))
        rows.append(
            {
                "name": class_dir.name,
                "auc5": round(s["auc5"], 2),
                "auc10": round(s["auc10"], 2),
                "auc20": round(s["auc20"], 2),
                "median_rot_deg": round(s["median_rot_deg"], 3),
                "median_trans": round(s["median_trans"], 4),
                "seconds_per_query": round(s["seconds_per_query"], 3),
                "n_queries": s["n"],
                "failures_10deg": int((ev.rot_deg > 10).sum()),
                "seconds_by_stage": stage_s,
                "pnp_fallbacks": sum(r.fallback_reason is not None for r in done),
                "diverged": s["diverged"],
                "worst": {"query": names[worst], "rot_deg": round(float(ev.rot_deg[worst]), 2)},
            }
        )
        all_seconds += ev.seconds.tolist()
        all_errors += ev.rot_deg.tolist()
        rows[-1]["cpu_seconds_per_query"] = round(cpu_seconds / len(images), 3)
        r = rows[-1]
        print(
            f"{r['name']:<10} AUC@5 {r['auc5']:6.2f}  @10 {r['auc10']:6.2f}  @20 {r['auc20']:6.2f}  "
            f"median {r['median_rot_deg']:.3f}° {r['median_trans']:.4f}  "
            f"{r['seconds_per_query']:.2f} s/query {r['seconds_by_stage']}  >10°: {r['failures_10deg']}  "
            f"worst {r['worst']['query']} {r['worst']['rot_deg']}°",
            flush=True,
        )
    result = {
        "classes": rows,
        "mean_auc5": round(statistics.mean(r["auc5"] for r in rows), 2),
        "mean_auc10": round(statistics.mean(r["auc10"] for r in rows), 2),
        "mean_auc20": round(statistics.mean(r["auc20"] for r in rows), 2),
        "mean_seconds_per_query": round(statistics.mean(all_seconds), 3),
        "median_rot_deg": round(statistics.median(all_errors), 3),
        "failures_10deg": sum(r["failures_10deg"] for r in rows),
        "n_queries": len(all_errors),
        "view_fraction": args.view_fraction,
        "pose_preset": args.preset,
        "config": dataclasses.asdict(config),
        "train_preset": args.train_preset,
        "size": args.size,
        "data": str(root),
        "heldout_every": args.heldout,
        "threads_torch_numba": thread_counts(args.size * args.size, args.threads),  # square images
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"mean AUC@5 {result['mean_auc5']:.2f}, {result['mean_seconds_per_query']:.2f} s per query")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
