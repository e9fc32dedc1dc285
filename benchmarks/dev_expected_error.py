"""Development-split study of the expected-error field (``splatlab.expected_error``) on cached poses.

    python benchmarks/dev_maps.py cache --data ../devdata-real --out ../devcache-real
    python benchmarks/dev_expected_error.py --cache ../devcache-real --data ../devdata-real

Per class of the cache written by ``dev_maps.py cache``: fits the field on the class's training views (all
of them, each at its known pose), renders it at each cached query's true test pose (the field is smooth, and
the estimated poses are within a fraction of a degree) and scores the cached query/render pairs with the map
divided by ``field + floor · mean``. Prints per class and mean image AUROC for each floor, and the last line
is one JSON object. For choosing settings on a development split only, never on test images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="folder of dev_maps.py cache (one CLASS.npz per class)")
    p.add_argument("--data", required=True, help="the development dataset the cache was made from")
    p.add_argument("--runs", default=None, help="run root of the trained splats (default: runs/)")
    p.add_argument("--floors", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train-preset", default="cpu")
    args = p.parse_args(argv)

    from splatlab.anomaly import AnomalyConfig, anomaly_map
    from splatlab.appearance import align_render
    from splatlab.cameras import Cameras
    from splatlab.data import load_mad_class, load_test_poses
    from splatlab.expected_error import fit_expected_error, normalize_map, render_expected_error
    from splatlab.metrics import image_auroc
    from splatlab.run import ensure_trained, load_run, run_eps2d

    cfg = AnomalyConfig(error_floor=None)
    bg = torch.ones(3)
    result = {}
    for f in sorted(Path(args.cache).glob("*.npz")):
        c = dict(np.load(f))
        class_dir = Path(args.data) / f.stem
        run = ensure_trained(class_dir, args.runs, args.train_preset, args.size, progress=False)
        splats, _, _ = load_run(run)
        eps2d = run_eps2d(run)
        mc = load_mad_class(class_dir, size=args.size)
        field = fit_expected_error(splats, mc.train, cfg, background=bg, eps2d=eps2d, progress=False)
        gt = load_test_poses(class_dir, size=args.size).cameras
        q, r = torch.from_numpy(c["query"]).float(), torch.from_numpy(c["render"]).float()
        a = torch.from_numpy(c["alpha"]).float()
        r = align_render(r, a, q, cfg.appearance, bg).clamp(0, 1)
        maps = torch.cat([anomaly_map(q[b : b + 16], r[b : b + 16], cfg) for b in range(0, len(q), 16)])
        emaps = []
        for i in c["indices"]:
            cam = Cameras(gt.viewmats[i : i + 1].float(), gt.Ks[i : i + 1].float(), gt.width, gt.height)
            emaps.append(render_expected_error(splats, field, cam.viewmats[0], cam.Ks[0], cam.width,
                                               cam.height, eps2d=eps2d))
        row = {"none": 100 * image_auroc(maps.flatten(1).amax(1).numpy(), c["label"])}
        for floor in args.floors:
            fc = AnomalyConfig(error_floor=floor)
            s = torch.stack([normalize_map(m, e, field, fc).amax() for m, e in zip(maps, emaps, strict=True)])
            row[f"floor {floor:g}"] = 100 * image_auroc(s.numpy(), c["label"])
        result[f.stem] = row
        print(f.stem, " ".join(f"{k} {v:5.1f}" for k, v in row.items()), file=sys.stderr, flush=True)
    mean = {k: float(np.mean([r[k] for r in result.values()])) for k in next(iter(result.values()))}
    print("mean", " ".join(f"{k} {v:5.1f}" for k, v in mean.items()), file=sys.stderr)
    print(json.dumps({"mean_image_auroc": mean, "classes": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
