"""Development-split study of the expected-error field (``splatlab.expected_error``) on cached poses.

    python benchmarks/dev_maps.py cache --data ../devdata-real --out ../devcache-real
    python benchmarks/dev_expected_error.py --cache ../devcache-real --data ../devdata-real \
        --variant 'ps1.5:{"presmooth":1.5}'

Per class of the cache written by ``dev_maps.py cache`` and per map variant (``AnomalyConfig`` fields over
the defaults; ``default`` is always scored): fits the field with the variant's map settings on the class's
training views (all of them, each at its known pose), renders it at each cached query's true test pose (the
field is smooth, and the estimated poses are within a fraction of a degree) and scores the cached
query/render pairs with the map divided by ``field + floor · mean`` (the field seen from the test pose with
the variant's ``error_view_sigma``). Prints per variant and floor the mean image AUROC, per class and per
defect type (``--pixels``: also pixel AUROC and AUPRO@0.3); the last line is one JSON object. For choosing
settings on a development split only, never on test images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from dev_maps import defect_aurocs, load_cache, parse_variants  # this folder's sibling study script
from torch import Tensor


def load_class(class_dir: Path, args):
    """The class's trained splats, their 2D low-pass, training views and test cameras."""
    from splatlab.data import load_mad_class, load_test_poses
    from splatlab.run import ensure_trained, load_run, run_eps2d

    run = ensure_trained(class_dir, args.runs, args.train_preset, args.size, progress=False)
    splats, _, _ = load_run(run)
    mc = load_mad_class(class_dir, size=args.size)
    return splats, run_eps2d(run), mc.train, load_test_poses(class_dir, size=args.size).cameras


def score_class(
    c, loaded, spec: dict, floors, fields: dict, pixels: bool = False, fit_views: str = "all"
) -> dict[str, dict[str, float]]:
    """{setting: AUROCs} of one cached class for one variant: without the field, and per floor. ``fields``
    keeps the class's fitted fields by ``fit_key``, so variants of the floor or σ alone fit once. With
    ``pixels``, also the pixel AUROC and AUPRO@0.3 of the maps at the masks' size. ``fit_views``: "all"
    training views, or "train" (without calibration's held-out views, as the library fits it)."""
    from splatlab.anomaly import AnomalyConfig, anomaly_map, resize_map
    from splatlab.appearance import align_render
    from splatlab.expected_error import fit_expected_error, fit_key, normalize_map, render_expected_error
    from splatlab.metrics import aupro, image_auroc, pixel_auroc

    splats, eps2d, train, gt = loaded
    cfg = AnomalyConfig(**{**spec, "error_floor": None})
    bg = torch.ones(3)
    if fit_key(cfg) not in fields:
        indices = None
        if fit_views == "train":
            from splatlab.detect import holdout_indices

            held_out = set(holdout_indices(len(train.images)))
            indices = [i for i in range(len(train.images)) if i not in held_out]
        fields[fit_key(cfg)] = fit_expected_error(splats, train, cfg, background=bg, eps2d=eps2d,
                                                  indices=indices, progress=False)
    field = fields[fit_key(cfg)]
    q, r = torch.from_numpy(c["query"]).float(), torch.from_numpy(c["render"]).float()
    a = torch.from_numpy(c["alpha"]).float()
    r = align_render(r, a, q, cfg.appearance, bg).clamp(0, 1)
    maps = torch.cat([anomaly_map(q[b : b + 16], r[b : b + 16], cfg) for b in range(0, len(q), 16)])
    emaps = [render_expected_error(splats, field, gt.viewmats[i].float(), gt.Ks[i].float(), gt.width,
                                   gt.height, view_sigma=cfg.error_view_sigma, eps2d=eps2d)
             for i in c["indices"]]
    labels, defects = np.asarray(c["label"]), np.asarray(c["defects"])
    masks = np.asarray(c["mask"]).astype(bool)

    def aurocs(m: Tensor) -> dict[str, float]:
        scores = m.flatten(1).amax(1).numpy()
        out = {"image_auroc": 100 * image_auroc(scores, labels), **defect_aurocs(scores, labels, defects)}
        if pixels:  # at the masks' size, as splatlab.detect reports them
            full = resize_map(m, tuple(masks.shape[1:])).numpy()
            out.update(pixel_auroc=100 * pixel_auroc(full, masks), aupro=100 * aupro(full, masks))
        return out

    out = {"none": aurocs(maps)}
    for floor in floors:
        fc = AnomalyConfig(**{**spec, "error_floor": floor})
        out[f"floor {floor:g}"] = aurocs(
            torch.stack([normalize_map(m, e, field, fc) for m, e in zip(maps, emaps, strict=True)])
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="folder of dev_maps.py cache (one CLASS.npz per class)")
    p.add_argument("--data", required=True, help="the development dataset the cache was made from")
    p.add_argument("--runs", default=None, help="run root of the trained splats (default: runs/)")
    p.add_argument("--floors", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    p.add_argument(
        "--variant", action="append", default=[],
        help='NAME:{"field": value, ...}: AnomalyConfig fields over the defaults (repeatable)',
    )
    p.add_argument("--no-default", action="store_true", help="score only the --variant settings")
    p.add_argument("--pixels", action="store_true", help="also pixel AUROC and AUPRO@0.3 (slower)")
    p.add_argument("--fit-views", choices=("all", "train"), default="all",
                   help="fit the field on all training views, or without calibration's held-out ones")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train-preset", default="cpu")
    args = p.parse_args(argv)

    variants = {} if args.no_default else {"default": {}}
    variants.update(parse_variants(args.variant))
    rows = {name: {} for name in variants}
    for cls, c in load_cache(Path(args.cache)).items():
        loaded = load_class(Path(args.data) / cls, args)  # once per class, shared by the variants
        fields = {}
        for name, spec in variants.items():
            rows[name][cls] = score_class(c, loaded, spec, args.floors, fields, args.pixels, args.fit_views)
            print(name, cls, " ".join(f"{k} {v['image_auroc']:5.1f}" for k, v in rows[name][cls].items()),
                  file=sys.stderr, flush=True)
    result = {}
    for name, rows_v in rows.items():
        settings = next(iter(rows_v.values())).keys()
        mean = {}
        for s in settings:
            keys = sorted({k for r in rows_v.values() for k in r[s]})
            mean[s] = {k: float(np.mean([r[s][k] for r in rows_v.values() if k in r[s]])) for k in keys}
            per = " ".join(f"{k[:6]} {v[s]['image_auroc']:5.1f}" for k, v in rows_v.items())
            dd = " ".join(f"{k[:6]} {v:5.1f}" for k, v in mean[s].items() if k != "image_auroc")
            line = f"{name:12s} {s:10s} {mean[s]['image_auroc']:5.1f} | {per} | {dd}"
            print(line, file=sys.stderr, flush=True)
        result[name] = {"spec": variants[name], "mean": mean, "classes": rows_v}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
