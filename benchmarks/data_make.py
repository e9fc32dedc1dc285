"""Time generating the default LEGO-MAD dataset (all shipped classes, 128 px, seed 0) of a look.

    python benchmarks/data_make.py [--size 128] [--classes 01Cat 02Puppy] [--look real]

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

from splatlab.data.make import LOOKS, look_config, make_dataset, shipped_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="*", default=None)
    parser.add_argument("--look", choices=list(LOOKS), default="clean")
    parser.add_argument("--spp", type=int, default=None, help="samples per pixel of the real look")
    args = parser.parse_args()
    cfg = look_config(args.look, size=args.size, seed=args.seed)
    if args.spp is not None:
        cfg = replace(cfg, realism=replace(cfg.realism, spp=args.spp))
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
                "look": args.look,
                "spp": cfg.realism.spp if cfg.renderer == "mitsuba" else None,
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
