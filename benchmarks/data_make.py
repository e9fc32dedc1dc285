"""Time generating the default LEGO-MAD dataset (all shipped classes, 128 px, seed 0) into a temporary folder.

    python benchmarks/data_make.py [--size 128] [--classes 01Cat 02Puppy]

The last stdout line is JSON: seconds in total and per class, image counts, CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from splatlab.data.make import MakeConfig, make_dataset, shipped_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="*", default=None)
    args = parser.parse_args()
    cfg = replace(MakeConfig(), size=args.size, seed=args.seed)
    names = args.classes or [e["name"] for e in shipped_classes()]
    per_class = {}
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        for name in names:
            t = time.perf_counter()
            make_dataset(Path(tmp) / name, cfg, classes=[name])
            per_class[name] = round(time.perf_counter() - t, 2)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        n_images = sum(1 for _ in Path(tmp).rglob("*.png"))
    print(
        json.dumps(
            {
                "benchmark": "data_make",
                "size": cfg.size,
                "supersample": cfg.supersample,
                "classes": len(names),
                "seconds": round(total, 2),
                "cpu_seconds": round(cpu, 2),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "per_class_seconds": per_class,
                "png_files": n_images,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
