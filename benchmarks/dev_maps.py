"""Development-split study of anomaly-map settings on cached poses and renders.

    python benchmarks/dev_maps.py cache --data ../devdata-real --out ../devcache-real  # a pose per query
    python benchmarks/dev_maps.py score --cache ../devcache-real  # seconds per variant

``cache`` trains (or reuses) each class's ``cpu`` splats, estimates every selected test query's pose with
the ``cpu`` pose preset and stores, per class, the query, the render at that pose *before* any alignment, its
alpha, the mask, label and defect type (``CLASS.npz``). The pose does not depend on the map, so ``score``
re-scores the cached pairs under many map settings (alignment, blur, stages, image score) in seconds and
prints one JSON object as its last line: per variant, the image and pixel AUROC per class and their means.

For choosing settings on a development split only (``splatlab data make --seed 1``), never on test images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch


def cache(args) -> None:
    from splatlab.cameras import Cameras, pose_error
    from splatlab.data import list_classes, load_mad_class, load_test_poses
    from splatlab.detect import DetectorModel, holdout_indices, select_queries
    from splatlab.pose import estimate_pose, pose_config
    from splatlab.query import prepare_query
    from splatlab.run import ensure_trained
    from splatlab.splats import render_splats

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for class_dir in list_classes(args.data):
        if args.classes and class_dir.name not in args.classes:
            continue
        dest = out / f"{class_dir.name}.npz"
        if dest.is_file():
            continue
        run_dir = ensure_trained(class_dir, args.runs, args.train_preset, args.size, progress=False)
        mc = load_mad_class(class_dir, size=args.size)
        model = DetectorModel.from_run(
            run_dir, mc.train, pose_config=pose_config(args.pose_preset), calibration_source=None
        )
        gt = load_test_poses(class_dir, size=args.size).cameras.viewmats
        idx = select_queries([s.defect for s in mc.test], args.max_queries, seed=0)
        cams = model.retriever.cameras
        bg = torch.tensor(model.pose_config.background)
        rec = {k: [] for k in ("query", "render", "alpha", "mask", "label", "rot", "seconds")}
        defects = []
        for i in idx:
            s = mc.test[i]
            q = prepare_query(s.image, model.height, model.width)
            t0 = time.perf_counter()
            if args.pose == "gt":  # the true pose: a quick proxy (no pose error) while runs train
                vm = gt[i].float()
            else:
                vm = estimate_pose(q, model.splats, model.retriever, model.pose_config).viewmat.float()
            rec["seconds"].append(time.perf_counter() - t0)
            cam = Cameras(vm[None], cams.Ks[:1].float(), cams.width, cams.height)
            with torch.no_grad():
                img, alpha, _ = render_splats(
                    model.splats, cam, background=bg, backend=model.pose_config.backend,
                    eps2d=model.pose_config.eps2d,
                )
            rec["query"].append(q.numpy())
            rec["render"].append(img[0].clamp(0, 1).numpy())
            rec["alpha"].append(alpha[0].numpy())
            rec["mask"].append(s.mask.numpy())
            rec["label"].append(s.label)
            rec["rot"].append(float(pose_error(vm.double(), gt[i].double())[0]))
            defects.append(s.defect)
        arrays = {k: np.asarray(v) for k, v in rec.items()}
        # Held-out good training views (never trained on), rendered at their known poses: defect-free pairs
        # that variants fitting something to good data (a per-class statistic) may use; test queries never.
        ho = {"ho_query": [], "ho_render": [], "ho_alpha": []}
        for i in holdout_indices(len(mc.train.images)):
            vm = mc.train.cameras.viewmats[i : i + 1].float()
            cam = Cameras(vm, cams.Ks[:1].float(), cams.width, cams.height)
            with torch.no_grad():
                img, alpha, _ = render_splats(
                    model.splats, cam, background=bg, backend=model.pose_config.backend,
                    eps2d=model.pose_config.eps2d,
                )
            ho["ho_query"].append(prepare_query(mc.train.images[i], model.height, model.width).numpy())
            ho["ho_render"].append(img[0].clamp(0, 1).numpy())
            ho["ho_alpha"].append(alpha[0].numpy())
        arrays.update({k: np.asarray(v) for k, v in ho.items()})
        np.savez_compressed(dest, defects=np.array(defects), indices=np.array(idx), **arrays)
        logging.info(
            "%s: %d queries, median rotation error %.2f°, %.2f s/query", class_dir.name, len(idx),
            float(np.median(arrays["rot"])), float(np.mean(arrays["seconds"])),
        )


def load_cache(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted(Path(folder).glob("*.npz")):
        with np.load(f) as z:
            out[f.stem] = {k: z[k] for k in z.files}
    if not out:
        raise SystemExit(f"--cache {folder}: no CLASS.npz files")
    return out


def parse_variants(specs: list[str]) -> dict[str, dict]:
    """``NAME:{json}`` command-line variants as {name: settings}."""
    variants = {}
    for spec in specs:
        name, _, kv = spec.partition(":")
        try:
            variants[name] = json.loads(kv) if kv else {}
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--variant {spec!r}: not NAME:JSON ({exc})") from None
    return variants


def defect_aurocs(scores: np.ndarray, labels: np.ndarray, defects: np.ndarray) -> dict[str, float]:
    """Image AUROC of each defect type's images against all good images, in %."""
    from splatlab.metrics import image_auroc

    good = ~np.asarray(labels).astype(bool)
    out = {}
    for d in sorted(set(np.asarray(defects)[~good].tolist())):
        sel = good | (defects == d)
        out[str(d)] = 100 * image_auroc(scores[sel], labels[sel])
    return out


# study-only knobs beside AnomalyConfig's fields, see score_class
EXTRAS = ("score", "rgb", "hl", "norm", "maha", "diag", "edge")


def _unit_features(q, r, cfg):
    """Unit-length features of query and reference (aligned beforehand), as the cosine map compares them."""
    import torch.nn.functional as F

    from splatlab.anomaly import _blur_images, resize_images
    from splatlab.features import get_extractor

    S = cfg.size
    q, r = resize_images(q, S).clamp(0, 1), resize_images(r, S).clamp(0, 1)
    if cfg.presmooth:
        q, r = _blur_images(q, cfg.presmooth), _blur_images(r, cfg.presmooth)
    ext = get_extractor(cfg.stages, None)
    with torch.no_grad():
        f = ext(torch.cat([q, r]))[0]
    B = q.shape[0]
    return F.normalize(f[:B], dim=1), F.normalize(f[B:], dim=1)


def fit_whitening(c, cfg, lam: float, diag: bool):
    """W with ||W d||² the residual's Mahalanobis length, from held-out good pairs' object cells."""
    import torch.nn.functional as F

    from splatlab.appearance import align_render

    q = torch.from_numpy(c["ho_query"]).float()
    r = torch.from_numpy(c["ho_render"]).float()
    a = torch.from_numpy(c["ho_alpha"]).float()
    r = align_render(r, a, q, cfg.appearance, torch.ones(3)).clamp(0, 1)
    nq, nr = _unit_features(q, r, cfg)
    d = (nq - nr).permute(0, 2, 3, 1)  # [B, h, w, C]
    obj = F.interpolate(a.permute(0, 3, 1, 2), size=d.shape[1:3], mode="bilinear")[:, 0] > 0.05
    d = d[obj].double()  # [M, C]
    C = d.shape[1]
    cov = d.T @ d / len(d)
    if diag:
        cov = torch.diag(torch.diag(cov))
    cov = (1 - lam) * cov + lam * torch.trace(cov) / C * torch.eye(C, dtype=cov.dtype)
    evals, evecs = torch.linalg.eigh(cov)
    scale = torch.trace(cov) / C  # keeps the cosine map's units: W = I for an isotropic residual
    return (evecs @ torch.diag((scale / evals).sqrt()) @ evecs.T).float()


def whitened_distance(nq, nr, W, shift: int):
    """min over shifts of ||W (n_q − n_r(p + Δ))||² / 2 (the cosine distance when W = I). [B, h, w]"""
    import torch.nn.functional as F

    if shift:
        nr = F.pad(nr, (shift,) * 4, mode="replicate")
    h, w = nq.shape[-2:]
    best = None
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            d = nq - nr[:, :, dy : dy + h, dx : dx + w]
            m = (torch.einsum("dc,bchw->bdhw", W, d) ** 2).sum(1) / 2
            best = m if best is None else torch.minimum(best, m)
    return best


def score_class(c: dict[str, np.ndarray], spec: dict, pixel: bool = False) -> dict:
    """Image (and pixel) AUROC of one cached class under ``spec``: AnomalyConfig fields plus

    - ``score``: "max" (the library's), "topN" (mean of the N largest map pixels at 224²);
    - ``rgb``: weight of an added RGB squared-difference term (after alignment and presmooth);
    - ``hl``: down-weighting of pixels the aligned render or the query draws bright (highlights):
      ``map · (1 − hl · clip((max(lum_q, lum_r) − 0.75) / 0.25, 0, 1))`` before the blur;
    - ``norm``: "none", "med" (score minus the map's median over the object) or "ratio" (score divided by
      the map's mean over the object): a per-query robust normalisation;
    - ``maha``: the cosine residual ``n_q − n_r`` measured by the inverse of its second moment on the
      held-out good pairs, shrunk towards the identity by this weight (``diag``: its diagonal only);
    - ``edge``: the map divided by ``1 + edge · |∇ render| / 0.02``.
    """
    import torch.nn.functional as F

    from splatlab.anomaly import (
        AnomalyConfig,
        _blur_images,
        anomaly_terms,
        gaussian_blur,
        resize_images,
        resize_map,
    )
    from splatlab.appearance import align_render
    from splatlab.metrics import image_auroc, pixel_auroc

    extra = {k: spec[k] for k in EXTRAS if k in spec}
    cfg = AnomalyConfig(**{k: v for k, v in spec.items() if k not in EXTRAS})
    q = torch.from_numpy(c["query"]).float()
    r = torch.from_numpy(c["render"]).float()
    a = torch.from_numpy(c["alpha"]).float()
    r = align_render(r, a, q, cfg.appearance, torch.ones(3)).clamp(0, 1)
    S = cfg.size
    maps = []
    W = fit_whitening(c, cfg, float(extra["maha"]), bool(extra.get("diag"))) if "maha" in extra else None
    for b in range(0, len(q), 16):
        qb, rb = q[b : b + 16], r[b : b + 16]
        if W is not None:
            nq, nr = _unit_features(qb, rb, cfg)
            d = whitened_distance(nq, nr, W, cfg.shift)[:, None]
            total = F.interpolate(d, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        else:
            terms = anomaly_terms(qb, rb, cfg)
            total = sum(terms.values())
        if extra.get("rgb"):
            rgb = anomaly_terms(qb, rb, AnomalyConfig(method="rgb", size=S, presmooth=cfg.presmooth))["rgb"]
            total = total + float(extra["rgb"]) * rgb
        if extra.get("edge"):  # divide by 1 + edge · the render's gradient magnitude (after presmooth)
            rs = resize_images(rb, S)
            if cfg.presmooth:
                rs = _blur_images(rs, cfg.presmooth)
            lum = rs.mean(-1)
            gy = F.pad(lum[:, 2:] - lum[:, :-2], (0, 0, 1, 1)) / 2
            gx = F.pad(lum[:, :, 2:] - lum[:, :, :-2], (1, 1)) / 2
            g = gaussian_blur((gx**2 + gy**2).sqrt(), 2.0)
            total = total / (1 + float(extra["edge"]) * g / 0.02)
        if extra.get("hl"):
            qs, rs = resize_images(qb, S), resize_images(rb, S)
            if cfg.presmooth:
                qs, rs = _blur_images(qs, cfg.presmooth), _blur_images(rs, cfg.presmooth)
            lum = torch.maximum(qs.mean(-1), rs.mean(-1))
            total = total * (1 - float(extra["hl"]) * ((lum - 0.75) / 0.25).clamp(0, 1))
        maps.append(gaussian_blur(total, cfg.blur_sigma))
    m = torch.cat(maps)  # [M, S, S]
    flat = m.flatten(1)
    how = extra.get("score", "max")
    s = flat.amax(1) if how == "max" else flat.topk(int(how[3:]), dim=1).values.mean(1)
    norm = extra.get("norm", "none")
    if norm != "none":
        obj = F.interpolate(a.permute(0, 3, 1, 2), size=(S, S), mode="bilinear")[:, 0].flatten(1) > 0.5
        vals = [f[o] if o.any() else f for f, o in zip(flat, obj, strict=True)]
        if norm == "med":
            s = s - torch.stack([v.median() for v in vals])
        else:
            s = s / torch.stack([v.mean() for v in vals]).clamp_min(1e-6)
    out = {"image_auroc": 100 * image_auroc(s.numpy(), c["label"])}
    if pixel:
        out["pixel_auroc"] = 100 * pixel_auroc(resize_map(m, tuple(q.shape[1:3])).numpy(), c["mask"])
    out.update(defect_aurocs(s.numpy(), c["label"], c["defects"]))
    return out


def score(args) -> None:
    data = load_cache(Path(args.cache))
    variants = {"default": {}, **parse_variants(args.variant or [])}
    result = {}
    for name, spec in variants.items():
        rows = {cls: score_class(c, spec, args.pixel) for cls, c in data.items()}
        mean = float(np.mean([r["image_auroc"] for r in rows.values()]))
        result[name] = {"mean_image_auroc": mean, "classes": rows}
        if args.pixel:
            result[name]["mean_pixel_auroc"] = float(np.mean([r["pixel_auroc"] for r in rows.values()]))
        per = " ".join(f"{k[:6]} {v['image_auroc']:5.1f}" for k, v in rows.items())
        dtypes = sorted({d for r in rows.values() for d in r} - {"image_auroc", "pixel_auroc"})
        dd = " ".join(f"{d[:5]} {np.mean([r[d] for r in rows.values() if d in r]):5.1f}" for d in dtypes)
        pa = f" px {result[name]['mean_pixel_auroc']:5.2f}" if args.pixel else ""
        print(f"{name:24s} {mean:5.1f}{pa} | {per} | {dd}", file=sys.stderr, flush=True)
    print(json.dumps(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="estimate poses once and store query, render and alpha per class")
    c.add_argument("--data", required=True, help="development dataset root (splatlab data make --seed 1)")
    c.add_argument("--out", required=True, help="cache folder (one CLASS.npz per class)")
    c.add_argument("--classes", nargs="*", default=None, help="class folder names (default: all)")
    c.add_argument("--max-queries", type=int, default=None, help="test images per class (default: all)")
    c.add_argument("--runs", default=None, help="run root for trained splats (default: runs/)")
    c.add_argument("--size", type=int, default=128, help="image size the classes are loaded and trained at")
    c.add_argument("--train-preset", default="cpu", help="training preset")
    c.add_argument("--pose-preset", default="cpu", help="pose preset")
    c.add_argument(
        "--pose", default="estimate", choices=("estimate", "gt"),
        help="render at the pipeline's pose estimate, or at the true test pose (a proxy without pose error)",
    )
    s = sub.add_parser("score", help="re-score cached pairs under map settings")
    s.add_argument("--cache", required=True, help="cache folder written by `cache`")
    s.add_argument(
        "--variant",
        action="append",
        help='NAME:{"field": value, ...}: AnomalyConfig fields and score_class extras (repeatable)',
    )
    s.add_argument("--pixel", action="store_true", help="also pixel AUROC (slower)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cache(args) if args.command == "cache" else score(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
