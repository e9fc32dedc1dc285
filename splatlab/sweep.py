"""``splatlab sweep FILE --out DIR``: a grid of classes × settings, each job run once and kept.

A sweep file (YAML or TOML) names a dataset and a grid::

    name: sparse views                 # a title for the report (optional)
    data: {look: clean}                # generated LEGO-MAD (look, size, seed), or a dataset folder
    classes: all                       # or a list of class names
    base: {train_preset: cpu, baselines: false}   # settings shared by every job
    grid: {view_fraction: [1.0, 0.6, 0.3, 0.1]}   # every combination of these lists is a setting

The settings are :class:`splatlab.evaluate.EvalConfig`'s fields (``train_preset``, ``iterations``,
``pose_preset``, ``method``, ``calibration``, ``max_queries``, ...) plus ``view_fraction`` (the share of a
class's training views kept, evenly spread over the rig), ``look`` and ``data_seed`` (the generated data).
Optional top-level keys: ``runs`` (the run cache, default ``runs/``) and ``device`` (``cpu`` or ``cuda``).

A job is one class under one setting: train (cached by run config, :func:`splatlab.run.ensure_trained`;
jobs that share splats wait for one another on a lock file) and evaluate
(:func:`splatlab.evaluate.evaluate_class`). Its result is saved as ``DIR/jobs/<key>.json``, ``key`` the hash
of the job's full configuration (evaluation and training settings, device) and of its class folder's files,
so a rerun skips finished jobs, and an interrupted sweep loses only the jobs in flight. A job that raises is
saved with its error, does not stop the others, and runs again on the next run. The merged report is
``DIR/README.md`` (a table per metric: settings × classes, with means), ``DIR/results.json`` and
``DIR/image_auroc.png`` (:func:`splatlab.report.write_sweep_report`).

The executors (:mod:`splatlab.sweep_exec`) run the same job function, :func:`run_job`: a local process pool
(default) or Ray tasks (``--ray auto`` or ``--ray ADDRESS``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from splatlab.sweep_file import Sweep, eval_fields, load_sweep, parse_sweep, setting_name

log = logging.getLogger(__name__)

__all__ = [
    "Job", "Sweep", "class_fingerprint", "expand", "load_records", "load_sweep", "parse_sweep", "run_job",
    "sweep",
    "sweep_cli", "view_subset",
]

JOBS = "jobs"  # the folder of DIR that holds one JSON per finished or failed job
KEY_VERSION = 1  # bump when a job's numbers change meaning, so old results are not reused


# ----------------------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One class under one setting: what a worker needs, plain data (pickled to processes and Ray tasks)."""

    key: str  # hash of the full configuration and of the class folder's files: the result's file name
    setting: str  # the setting's name in the report, e.g. "view_fraction=0.6"
    class_name: str  # the class folder's name
    class_dir: str  # the folder the job reads (a view subset when view_fraction < 1), absolute
    eval_config: dict  # splatlab.evaluate.EvalConfig fields
    train_config: dict  # the resolved splatlab.train.TrainConfig the job trains (for the key and the record)
    view_fraction: float  # share of the training views kept
    runs_root: str | None  # the run cache; None = the default
    device: str | None  # where to train and evaluate; None = the CPU


def class_fingerprint(class_dir: str | os.PathLike) -> str:
    """SHA-256 of every file of a class folder (relative paths and bytes): its training and test data."""
    class_dir = Path(class_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(class_dir).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def view_subset(class_dir: str | os.PathLike, fraction: float, root: str | os.PathLike) -> Path:
    """A class folder with ``round(fraction · N)`` (at least 2) of its N training views, evenly spread.

    The folder (``root/views<percent>-<data>/<class>``) holds a ``transforms.json`` of the kept frames and
    links to the original files, so the loaders, ``ensure_trained``'s cache and the detector see an
    ordinary class folder. Training holds out every 8th of the kept views, as it does for full classes.
    Made atomically; an existing one is reused.
    """
    from splatlab.atomic import replace_dir

    class_dir = Path(class_dir).resolve()
    meta = json.loads((class_dir / "transforms.json").read_text())
    frames = meta["frames"]
    n = max(2, round(fraction * len(frames)))
    if n >= len(frames):
        return class_dir
    step = (len(frames) - 1) / (n - 1)
    keep = sorted({round(i * step) for i in range(n)})
    tag = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:8]
    out = Path(root) / f"views{round(100 * fraction)}-{tag}" / class_dir.name
    if (out / "transforms.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with replace_dir(out) as tmp:
        for entry in class_dir.iterdir():
            if entry.name not in ("train", "transforms.json"):
                (tmp / entry.name).symlink_to(entry)
        kept = [frames[i] for i in keep]
        for f in kept:
            from splatlab.data.mad import resolve_frame_path

            src = resolve_frame_path(class_dir, f["file_path"])
            rel = src.relative_to(class_dir)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).symlink_to(src)
        (tmp / "transforms.json").write_text(json.dumps(meta | {"frames": kept}, indent=1))
    return out


def _resolved_train_config(setting: Mapping[str, Any], device: str | None) -> dict:
    from splatlab.evaluate import EvalConfig, train_overrides
    from splatlab.train import TrainConfig, default_config

    ec = EvalConfig(**{k: setting[k] for k in eval_fields()})
    base = default_config(device) if ec.train_preset is None else TrainConfig.preset(ec.train_preset)
    config = dataclasses.replace(base, resolution=ec.size, **train_overrides(ec, device))
    how = ("checkpoint_every", "log_every", "torch_threads")  # how a run goes, not what it makes
    return {k: v for k, v in config.to_dict().items() if k not in how}


def expand(spec: Sweep, out: str | os.PathLike) -> list[Job]:
    """The sweep's jobs, setting by setting, class by class (so that concurrent jobs train other classes).

    Generates missing datasets and view subsets (``out/views/``) here, once, before any job runs.
    """
    from splatlab.data import default_dataset

    fingerprints: dict[Path, str] = {}
    jobs = []
    for setting in spec.settings:
        if spec.data is not None:
            root = spec.data
        else:
            root = default_dataset(size=setting["size"], seed=setting["data_seed"], look=setting["look"])
        from splatlab.evaluate_cli import select_classes

        try:
            class_dirs = select_classes(root, spec.classes)
        except ValueError as exc:
            raise ValueError(f"{spec.source}: classes: {str(exc).removeprefix('--classes: ')}") from exc
        if not class_dirs:
            raise ValueError(f"{spec.source}: data: no class folders in {root}")
        train_config = _resolved_train_config(setting, spec.device)
        eval_config = {k: setting[k] for k in eval_fields()}
        for class_dir in class_dirs:
            class_dir = class_dir.resolve()
            if class_dir not in fingerprints:
                fingerprints[class_dir] = class_fingerprint(class_dir)
            identity = {
                "version": KEY_VERSION, "class": class_dir.name, "data": fingerprints[class_dir],
                "eval": eval_config, "train": train_config, "view_fraction": setting["view_fraction"],
                "device": spec.device or "cpu",
            }
            key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()[:16]
            job_dir = class_dir
            if setting["view_fraction"] < 1.0:
                job_dir = view_subset(class_dir, setting["view_fraction"], Path(out) / "views")
            jobs.append(Job(
                key=key, setting=setting_name(setting, spec.varying), class_name=class_dir.name,
                class_dir=str(job_dir), eval_config=eval_config, train_config=train_config,
                view_fraction=setting["view_fraction"],
                runs_root=None if spec.runs is None else str(Path(spec.runs).resolve()), device=spec.device,
            ))
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{spec.source}: grid: two settings give the same jobs (a value listed twice?)")
    return jobs


def _lock(path: Path):
    """An exclusive lock file (blocking), so that jobs sharing splats train them once; no-op without fcntl."""
    import contextlib

    try:
        import fcntl
    except ImportError:  # not POSIX: jobs of the same splats may train them twice
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return held()


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def run_job(job: Job) -> dict:
    """Train (cached) and evaluate one job; never raises for the job's own errors: they go in the record.

    Returns:
        The record saved as ``jobs/<key>.json``: ``status`` ("ok" or "failed"), the class's ``metrics``
        (:func:`splatlab.evaluate.evaluate_class`; per method key), per test image its score, label,
        defect and defect area (``images``), ``error`` and ``traceback`` for a failure, and where and how
        it ran (host, seconds, thread counts).
    """
    import socket
    import traceback

    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "key": job.key, "setting": job.setting, "class": job.class_name, "job": dataclasses.asdict(job),
        "host": socket.gethostname(), "pid": os.getpid(),
    }
    try:
        import numba
        import torch

        from splatlab.evaluate import EvalConfig, evaluate_class, train_overrides
        from splatlab.run import default_run_root, ensure_trained

        config = EvalConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job.eval_config.items()})
        runs_root = Path(job.runs_root) if job.runs_root else default_run_root()
        lock_name = hashlib.sha1(json.dumps([job.class_dir, job.train_config]).encode()).hexdigest()[:16]
        t_train = time.perf_counter()
        with _lock(runs_root / ".locks" / f"{lock_name}.lock"):
            run_dir = ensure_trained(job.class_dir, runs_root, config.train_preset, config.size,
                                     device=job.device,
                           progress=False, **train_overrides(config, job.device))
        t_train = time.perf_counter() - t_train  # includes waiting for another job training the same splats
        metrics, runs = evaluate_class(job.class_dir, config, runs_root, progress=False, device=job.device)
        metrics["full"]["train_seconds"] = t_train
        full = runs["full"]
        record |= {
            "status": "ok",
            "metrics": _jsonable(metrics),
            "images": [
                {"defect": d, "label": int(y), "score": float(s), "area": int(m.sum())}
                for d, y, s, m in zip(full.defects, full.labels, full.scores, full.masks, strict=True)
            ],
            "run_dir": str(run_dir),
            "torch_threads": torch.get_num_threads(),
            "numba_threads": numba.config.NUMBA_NUM_THREADS,
        }
    except Exception as exc:  # noqa: BLE001 - one job's failure is recorded and does not stop the sweep
        record |= {
            "status": "failed",
            "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            "traceback": traceback.format_exc(),
        }
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def failed_record(job: Job, error: str) -> dict:
    """The record of a job whose worker died or could not run it (the executors' failures)."""
    return {"key": job.key, "setting": job.setting, "class": job.class_name, "job": dataclasses.asdict(job),
            "status": "failed", "error": error, "traceback": "", "seconds": None}


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------


def read_records(out: str | os.PathLike, jobs: list[Job]) -> dict[str, dict]:
    """The saved records of these jobs, by key (unreadable files count as missing)."""
    records = {}
    for job in jobs:
        path = Path(out) / JOBS / f"{job.key}.json"
        if path.is_file():
            try:
                records[job.key] = json.loads(path.read_text())
            except json.JSONDecodeError:
                log.warning("%s: unreadable; the job runs again", path)
    return records


def load_records(out: str | os.PathLike, status: str | None = "ok") -> list[dict]:
    """The job records of a sweep folder (of the jobs its ``sweep.json`` lists), in job order.

    Args:
        out: A sweep's folder.
        status: Keep only records of this status ("ok", "failed"); None keeps all.
    """
    out = Path(out)
    listing = out / "sweep.json"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: not a sweep folder (run `splatlab sweep FILE --out {out}`)")
    records = []
    for job in json.loads(listing.read_text())["jobs"]:
        path = out / JOBS / f"{job['key']}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            if status is None or rec.get("status") == status:
                records.append(rec)
    return records


def merge(spec: Sweep, jobs: list[Job], records: Mapping[str, dict]) -> dict:
    """The merged results: per setting and class the metrics (and means), failures, missing jobs, timings."""
    import math

    settings = list(dict.fromkeys(j.setting for j in jobs))
    classes = list(dict.fromkeys(j.class_name for j in jobs))
    values = {setting_name(s, spec.varying): {k: s[k] for k in spec.varying} for s in spec.settings}
    metrics: dict[str, dict] = {s: {} for s in settings}
    timings: dict[str, dict] = {s: {} for s in settings}
    failed, missing = [], []
    for job in jobs:
        rec = records.get(job.key)
        if rec is None:
            missing.append({"setting": job.setting, "class": job.class_name, "key": job.key})
            continue
        if rec.get("status") != "ok":
            failed.append({"setting": job.setting, "class": job.class_name, "key": job.key,
                           "error": rec.get("error", "")})
            continue
        full = rec["metrics"]["full"]
        metrics[job.setting][job.class_name] = {
            "image_auroc": full.get("image_auroc"),
            "pixel_auroc": full.get("pixel_auroc"),
            "aupro": full.get("aupro"),
            "pose_auc5": (full.get("pose_auc") or {}).get("5"),
        }
        timings[job.setting][job.class_name] = {
            "job_seconds": rec.get("seconds"), "seconds_per_query": full.get("seconds_per_query"),
            "train_seconds": full.get("train_seconds"), "host": rec.get("host"),
        }

    def mean(xs):
        xs = [x for x in xs if x is not None and not math.isnan(x)]
        return sum(xs) / len(xs) if xs else None

    means = {
        s: {m: mean(row[m] for row in per.values()) for m in ("image_auroc", "pixel_auroc", "aupro",
                                                               "pose_auc5")}
        | {"n_classes": len(per)}
        for s, per in metrics.items()
    }
    return {
        "name": spec.name, "file": spec.source, "varying": list(spec.varying),
        "settings": [{"name": s, "values": values.get(s, {})} for s in settings], "classes": classes,
        "metrics": metrics, "means": means, "failed": failed, "missing": missing, "timings": timings,
        "jobs": {"total": len(jobs), "ok": sum(len(p) for p in metrics.values()), "failed": len(failed),
                 "missing": len(missing)},
    }


def sweep(
    spec: Sweep | str | os.PathLike,
    out: str | os.PathLike,
    ray: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Run a sweep's missing jobs and write the merged report; returns the merged results.

    Args:
        spec: A :class:`Sweep` or the path of a sweep file.
        out: The sweep's folder: ``jobs/`` (one record per job), ``views/`` (view subsets), the report.
        ray: None: the local process pool; ``"auto"``: start or join a local Ray; else a Ray address.
        workers: Jobs at a time in the local pool; None = one per core (one per GPU on CUDA).
        threads: Threads per job (torch and Numba); None = the cores shared among the workers
            (:func:`splatlab.threads.worker_threads`). For Ray, each task's ``num_cpus``.
        progress: Show a progress bar (jobs done, running, failed, time left).

    Returns:
        :func:`merge`'s dict plus ``executed`` and ``skipped`` (jobs run now, jobs found finished).
        An interrupted sweep (``KeyboardInterrupt``) writes the report of what finished, then re-raises.
    """
    from tqdm.auto import tqdm

    from splatlab.atomic import write_json
    from splatlab.report import write_sweep_report
    from splatlab.sweep_exec import local_results, ray_results
    from splatlab.threads import usable_cores, worker_threads

    if not isinstance(spec, Sweep):
        spec = load_sweep(spec)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    (out / JOBS).mkdir(parents=True, exist_ok=True)
    jobs = expand(spec, out)
    records = read_records(out, jobs)
    todo = [j for j in jobs if records.get(j.key, {}).get("status") != "ok"]
    log.info("%s: %d jobs, %d finished before, %d to run", spec.name, len(jobs), len(jobs) - len(todo),
             len(todo))
    write_json(out / "sweep.json", {"file": spec.source, "sweep": spec.raw,
                                    "jobs": [dataclasses.asdict(j) for j in jobs]}, default=str)
    gpus = _gpu_count(spec.device)
    if workers is None:
        workers = gpus or usable_cores()
    workers = max(1, min(workers, len(todo) or 1))
    threads = threads or worker_threads(workers)
    if not todo:
        merged = merge(spec, jobs, records) | {"executed": 0, "skipped": len(jobs)}
        write_sweep_report(out, merged)
        return merged
    executed, failed = 0, 0
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="job", disable=not progress)
    if ray is None:
        results = local_results(todo, workers, threads, gpus)
    else:
        results = ray_results(todo, ray, threads, use_gpu=bool(gpus) or _is_cuda(spec.device))
    try:
        for job, record in results:
            write_json(out / JOBS / f"{job.key}.json", record)
            records[job.key] = record
            executed += 1
            if record["status"] != "ok":
                failed += 1
                log.warning("%s / %s failed: %s", job.setting, job.class_name, record["error"])
            bar.update(1)
            bar.set_postfix(running=results.running, failed=failed)
    except KeyboardInterrupt:
        log.warning("interrupted: %d jobs finished now, those in flight are lost; rerun to resume", executed)
        write_sweep_report(out, merge(spec, jobs, records) | {"executed": executed, "interrupted": True})
        raise
    finally:
        bar.close()
        results.close()
    merged = merge(spec, jobs, records) | {"executed": executed, "skipped": len(jobs) - len(todo)}
    write_sweep_report(out, merged)
    return merged


def _is_cuda(device: str | None) -> bool:
    return device is not None and device.startswith("cuda")


def _gpu_count(device: str | None) -> int:
    if not _is_cuda(device):
        return 0
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"device: {device} asked for, but torch sees no CUDA device")
    return torch.cuda.device_count()


def sweep_cli(
    file: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="FILE")]],
    out: Path,
    ray: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    json: bool = False,
) -> int:
    """Run a sweep file's grid of classes × settings; finished jobs are kept and skipped on a rerun.

    Exit code 0, or 1 when a job failed (its error is in the report), or 2 for a bad sweep file.

    Args:
        file: The sweep file (YAML or TOML): data, classes, base settings, grid.
        out: The sweep's folder: one result per job (jobs/), the merged report (README.md, results.json,
            image_auroc.png).
        ray: Run the jobs as Ray tasks: "auto" starts or joins a local Ray, else a cluster address
            (ray://host:10001 or host:6379). Needs `pip install -e ".[ray]"`. Default: a local process pool.
        workers: Jobs at a time in the local pool; default: one per core (one per GPU with device: cuda).
        threads: Threads per job; default: the cores shared among the workers (Ray: each task's num_cpus).
        progress: Show a progress bar.
        json: Print the merged results as one JSON line at the end.
    """
    import json as jsonlib

    merged = sweep(Path(file), out, ray=ray, workers=workers, threads=threads, progress=progress)
    print((Path(out) / "README.md").read_text())
    jobs = merged["jobs"]
    print(f"{jobs['ok']} of {jobs['total']} jobs finished ({merged['executed']} now), "
          f"{jobs['failed']} failed; "
          f"report: {Path(out) / 'README.md'}")
    if json:
        print(jsonlib.dumps(merged))
    return 0 if not jobs["failed"] else 1
