"""Where one torch thread stops being the faster choice: pose refinement at several image sizes.

    python benchmarks/threads.py            # a readable table
    python benchmarks/threads.py --json     # the same, plus one JSON object as the last line of stdout

The library (:mod:`splatlab.threads`) gives torch one thread up to ``TORCH_ONE_THREAD_UP_TO`` pixels and
every core above, while Numba's renderer always uses every core. This benchmark measures both choices on
the real call, :func:`splatlab.pose.refine` with the ``cpu`` pose preset's step settings, by setting that
limit to -1 (torch on every core) or to infinity (torch on one thread) around the call. Scene: the
render benchmark's object-like cloud of ``--n`` Gaussians filling ~40 % of the image; the query is its
render at the true pose, the start is 3° and a little translation away. Two losses: ``l1`` (the ``cpu``
preset's) and ``l1+ssim`` (SplatPose's 0.8·L1 + 0.2·(1 - SSIM)). The two choices alternate, repetition by
repetition, so slow drifts of other load hit both alike; medians (and minima) of milliseconds per step.
``faster`` names the quicker choice per size; ``crossover_px`` is the smallest size from which every
larger size measured prefers every core (null: one thread won everywhere). The load average and
``OMP_WAIT_POLICY`` (left as the environment has it: the CLI and the test suite set ``PASSIVE``, a Python
session does not) are recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIZES = (64, 128, 256, 400, 512, 640, 800)


def _splats(scene) -> torch.nn.ParameterDict:
    """The benchmark scene in the stored layout (log scales, logit opacities, SH degree 0)."""
    return torch.nn.ParameterDict(
        {
            "means": scene["means"],
            "quats": scene["quats"],
            "scales": scene["scales"].log(),
            "opacities": torch.logit(scene["opacities"]),
            "sh0": scene["colors"],
            "shN": torch.zeros(len(scene["means"]), 0, 3),
        }
    )


def _start_pose(viewmat: torch.Tensor) -> torch.Tensor:
    from splatlab.pose import apply_delta

    delta = torch.tensor([0.02, -0.01, 0.01, math.radians(2.0), math.radians(-2.0), math.radians(1.0)])
    return apply_delta(viewmat, delta, 1.0, 3.5)


def refine_call(res: int, n: int, steps: int, ssim_weight: float):
    """A function running :func:`splatlab.pose.refine` for ``steps`` steps on the benchmark scene."""
    from render import make_scene

    from splatlab.pose import pose_config, refine
    from splatlab.render import render

    scene = make_scene(n, res)
    splats = _splats(scene)
    V, K = scene["viewmats"][0], scene["Ks"][0]
    with torch.no_grad():
        query = render(
            scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"], V[None],
            K[None], res, res, sh_degree=0, background=torch.ones(3), backend="cpu",
        )[0][0]
    config = dataclasses.replace(
        pose_config("cpu"), steps=steps, ssim_weight=ssim_weight, backend="cpu", eps2d=0.3, num_threads=None
    )
    start = _start_pose(V)
    return lambda: refine(query, splats, start, K, config)


def time_size(res: int, n: int, steps: int, reps: int, ssim_weight: float) -> dict:
    from splatlab import threads

    call = refine_call(res, n, steps, ssim_weight)
    choices = {"torch_1": math.inf, "torch_all": -1}
    times: dict[str, list[float]] = {k: [] for k in choices}
    saved = threads.TORCH_ONE_THREAD_UP_TO
    try:
        for rep in range(reps + 1):  # the first round warms up (Numba compilation, caches)
            for name, up_to in choices.items():
                threads.TORCH_ONE_THREAD_UP_TO = up_to
                t0 = time.perf_counter()
                call()
                if rep:
                    times[name].append((time.perf_counter() - t0) / steps)
    finally:
        threads.TORCH_ONE_THREAD_UP_TO = saved
    row = {"res": res, "pixels": res * res, "n": n, "loss": "l1" if ssim_weight == 0 else "l1+ssim"}
    for name, ts in times.items():
        row[f"{name}_ms"] = round(1000 * statistics.median(ts), 2)
        row[f"{name}_min_ms"] = round(1000 * min(ts), 2)
    row["faster"] = "torch_1" if row["torch_1_ms"] <= row["torch_all_ms"] else "torch_all"
    return row


def crossover(rows: list[dict]) -> int | None:
    """Smallest pixel count from which every larger measured size prefers torch on every core."""
    rows = sorted(rows, key=lambda r: r["pixels"])
    for i, r in enumerate(rows):
        if all(s["faster"] == "torch_all" for s in rows[i:]):
            return r["pixels"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="image sizes (square, px)")
    ap.add_argument("--n", type=int, default=20000, help="Gaussians in the scene")
    ap.add_argument("--steps", type=int, default=10, help="refinement steps per timed call")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per choice and size")
    args = ap.parse_args()

    import numba

    from splatlab.threads import TORCH_ONE_THREAD_UP_TO, choose_threading_layer

    choose_threading_layer()
    load_before = os.getloadavg()
    result: dict = {"losses": {}}
    for ssim_weight in (0.0, 0.2):
        rows = []
        for res in args.sizes:
            row = time_size(res, args.n, args.steps, args.reps, ssim_weight)
            rows.append(row)
            print(
                f"{row['loss']:>8}  {res:>4}²  torch 1 thread {row['torch_1_ms']:>8.1f} ms/step  "
                f"torch {numba.config.NUMBA_NUM_THREADS} threads {row['torch_all_ms']:>8.1f} ms/step  "
                f"-> {row['faster']}",
                flush=True,
            )
        result["losses"][rows[0]["loss"]] = {"rows": rows, "crossover_px": crossover(rows)}
    result |= {
        "library_one_torch_thread_up_to_px": TORCH_ONE_THREAD_UP_TO,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": numba.threading_layer(),
        "steps": args.steps,
        "reps": args.reps,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    for loss, r in result["losses"].items():
        print(f"{loss}: torch on every core from {r['crossover_px']} px on")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
