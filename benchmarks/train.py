"""Benchmark of training: every class of the default LEGO-MAD dataset at 128 px with a preset.

    python benchmarks/train.py                 # a readable table (cpu preset, all classes)
    python benchmarks/train.py --json          # the same, plus one JSON object as the last line of stdout
    python benchmarks/train.py --classes 01Cat 03Pig --preset fast

Each class trains from scratch (nothing is cached; runs go to a temporary folder) with every 8th view held
out; PSNR and SSIM are measured on the held-out views. ``seconds`` is the wall time of ``train()`` (the
Numba kernels are compiled and cached before the first class, so compilation is not counted);
``cpu_seconds`` is the process CPU time over the same span, which is less sensitive to other processes on a
shared machine. ``time_split`` says where the time goes: render (forward), loss (L1 + SSIM forward),
backward (SSIM and render backward), optimizer (Adam), densify (gsplat DefaultStrategy), eval (held-out
renders). The JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from splatlab.data import default_dataset, list_classes  # noqa: E402
from splatlab.data.mad import load_train  # noqa: E402
from splatlab.train import TrainConfig, train  # noqa: E402


def warm_up() -> None:
    """Compile (or load from Numba's cache) the CPU kernels on a tiny scene, outside the timings."""
    from splatlab.cameras import ring_rig
    from splatlab.splats import random_splats, render_splats

    cams = ring_rig(elevations_deg=(0.0,), azimuth_step_deg=180.0, width=32, height=32, focal=40.0)
    img, _, _ = render_splats(random_splats(50, extent=0.5), cams, background=torch.ones(3))
    img.mean().backward()


def run_class(class_dir: Path, config: TrainConfig, size: int) -> dict:
    views = load_train(class_dir, size)
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        splats, history = train(views, config, out_dir=Path(tmp) / "run", progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "name": class_dir.name,
        "psnr": round(history.eval_psnr[-1], 3),
        "ssim": round(history.eval_ssim[-1], 4),
        "seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "n_gaussians": int(len(splats["means"])),
        "time_split": {k: round(v, 1) for k, v in history.timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--preset", default="cpu", choices=["cpu", "fast", "gpu"])
    parser.add_argument("--size", type=int, default=128, help="image size of the default dataset")
    parser.add_argument("--classes", nargs="*", default=None, help="class names (default: all)")
    args = parser.parse_args()

    root = default_dataset(size=128)
    dirs = list_classes(root)
    if args.classes:
        dirs = [d for d in dirs if d.name in set(args.classes)]
        if not dirs:
            raise SystemExit(f"no class among {args.classes} in {root}")
    config = TrainConfig.preset(args.preset, resolution=args.size)
    load_before = os.getloadavg()
    warm_up()
    rows = []
    for d in dirs:
        row = run_class(d, config, args.size)
        rows.append(row)
        print(f"{row['name']:<12} PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.4f}  "
              f"{row['seconds']:6.1f} s "
              f"(cpu {row['cpu_seconds']:6.1f} s)  {row['n_gaussians']:6d} Gaussians  {row['time_split']}",
              flush=True)
    result = {
        "classes": rows,
        "mean_psnr": round(statistics.mean(r["psnr"] for r in rows), 3),
        "mean_seconds": round(statistics.mean(r["seconds"] for r in rows), 1),
        "preset": args.preset,
        "size": args.size,
        "iterations": config.iterations,
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"mean PSNR {result['mean_psnr']:.2f} dB, mean {result['mean_seconds']:.1f} s per class")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
