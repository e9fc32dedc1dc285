"""``splatlab detect RUN_DIR IMAGE... --out DIR``: is the object in these photos damaged, and where?

For each image (files, or folders searched recursively): the pose, the anomaly map, the image score and the
calibrated yes/no decision, with the library's defaults (:func:`splatlab.detect.load_detector`). Written to
``--out`` (each file atomically; the input folders are only read):

    <name>_overlay.png    query | reference render | map on the class's calibrated scale | decision
    <name>_map.npy        the anomaly map at the query's size, float32 (``--map-format png16``: 16-bit PNG
                          of the calibrated map, ``round(clip(calibrated / 2, 0, 1) * 65535)``, so 32768 is
                          the threshold and 0 a typical good pixel)
    results.json          per image: score, calibrated score, decision, pose, seconds; and the settings

``<name>`` is the image's path below the folder given (``Burrs/3`` -> ``Burrs_3``), or a file's stem, with
as many parent folders as it takes to tell files of the same name apart (``good/2``, ``Burrs/2`` ->
``good_2``, ``Burrs_2``). A run
without a calibration of the map's method is calibrated first, on its held-out good training views, and
the calibration is saved in the run folder for next time. Every input is read and checked before the
first detection, so a bad file stops the command at once with one line naming it.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

log = logging.getLogger(__name__)


class _Once(logging.Filter):
    """Drops repeats of a message (the query checks log once up front, detection would log again)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True



def find_queries(inputs: list[Path]) -> list[tuple[Path, str]]:
    """``(file, output name)`` of every query: files as given, folders searched recursively (numeric order).

    Raises:
        FileNotFoundError: An input that does not exist, or a folder without any image.
        ValueError: A file that is not an image or ``.npy``, or the same file given twice.
    """
    from splatlab.data.mad import natural_key
    from splatlab.query import QUERY_SUFFIXES

    found: list[tuple[Path, str]] = []
    files_given: list[Path] = []
    for item in inputs:
        item = Path(item).expanduser()
        if item.is_dir():
            files = [p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in QUERY_SUFFIXES
                     and not any(part.startswith(".") for part in p.relative_to(item).parts)]
            if not files:
                raise FileNotFoundError(f"{item}: no images ({', '.join(QUERY_SUFFIXES)}) in this folder")
            files.sort(key=lambda p: [natural_key(part) for part in p.relative_to(item).parts])
            found += [(p, "_".join(p.relative_to(item).with_suffix("").parts)) for p in files]
        elif item.is_file():
            if item.suffix.lower() not in QUERY_SUFFIXES:
                raise ValueError(f"{item}: not an image; give {', '.join(QUERY_SUFFIXES)} files or folders")
            files_given.append(item)
            found.append((item, item.stem))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    # Files of the same name given one by one: name them by as many parent folders as tells them apart.
    parts = {p: p.resolve().with_suffix("").parts for p in files_given}
    for depth in range(2, 1 + max((len(v) for v in parts.values()), default=0)):
        names = [n for _, n in found]
        if len(set(names)) == len(names):
            break
        clash = {n for n in names if names.count(n) > 1}
        found = [(p, "_".join(parts[p][-depth:]) if n in clash and p in parts else n) for p, n in found]
    seen: dict[str, Path] = {}
    for path, name in found:
        if name in seen and seen[name] == path:
            raise ValueError(f"{path}: given twice; give it once")
        if name in seen:
            raise ValueError(f"{path}: would write the same outputs ({name}_*) as {seen[name]}; rename one")
        seen[name] = path
    return found


def _map_png16(path: Path, calibrated: np.ndarray) -> None:
    from PIL import Image

    from splatlab.atomic import open_atomic

    u16 = np.round(np.clip(calibrated / 2.0, 0.0, 1.0) * 65535.0).astype(np.uint16)
    with open_atomic(path) as f:
        Image.fromarray(u16).save(f, format="PNG")


def detect_cli(
    run_dir: tyro.conf.Positional[Path],
    images: tyro.conf.Positional[list[Path]],
    out: Path = Path("detections"),
    data: Path | None = None,
    map_format: Literal["npy", "png16"] = "npy",
    json: bool = False,
    method: str | None = None,
    pose_preset: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> int:
    """Detect anomalies in your own images with a trained run folder.

    Args:
        run_dir: A run folder of `splatlab train` (or the demo's, under runs/).
        images: Image files (.png, .jpg, .npy) or folders of them (searched recursively).
        out: Folder for the overlays, the maps and results.json (created; not inside an input folder).
        data: The run's class folder, if it has moved since training (config.json names it otherwise).
        map_format: npy (float32 map) or png16 (16-bit PNG of the calibrated map).
        json: Print results.json to stdout.
        method: Anomaly map (cosine, splatpose = the paper's recipe, rgb, features, ssim); splatlab's
            default (cosine) when not given.
        pose_preset: Pose preset (cpu, gpu, splatpose = the paper's, fast); by device when not given.
        device: Torch device (default: CPU).
        progress: Show a progress bar over the images.
    """
    once = _Once()
    logging.getLogger("splatlab.query").addFilter(once)
    try:
        return _detect(run_dir, images, out, data, map_format, json, method, pose_preset, device, progress)
    finally:
        logging.getLogger("splatlab.query").removeFilter(once)


def _detect(run_dir, images, out, data, map_format, json, method, pose_preset, device, progress) -> int:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import torch
    from tqdm.auto import tqdm

    from splatlab.anomaly import AnomalyConfig
    from splatlab.atomic import open_atomic, write_json
    from splatlab.detect import detect, load_detector
    from splatlab.pose import pose_config
    from splatlab.query import prepare_query, read_query
    from splatlab.run import run_data
    from splatlab.viz.anomaly_figures import MapScale, plot_detection

    queries = find_queries(images)
    out = Path(out).expanduser()
    for item in images:
        item = Path(item).expanduser().resolve()
        if item.is_dir() and out.resolve().is_relative_to(item):
            raise ValueError(f"--out {out}: inside the input folder {item}; write the results elsewhere")
    anomaly = None if method is None else AnomalyConfig(method=method)
    pose = None if pose_preset is None else pose_config(pose_preset)
    model = load_detector(run_dir, data=data, anomaly=anomaly, pose_config=pose, device=device)
    # Read and check every input before any detection: a bad file fails now, in one line naming it.
    arrays = []
    for path, _ in queries:
        arr = read_query(path)
        prepare_query(arr, model.height, model.width, name=str(path))
        arrays.append(arr)
    if model.anomaly.error_floor is not None:
        model.expected_error_field(progress=progress)  # fitted once on the training views, then read
    if model.calibration is None:
        log.info("%s has no %s calibration yet: calibrating on its held-out good views (saved for next time)",
                 run_dir, model.anomaly.method)
        model.calibrate()
    cal = model.calibration
    scale = MapScale.calibrated(cal)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    todo = list(zip(queries, arrays, strict=True))
    for (path, name), arr in tqdm(todo, desc="detect", disable=not progress):
        t0 = time.perf_counter()
        det = detect(arr, model, name=str(path))
        fig = plot_detection(det, scale, title=str(path))
        with open_atomic(out / f"{name}_overlay.png") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        map_full = det.map_full.numpy().astype(np.float32)
        if map_format == "npy":
            map_file = out / f"{name}_map.npy"
            with open_atomic(map_file) as f:
                np.save(f, map_full)
        else:
            map_file = out / f"{name}_map.png"
            _map_png16(map_file, np.asarray(cal.normalize(map_full)))
        results.append({
            "image": str(path),
            "score": det.score,
            "calibrated_score": det.normalized_score,
            "decision": "defective" if det.decision else "good",
            "viewmat": det.viewmat.tolist(),  # the estimated pose: world -> camera, OpenCV axes
            "retrieved_view": det.retrieved,
            "image_size": list(np.shape(arr)[:2]),
            "seconds": round(time.perf_counter() - t0, 3),
            "stage_seconds": {k: round(v, 4) for k, v in det.times.items()},
            "overlay": str(out / f"{name}_overlay.png"),
            "map": str(map_file),
        })
    summary = {
        "run_dir": str(run_dir),
        "data": run_data(run_dir) if data is None else {"class_dir": str(data)},
        "settings": {
            "anomaly": dataclasses.asdict(model.anomaly),
            "pose": dataclasses.asdict(model.pose_config),
            "calibration": cal.to_dict(),
            "device": str(model.device),
            "torch_threads": torch.get_num_threads(),
            "map_format": map_format,
        },
        "images": results,
    }
    write_json(out / "results.json", summary)
    if json:
        print(jsonlib.dumps(summary, indent=1))
    else:
        width = max(len(r["image"]) for r in results)
        for r in results:
            print(f"{r['image']:<{width}}  score {r['score']:8.4g}  calibrated {r['calibrated_score']:6.2f}  "
                  f"{r['decision']}")
        print(f"wrote {len(results)} overlays, maps and results.json to {out}")
    return 0
