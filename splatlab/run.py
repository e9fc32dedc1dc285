"""The run folder: what training leaves on disk, and everything that reads it back.

A run folder is self-describing: its ``config.json`` holds the training config and the class folder and
image size it was trained from, so a detector (:func:`splatlab.detect.load_detector`), ``splatlab detect``
and ``splatlab view`` need nothing but the folder. Layout::

    splats.ply                      the trained splats (3DGS PLY)
    config.json                     TrainConfig fields, plus "data": {class_dir, class_dir_absolute, size}
    metrics.json                    held-out PSNR/SSIM, seconds, Gaussians
    history.json                    the loss and PSNR of every step
    checkpoint.pt                   what ``train(..., resume=True)`` continues from
    calibration_<method>_<source>_<key>.json   thresholds from held-out good views
                                    (splatlab.anomaly.Calibration), keyed by the map and pose settings
    retrieval_<method>_<hash>.pt    cached descriptors of the training views (splatlab.retrieval)

``data.class_dir`` is relative to the run folder where the two share an ancestor below ``/``, so a project
moved as a whole keeps working; ``class_dir_absolute`` is tried next. Every file is written atomically
(:mod:`splatlab.atomic`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from splatlab.atomic import open_atomic, write_json
from splatlab.train import TrainConfig, TrainHistory, default_config

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG", "SPLATS", "calibration_path", "config_diff", "default_run_root", "ensure_trained",
    "training_fingerprint",
    "find_class_dir", "load_checkpoint", "load_run", "prepare_run_dir", "read_config", "run_data",
    "run_eps2d", "save_checkpoint", "settings_key", "write_outputs",
]

SPLATS, CONFIG, METRICS, HISTORY, CHECKPOINT = (
    "splats.ply", "config.json", "metrics.json", "history.json", "checkpoint.pt",
)
# What a caller passes to point a run at its training data when the recorded folder has moved.
DATA_ARGUMENT = "data= (splatlab detect/view: --data CLASS_DIR)"


# ----------------------------------------------------------------------------------------------------------
# Writing (by splatlab.train)
# ----------------------------------------------------------------------------------------------------------


def prepare_run_dir(out_dir: str | os.PathLike | None) -> Path | None:
    """Create a run folder (its parent must exist); None stays None (train without writing)."""
    if out_dir is None:
        return None
    out = Path(out_dir).expanduser()
    if not out.parent.is_dir():
        raise FileNotFoundError(f"out_dir {out}: its parent folder {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    out.mkdir(exist_ok=True)
    return out


def _data_section(run_dir: Path, class_dir: str | os.PathLike | None, size: int | None) -> dict | None:
    if class_dir is None:
        return None
    absolute = Path(class_dir).expanduser().resolve()
    run_abs = Path(run_dir).resolve()
    common = Path(os.path.commonpath([absolute, run_abs]))
    relative = os.path.relpath(absolute, run_abs) if common != Path(common.anchor) else None
    return {"class_dir": relative or str(absolute), "class_dir_absolute": str(absolute), "size": size}


def write_outputs(out: Path, config: TrainConfig, splats, history: TrainHistory, n_test: int,
                  class_dir: str | os.PathLike | None = None, size: int | None = None) -> None:
    """The finished run's ``splats.ply``, ``config.json`` (with the data it came from), metrics, history."""
    from splatlab.splats import save_ply

    save_ply(splats, out / SPLATS)
    config_json = config.to_dict()
    data = _data_section(out, class_dir, size)
    if data is not None:
        config_json["data"] = data
    write_json(out / CONFIG, config_json)
    metrics = {
        "preset": config.name,
        "psnr": history.eval_psnr[-1] if n_test else None,
        "ssim": history.eval_ssim[-1] if n_test else None,
        "n_eval_views": n_test,
        "seconds": history.seconds[-1] if history.seconds else 0.0,
        "n_gaussians": int(len(splats["means"])),
        "iterations": config.iterations,
        "final_loss": history.loss[-1] if history.loss else None,
        "time_split": history.timings,
    }
    write_json(out / METRICS, metrics)
    write_json(out / HISTORY, history.to_dict())


def save_checkpoint(out: Path, checkpoint: dict) -> None:
    """Write ``checkpoint.pt`` (``checkpoint["config"]`` is the TrainConfig dict it belongs to)."""
    with open_atomic(out / CHECKPOINT) as f:
        torch.save(checkpoint, f)


def load_checkpoint(out: Path, config: TrainConfig) -> dict | None:
    """The checkpoint of ``out`` to resume from, None if there is none; refuses one of another config."""
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to remove
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    diff = config_diff(ckpt["config"], config)
    if diff:
        raise ValueError(f"cannot resume {path}: its config differs in {diff}; use another out_dir")
    return ckpt


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def _config_json(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a run config (a JSON object expected)")
    return d


def read_config(run_dir: str | os.PathLike) -> tuple[TrainConfig, dict | None]:
    """``(TrainConfig, data)`` of a run folder; ``data`` is None in folders written before it was recorded."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {Path(run_dir)} a run folder of `splatlab train`?")
    d = _config_json(Path(run_dir))
    data = d.pop("data", None)
    try:
        return TrainConfig.from_dict(d), data
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a training config ({exc})") from exc


def config_diff(saved: dict | Path, config: TrainConfig) -> list[str]:
    """Fields that change the result and differ between a saved config (dict or JSON file) and ``config``."""
    if isinstance(saved, Path):
        if not saved.is_file():
            return ["config.json missing"]
        try:
            saved = _config_json(saved.parent)
        except ValueError as exc:
            return [f"unreadable config ({exc})"]
    saved = {k: v for k, v in saved.items() if k != "data"}
    try:
        saved = TrainConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError) as exc:
        return [f"unreadable config ({exc})"]
    now = config.to_dict()
    same = ("checkpoint_every", "log_every", "torch_threads")  # how the run goes, not what it makes
    return sorted(k for k in now if k not in same and saved[k] != now[k])


def load_run(run_dir: str | os.PathLike, device=None) -> tuple[torch.nn.ParameterDict, TrainConfig, dict]:
    """Read a finished run folder: ``(splats, config, metrics)``."""
    from splatlab.splats import load_ply

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run folder not found")
    for name in (SPLATS, CONFIG, METRICS):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name}: not a finished training run (missing {name})")
    config, _ = read_config(run)
    try:
        metrics = json.loads((run / METRICS).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{run / METRICS}: not valid JSON ({exc})") from exc
    return load_ply(run / SPLATS, device=device), config, metrics


def run_eps2d(run_dir: str | os.PathLike) -> float:
    """The 2D low-pass (px²) a run folder's splats were trained with: its config.json's, else gsplat's 0.3."""
    if not (Path(run_dir) / CONFIG).is_file():
        return TrainConfig().eps2d
    return read_config(run_dir)[0].eps2d


def run_data(run_dir: str | os.PathLike) -> dict | None:
    """The ``data`` section of a run's config.json (class folder, size), or None if it records none."""
    if not (Path(run_dir) / CONFIG).is_file():
        return None
    return read_config(run_dir)[1]


def find_class_dir(run_dir: str | os.PathLike, data: str | os.PathLike | None = None) -> Path:
    """The class folder a run was trained from: ``data`` when given, else the one its config.json names.

    Raises:
        FileNotFoundError: ``data`` is not a class folder, or the recorded one is not there any more (the
            message names the path it expected and the argument that overrides it), or none is recorded.
    """
    run_dir = Path(run_dir)
    if data is not None:
        data = Path(data).expanduser()
        if not (data / "transforms.json").is_file():
            raise FileNotFoundError(f"{data}: not a class folder (no transforms.json); check --data")
        return data
    section = run_data(run_dir)
    if not section or not section.get("class_dir"):
        raise FileNotFoundError(
            f"{run_dir / CONFIG}: names no training data (written by an older splatlab); pass the class "
            f"folder as {DATA_ARGUMENT}"
        )
    tried = []
    for value in (section.get("class_dir"), section.get("class_dir_absolute")):
        if value:
            path = (run_dir / value) if not Path(value).is_absolute() else Path(value)
            tried.append(os.path.normpath(path))
            if (path / "transforms.json").is_file():
                return Path(os.path.normpath(path))
    raise FileNotFoundError(
        f"{run_dir / CONFIG}: its training data is not at {' or '.join(dict.fromkeys(tried))} (moved?); "
        f"pass the class folder as {DATA_ARGUMENT}"
    )


# PoseConfig fields that do not change a detection's numbers (threads, recording, renderer backend).
_NOT_SETTINGS = ("num_threads", "record_every", "backend")


def settings_key(anomaly, pose_config, mode: str = "full") -> str:
    """A short hash of the settings a calibration depends on: the map, the pose pipeline, the mode and, where
    the map is divided by the expected error, how that field is fitted (its file format)."""
    from splatlab.expected_error import FORMAT

    pose = {k: v for k, v in dataclasses.asdict(pose_config).items() if k not in _NOT_SETTINGS}
    settings = {"anomaly": dataclasses.asdict(anomaly), "pose": pose, "mode": mode}
    if anomaly.error_floor is not None:
        settings["expected_error_format"] = FORMAT
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def calibration_path(run_dir: str | os.PathLike, method: str, source: str, key: str) -> Path:
    """Where a run keeps a calibration: one file per anomaly method, source and :func:`settings_key`."""
    return Path(run_dir) / f"calibration_{method}_{source}_{key}.json"


# ----------------------------------------------------------------------------------------------------------
# Cached runs
# ----------------------------------------------------------------------------------------------------------


def default_run_root() -> Path:
    """Where cached runs live: ``$SPLATLAB_RUNS`` if set, else ``runs/`` beside the package (git-ignored)."""
    env = os.environ.get("SPLATLAB_RUNS")
    if env:
        return Path(env).expanduser()
    import splatlab

    return Path(splatlab.__file__).resolve().parents[1] / "runs"


def training_fingerprint(class_dir: str | os.PathLike) -> str:
    """SHA-256 of a class folder's training data: ``transforms.json`` and every file under ``train/``."""
    class_dir = Path(class_dir)
    digest = hashlib.sha256()
    train = sorted(p for p in (class_dir / "train").rglob("*") if p.is_file())
    for path in [class_dir / "transforms.json", *train]:
        if path.is_file():
            digest.update(str(path.relative_to(class_dir)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_trained(
    class_dir: str | os.PathLike, run_root: str | os.PathLike | None = None, preset: str | None = None,
    size: int | None = 128, *, device=None, progress: bool = True, **overrides: Any,
) -> Path:
    """The run folder of a class, trained first if its ``splats.ply`` is absent (an interrupted run resumes).

    Args:
        class_dir: A MAD-layout class folder, e.g. ``data/lego-mad/01Cat``.
        run_root: Parent of the run folders; :func:`default_run_root` when None.
        preset: Training preset; :func:`splatlab.train.default_config`'s (``fast`` under
            ``SPLATLAB_FAST=1``) when None.
        size: Longer image side to load the views at (None = full resolution); also the training resolution.
        device: Device to train on.
        progress: Show a progress bar.
        **overrides: ``TrainConfig`` fields to replace (they go into the run folder's name).

    Returns:
        ``run_root / "{class}-{preset}-{size}px-{data}[-overrides]"``, ``data`` the first 8 hex digits of
        :func:`training_fingerprint`.
    """
    from splatlab.data.mad import load_train
    from splatlab.train import train

    class_dir = Path(class_dir)
    if not class_dir.is_dir():
        raise FileNotFoundError(f"class_dir {class_dir}: class folder not found")
    config = default_config(device) if preset is None else TrainConfig.preset(preset)
    config = dataclasses.replace(config, resolution=size, **overrides)
    tag = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    root = Path(run_root) if run_root is not None else default_run_root()
    root.mkdir(parents=True, exist_ok=True)
    data = training_fingerprint(class_dir)[:8]  # same class name, other views (another look): another run
    run = root / f"{class_dir.name}-{config.name}-{size or 'full'}px-{data}{tag}"
    resume = True
    if (run / SPLATS).is_file():
        diff = config_diff(run / CONFIG, config)
        if not diff:
            _record_data(run, class_dir, size)
            return run
        log.warning("%s was trained with other settings (%s); training it again", run, ", ".join(diff))
        resume = False
    log.info("training %s with preset %s into %s", class_dir.name, config.name, run)
    train(load_train(class_dir, size), config, out_dir=run, resume=resume, device=device, progress=progress)
    return run


def _record_data(run: Path, class_dir: Path, size: int | None) -> None:
    """Name the training data in a cached run's config.json written before splatlab recorded it."""
    d = _config_json(run)
    if d.get("data"):
        return
    d["data"] = _data_section(run, class_dir, size)
    write_json(run / CONFIG, d)
    log.info("%s: recorded its training data %s in config.json", run, class_dir)
