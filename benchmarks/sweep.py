"""Benchmark of the sweep executors: one 6-class evaluation serial, in the local pool, and on a local Ray.

    python benchmarks/sweep.py --json                 # every class, 8 test images each
    python benchmarks/sweep.py --workers 1 2 3        # the pool at 1, 2 and 3 processes

The same jobs (:func:`splatlab.sweep.run_job`, one per class) are run, in one process, one after another:

- ``serial``: in this process, one job at a time, with the library's thread choice (Numba on every core),
  as ``splatlab evaluate`` runs the classes;
- ``pool-N``: the local process pool with N workers, each capped at its share of the cores;
- ``ray``: a local Ray started here (``ray.init(num_cpus=cores)``, first, its start-up time reported but
  not counted), one task per job with ``num_cpus`` = the share of the cores of ``pool-<cores>`` (skipped
  without Ray). ``--ray-nice``: run the script at normal priority; Ray's daemons start at it, then the
  script and Ray's workers drop to nice 19 for everything timed.

The splats are trained first, untimed, so every executor evaluates the same cached runs. Per executor:
wall seconds, the seconds spent inside the jobs (summed), the speedup over ``serial``, and the overhead
per job: the worker time not spent inside a job (process start, imports, Numba's cached kernels loaded,
scheduling), ``(wall × slots − Σ job seconds) / jobs``. Whether the executors gave the same image AUROCs
is reported too (``serial`` uses more threads per job, so its floating-point sums may differ).
``--executors ray`` times one executor alone. Timings
depend on the machine's load (recorded); the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _summary(name: str, wall: float, slots: int, records: list[dict]) -> dict:
    inside = sum(r["seconds"] or 0.0 for r in records)
    return {
        "executor": name,
        "wall_seconds": round(wall, 1),
        "job_seconds_sum": round(inside, 1),
        "slots": slots,
        "overhead_per_job_seconds": round((wall * slots - inside) / len(records), 2),
        "failed": sum(r["status"] != "ok" for r in records),
        "image_auroc": {
            r["class"]: r["metrics"]["full"]["image_auroc"] for r in records if r["status"] == "ok"
        },
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _nice19() -> None:
    os.nice(19 - os.nice(0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.add_argument("--classes", nargs="*", default=None, help="class names (default: all six)")
    p.add_argument("--max-queries", type=int, default=8, help="test images per class")
    p.add_argument("--train-preset", default="cpu", help="training preset of the splats (trained first)")
    p.add_argument("--pose-preset", default="cpu", help="pose preset")
    p.add_argument("--workers", type=int, nargs="*", default=None, help="pool sizes (default: cores)")
    p.add_argument("--executors", nargs="*", default=["serial", "pool", "ray"],
                   choices=["serial", "pool", "ray"], help="which executors to time (default: all three)")
    p.add_argument("--ray-nice", action="store_true",
                   help="start Ray's daemons at this process's priority, then run everything at nice 19 "
                   "(on a crowded machine a raylet at nice 19 misses Ray's 30 s start-up deadline)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from splatlab.data import default_dataset
    from splatlab.sweep import expand, parse_sweep, run_job
    from splatlab.sweep_exec import LocalPool, RayTasks
    from splatlab.threads import usable_cores, worker_threads

    cores = usable_cores()
    root = default_dataset()
    spec = parse_sweep({
        "name": "executors", "data": str(root), "classes": args.classes or "all",
        "base": {"train_preset": args.train_preset, "pose_preset": args.pose_preset,
                 "max_queries": args.max_queries, "baselines": False, "compare_methods": [],
                 "calibration": "none"},
    }, "benchmarks/sweep.py")
    ray, t_init = None, None
    if "ray" in args.executors:
        try:
            import ray
        except ImportError:
            print("Ray is not installed: no ray executor", file=sys.stderr)
    if ray is not None:  # started first, so that --ray-nice can start its daemons before renicing
        t0 = time.perf_counter()
        for attempt in range(3):  # Ray waits 30 s for its raylet: too short on a crowded machine
            try:
                # --ray-nice: the daemons at this process's priority, the workers (jobs) at nice 19
                hook = {"worker_process_setup_hook": _nice19} if args.ray_nice else None
                ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, runtime_env=hook)
                break
            except Exception as exc:  # noqa: BLE001 - reported, then tried again
                print(f"ray.init failed ({exc}); attempt {attempt + 1} of 3", file=sys.stderr)
                ray.shutdown()
        else:
            raise SystemExit("ray.init failed 3 times")
        t_init = time.perf_counter() - t0
    if args.ray_nice:
        _nice19()  # everything timed below runs at nice 19
    with tempfile.TemporaryDirectory() as tmp:
        jobs = expand(spec, tmp)
        t0 = time.perf_counter()
        from splatlab.evaluate import EvalConfig, train_overrides
        from splatlab.run import ensure_trained

        for job in jobs:  # untimed: every executor evaluates the same cached splats
            ec = EvalConfig(**job.eval_config)
            ensure_trained(job.class_dir, None, ec.train_preset, ec.size, progress=False,
                           **train_overrides(ec))
        train_seconds = time.perf_counter() - t0
        results = []
        if "serial" in args.executors:
            t0 = time.perf_counter()
            records = [run_job(job) for job in jobs]
            results.append(_summary("serial", time.perf_counter() - t0, 1, records))
            print(json.dumps(results[-1]), flush=True)
        for workers in (args.workers or [cores]) if "pool" in args.executors else []:
            t0 = time.perf_counter()
            pool = LocalPool(jobs, workers, worker_threads(workers, cores))
            records = [rec for _, rec in pool]
            pool.close()
            wall = time.perf_counter() - t0
            results.append(_summary(f"pool-{workers}", wall, min(workers, len(jobs)), records))
            print(json.dumps(results[-1]), flush=True)
        if ray is not None:
            threads = worker_threads(cores, cores)
            t0 = time.perf_counter()
            tasks = RayTasks(jobs, "auto", threads)
            records = [rec for _, rec in tasks]
            tasks.close()
            ray.shutdown()
            results.append(_summary("ray", time.perf_counter() - t0, cores // threads, records)
                           | {"ray_init_seconds_untimed": round(t_init, 1)})
            print(json.dumps(results[-1]), flush=True)
    serial = results[0]["wall_seconds"] if results[0]["executor"] == "serial" else None
    for r in results:
        r["speedup"] = round(serial / r["wall_seconds"], 2) if serial else None
        r["same_auroc_as_first"] = r["image_auroc"] == results[0]["image_auroc"]
    pool_aurocs = [r["image_auroc"] for r in results if r["executor"] != "serial"]
    out = {
        "executors": results,
        "pool_and_ray_identical": all(a == pool_aurocs[0] for a in pool_aurocs),
        "jobs": len(jobs),
        "cores": cores,
        "train_seconds_untimed": round(train_seconds, 1),
        "settings": {"max_queries": args.max_queries, "train_preset": args.train_preset,
                     "pose_preset": args.pose_preset},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for r in results:
        print(f"{r['executor']:<8} wall {r['wall_seconds']:7.1f} s  speedup {r['speedup']}  "
              f"overhead/job {r['overhead_per_job_seconds']:5.1f} s  failed {r['failed']}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
