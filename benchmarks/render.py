"""Benchmark of the CPU renderer (Numba kernel) against the PyTorch reference.

    python benchmarks/render.py            # a readable table
    python benchmarks/render.py --json     # the same, plus one JSON object as the last line of stdout

Scene: an object-like cloud of N Gaussians in a unit sphere (70 % in a shell near the surface, 30 % inside),
seen from 3.5 units away with a focal length chosen so that the sphere covers about 40 % of the image area.
Scales are log-uniform in 0.5–2 % of the object size (diameter 2) with anisotropy, opacities uniform in
0.3–0.95, colours are SH degree 0, background white, random unit quaternions — like a trained model.

Timing: the whole ``render()`` call (projection, SH evaluation, binning, compositing) and, for fwd+bwd, an
L1 loss's backward to means, quats, scales, opacities, SH coefficients and the viewmat (so the projection's
backward is included). Medians over repetitions after warm-up (``fwd_ms``, ``fwdbwd_ms``); the minimum is
reported too (``*_min_ms``), being less sensitive to other processes. On a shared 2-core machine other load
changes the numbers a lot: the JSON records the load average before and after.

Threading layers: Numba picks its layer once per process, so the cpu backend's cases run once per layer
(``--layers``, default tbb, omp and workqueue) in a child process with ``NUMBA_THREADING_LAYER`` set, side
by side in one run: the layers take turns for ``--rounds`` rounds (medians of the rounds' medians), with
torch's threads as the library chooses them (:func:`splatlab.threads.thread_counts`). Each child also
times torch's own SSIM forward+backward (256²) after Numba's threads have started, with one and with all
threads, since a second OpenMP runtime (Numba's ``omp``) can slow torch's, and 10-step runs of
:func:`splatlab.pose.refine` (L1 + SSIM, 5000 Gaussians, 128²: the pipeline's mix of torch and Numba).
``layers`` holds each layer's rows, ``fastest_layer_fwdbwd`` the winner per case, and ``cases`` the rows
of the layer the library picks (``library_layer``: the first of :data:`splatlab.threads.LAYER_ORDER` that
loads) beside the torch reference, which runs in the parent with torch's default thread count.

How cost grows (``growth``, skipped with ``--no-growth``): fwd+bwd time and extra memory of the cpu backend
for 5k to 200k Gaussians at 256², and for 128² to 800² at 20k Gaussians (the object covering the same share
of every image, so each Gaussian covers more pixels in a bigger one), with the library's threading layer and
threads. ``exponents`` are least-squares slopes of log(cost) against log(N) and log(pixels): cost ∝ N^a and
∝ pixels^b. ``--plot`` writes the log-log figure (PNG) the README shows.

Memory (``peak_mb``): for each case a fresh subprocess warms up on a small scene, notes its resident set
size (VmRSS), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs one forward+backward at
the case size and reports peak minus start (VmHWM - VmRSS). Resident memory counts torch's and Numba's
allocations alike; tracemalloc would miss both, and ``ru_maxrss`` is inherited from the parent across exec.
It is the extra memory one fwd+bwd needs on top of the loaded library and the scene's parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

# torch's OpenMP threads spin-wait after every parallel region; next to Numba's threads on a 2-core machine
# that made fwd+bwd 2-5x slower (20000/256: ~250-530 ms instead of ~60 ms). Let them sleep instead. This
# must be set before torch loads OpenMP; the setting is recorded in the JSON output.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CASES = [(5000, 128), (20000, 256), (50000, 400)]
TORCH_MAX_N = 20000  # the reference skips the largest case (minutes per iteration)
# How cost grows: Gaussian counts at a fixed image size, and image sizes at a fixed count (cpu backend).
GROWTH_N, GROWTH_N_RES = (5000, 10000, 20000, 50000, 100000, 200000), 256
GROWTH_RES, GROWTH_RES_N = (128, 256, 400, 800), 20000


def make_scene(n: int, res: int, seed: int = 0):
    """Activated Gaussian parameters of an object-like scene and one camera looking at it."""
    g = torch.Generator().manual_seed(seed)
    n_shell = int(0.7 * n)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    r = torch.empty(n)
    r[:n_shell] = 0.92 + 0.08 * torch.rand(n_shell, generator=g)
    r[n_shell:] = 0.92 * torch.rand(n - n_shell, generator=g) ** (1.0 / 3.0)
    means = dirs * r[:, None]
    size = 2.0  # object diameter
    log_s = math.log(0.005 * size) + (math.log(0.02 * size) - math.log(0.005 * size)) * torch.rand(
        n, 1, generator=g
    )
    scales = torch.exp(log_s + 0.3 * torch.randn(n, 3, generator=g))
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = 0.3 + 0.65 * torch.rand(n, generator=g)
    sh0 = (torch.rand(n, 1, 3, generator=g) - 0.5) / 0.28209479177387814
    dist = 3.5
    rho = res * math.sqrt(0.4 / math.pi)  # projected radius covering 40 % of the image area
    focal = rho / math.tan(math.asin(1.0 / dist))
    eye = torch.tensor([dist * 0.6, -dist * 0.64, dist * 0.48])
    eye = eye / eye.norm() * dist
    viewmats = _look_at(eye)[None]
    Ks = torch.tensor([[focal, 0.0, res / 2], [0.0, focal, res / 2], [0.0, 0.0, 1.0]])[None]
    return dict(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=sh0,
        viewmats=viewmats,
        Ks=Ks,
        width=res,
        height=res,
    )


def _look_at(eye: torch.Tensor) -> torch.Tensor:
    """OpenCV world->camera matrix of a camera at ``eye`` looking at the origin, z up."""
    f = -eye / eye.norm()
    right = torch.nn.functional.normalize(torch.linalg.cross(f, torch.tensor([0.0, 0.0, 1.0])), dim=0)
    down = torch.linalg.cross(f, right)
    R = torch.stack([right, down, f])
    V = torch.eye(4)
    V[:3, :3] = R
    V[:3, 3] = -R @ eye
    return V


def _render_fn(backend: str):
    """render() through the dispatcher when it exists, else the backend's two functions directly."""
    try:
        from splatlab.render import render

        def fn(s, bg):
            return render(
                s["means"],
                s["quats"],
                s["scales"],
                s["opacities"],
                s["colors"],
                s["viewmats"],
                s["Ks"],
                s["width"],
                s["height"],
                sh_degree=0,
                background=bg,
                backend=backend,
            )[:2]

        return fn
    except ImportError:  # pragma: no cover - before the dispatcher existed
        if backend == "cpu":
            from splatlab.render.cpu import project_cpu as project
            from splatlab.render.cpu import rasterize_cpu as rasterize
        else:
            from splatlab.render.reference import project_torch as project
            from splatlab.render.reference import rasterize_torch as rasterize

        def fn(s, bg):
            C = s["viewmats"].shape[0]
            q = torch.nn.functional.normalize(s["quats"], dim=-1)
            radii, m2, d, con = project(
                s["means"], q, s["scales"], s["opacities"], s["viewmats"], s["Ks"], s["width"], s["height"]
            )
            colors = (0.28209479177387814 * s["colors"][:, 0] + 0.5).clamp_min(0)[None].expand(C, -1, -1)
            return rasterize(
                m2,
                con,
                colors.contiguous(),
                s["opacities"][None].expand(C, -1).contiguous(),
                radii,
                d,
                s["width"],
                s["height"],
                bg[None].expand(C, -1),
            )

        return fn


def _leaves(scene):
    s = dict(scene)
    for k in ("means", "quats", "scales", "opacities", "colors", "viewmats"):
        s[k] = scene[k].clone().requires_grad_(True)
    return s


def _step(fn, scene, target, bg, backward: bool):
    s = _leaves(scene)
    img, alpha = fn(s, bg)
    if backward:
        loss = (img - target).abs().mean()
        loss.backward()


def time_case(backend: str, n: int, res: int, reps: int, warmup: int):
    scene = make_scene(n, res)
    fn = _render_fn(backend)
    bg = torch.ones(3)
    target = torch.full((1, res, res, 3), 0.5)
    out = {}
    for name, backward in (("fwd_ms", False), ("fwdbwd_ms", True)):
        for _ in range(warmup):
            _step(fn, scene, target, bg, backward)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _step(fn, scene, target, bg, backward)
            ts.append(1000.0 * (time.perf_counter() - t0))
        out[name] = round(statistics.median(ts), 2)
        out[name.replace("_ms", "_min_ms")] = round(min(ts), 2)  # extra: less sensitive to other load
    return out


def layer_child(reps: int) -> None:
    """Run in a fresh process (Numba picks its threading layer once per process): the cpu backend's
    cases under the layer named by ``NUMBA_THREADING_LAYER``, with the library's thread counts, plus
    torch's own SSIM forward+backward after Numba's threads have started; printed as JSON."""
    import numba

    from splatlab.losses import ssim
    from splatlab.threads import threads_for

    cases = []
    for n, res in CASES:
        with threads_for(res * res):
            cases.append({"n": n, "res": res, "backend": "cpu", **time_case("cpu", n, res, reps, 3)})
    a = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    b = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(1))
    probe = {}
    for name, threads in (("torch_ssim_1_ms", 1), ("torch_ssim_all_ms", numba.config.NUMBA_NUM_THREADS)):
        torch.set_num_threads(threads)
        ts = []
        for i in range(3 + reps):
            t0 = time.perf_counter()
            ssim(a, b).backward()
            if i >= 3:
                ts.append(1000.0 * (time.perf_counter() - t0))
        probe[name] = round(statistics.median(ts), 2)
    # the pipeline's mix of torch and Numba work: pose refinement steps (L1 + SSIM) on the 5000/128² scene
    from threads import refine_call

    call, steps = refine_call(128, 5000, 10, 0.2), 10
    call()  # warm-up
    ts = []
    for _ in range(max(3, reps // 3)):
        t0 = time.perf_counter()
        call()
        ts.append(1000.0 * (time.perf_counter() - t0) / steps)
    probe["refine_128_ms_per_step"] = round(statistics.median(ts), 2)
    print(json.dumps({"layer": numba.threading_layer(), "cases": cases, **probe}))


def measure_layer(layer: str, reps: int) -> dict | None:
    """The cpu cases under one Numba threading layer, in its own process; None if it cannot load."""
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    cmd = [sys.executable, os.path.abspath(__file__), "--layer-child", "--reps", str(reps)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        print(f"threading layer {layer}: not available ({last})", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge_rounds(results: list[dict]) -> dict:
    """One layer's rounds in one: medians of the rounds' medians, minima of their minima."""
    out = {"layer": results[0]["layer"], "rounds": len(results), "cases": []}
    for i, case in enumerate(results[0]["cases"]):
        row = {k: case[k] for k in ("n", "res", "backend")}
        for k in ("fwd_ms", "fwdbwd_ms"):
            row[k] = round(statistics.median(r["cases"][i][k] for r in results), 2)
            k_min = k.replace("_ms", "_min_ms")
            row[k_min] = min(r["cases"][i][k_min] for r in results)
        out["cases"].append(row)
    for k in ("torch_ssim_1_ms", "torch_ssim_all_ms", "refine_128_ms_per_step"):
        out[k] = round(statistics.median(r[k] for r in results), 2)
    return out


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{key} not in /proc/self/status")


def _n_compiled() -> int:
    """How many compiled (or cache-loaded) specialisations the CPU backend's kernels hold."""
    import numba

    from splatlab.render import cpu

    return sum(
        len(v.overloads) for v in vars(cpu).values() if isinstance(v, numba.core.dispatcher.Dispatcher)
    )


def mem_child(backend: str, n: int, res: int) -> None:
    """Run in a fresh process: extra peak RSS (MB) of one fwd+bwd at this size, printed as JSON."""
    fn = _render_fn(backend)
    bg = torch.ones(3)
    small = make_scene(256, 64)
    if backend == "cpu":  # load/compile the kernels first, both the serial and the parallel variants
        from splatlab.render import cpu

        serial_below = cpu._SERIAL_BELOW
        for limit in (0, serial_below):
            cpu._SERIAL_BELOW = limit
            _step(fn, small, torch.full((1, 64, 64, 3), 0.5), bg, True)
        cpu._SERIAL_BELOW = serial_below
    else:
        _step(fn, small, torch.full((1, 64, 64, 3), 0.5), bg, True)
    scene = make_scene(n, res)
    target = torch.full((1, res, res, 3), 0.5)
    compiled = _n_compiled()
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    _step(fn, scene, target, bg, True)
    peak = _status_mb("VmHWM")
    if _n_compiled() != compiled:  # a compilation inside the measured step would count LLVM's memory
        raise RuntimeError("kernels were compiled during the measured step")
    print(json.dumps({"peak_mb": round(max(0.0, peak - base), 1)}))


def measure_peak(backend: str, n: int, res: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--mem-child", backend, str(n), str(res)]
    try:
        res_ = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
        return json.loads(res_.stdout.strip().splitlines()[-1])["peak_mb"]
    except Exception as e:  # report, don't crash the benchmark
        print(f"peak memory measurement failed for {backend} {n}/{res}: {e}", file=sys.stderr)
        return None


def _slope(xs, ys) -> float | None:
    """Least-squares slope of log(ys) against log(xs) (points with a missing or zero y are left out)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx, 2)


def growth(reps: int, mem: bool) -> dict:
    """fwd+bwd time and extra memory of the cpu backend against Gaussian count and image size."""
    from splatlab.threads import threads_for

    def point(n, res):
        with threads_for(res * res):
            timed = time_case("cpu", n, res, reps, 2)
        row = {"n": n, "res": res, "fwdbwd_ms": timed["fwdbwd_ms"], "fwdbwd_min_ms": timed["fwdbwd_min_ms"]}
        row["peak_mb"] = measure_peak("cpu", n, res) if mem else None
        print(f"growth  N={n:>6}  {res}x{res}  fwd+bwd {row['fwdbwd_ms']:>9.2f} ms  peak {row['peak_mb']} MB")
        return row

    by_n = [point(n, GROWTH_N_RES) for n in GROWTH_N]
    by_res = [point(GROWTH_RES_N, r) for r in GROWTH_RES]
    pixels = [r["res"] ** 2 for r in by_res]
    exponents = {
        "time_vs_n": _slope(GROWTH_N, [r["fwdbwd_ms"] for r in by_n]),
        "time_vs_pixels": _slope(pixels, [r["fwdbwd_ms"] for r in by_res]),
        "memory_vs_n": _slope(GROWTH_N, [r["peak_mb"] for r in by_n]),
        "memory_vs_pixels": _slope(pixels, [r["peak_mb"] for r in by_res]),
    }
    print(f"growth exponents (cost ∝ N^a, ∝ pixels^b): {exponents}")
    return {"by_n": by_n, "by_res": by_res, "exponents": exponents}


def plot_growth(g: dict, path: str) -> None:
    """The log-log figure of :func:`growth`: time and memory against N (left) and image size (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splatlab.atomic import open_atomic

    e = g["exponents"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    panels = (
        (axes[0], g["by_n"], "n", f"Gaussians (image {GROWTH_N_RES}²)", "n"),
        (axes[1], g["by_res"], "res", f"image side, px ({GROWTH_RES_N // 1000}k Gaussians)", "pixels"),
    )
    for ax, rows, key, label, var in panels:
        xs = [r[key] for r in rows]
        label_t = f"fwd+bwd ms (∝ {var}^{e['time_vs_' + var]})"
        ax.loglog(xs, [r["fwdbwd_ms"] for r in rows], "o-", label=label_t)
        mems = [(x, r["peak_mb"]) for x, r in zip(xs, rows, strict=True) if r["peak_mb"]]
        if mems:
            ax.loglog(*zip(*mems, strict=True), "s--", label=f"extra MB (∝ {var}^{e['memory_vs_' + var]})")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("cost against Gaussian count", fontsize=10)
    axes[1].set_title("cost against image size", fontsize=10)
    with open_atomic(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions of the cpu backend")
    ap.add_argument("--torch-reps", type=int, default=3, help="timed repetitions of the torch reference")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument(
        "--layers",
        nargs="+",
        default=["tbb", "omp", "workqueue"],
        choices=["tbb", "omp", "workqueue"],
        help="Numba threading layers to measure, each in its own process",
    )
    ap.add_argument("--rounds", type=int, default=3, help="turns of every layer (medians over them)")
    ap.add_argument("--no-growth", action="store_true", help="skip how cost grows with N and image size")
    ap.add_argument("--growth-reps", type=int, default=5, help="timed repetitions per growth point")
    ap.add_argument("--plot", default=None, help="write the growth figure (PNG) here")
    ap.add_argument("--mem-child", nargs=3, metavar=("BACKEND", "N", "RES"), help=argparse.SUPPRESS)
    ap.add_argument("--layer-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        b, n, r = args.mem_child
        mem_child(b, int(n), int(r))
        return
    if args.layer_child:
        layer_child(args.reps)
        return

    import numba

    from splatlab.threads import LAYER_ORDER

    load_before = os.getloadavg()
    layers = {}
    rounds: dict[str, list[dict]] = {x: [] for x in args.layers}
    for _ in range(args.rounds):  # layers take turns, so slow drifts of other load hit them alike
        for layer in args.layers:
            if rounds[layer] is not None:
                got = measure_layer(layer, args.reps)
                rounds[layer] = None if got is None else rounds[layer] + [got]
    layers = {x: None if r is None else merge_rounds(r) for x, r in rounds.items()}
    for layer, res_ in layers.items():
        if res_ is None:
            continue
        for c in res_["cases"]:
            print(
                f"{layer:>9}  N={c['n']:>6}  {c['res']}x{c['res']}  fwd {c['fwd_ms']:>9.2f} ms  "
                f"fwd+bwd {c['fwdbwd_ms']:>9.2f} ms",
                flush=True,
            )
        print(
            f"{layer:>9}  torch SSIM 256² fwd+bwd after Numba started: "
            f"1 thread {res_['torch_ssim_1_ms']} ms, all {res_['torch_ssim_all_ms']} ms; "
            f"pose refinement 128²: {res_['refine_128_ms_per_step']} ms per step",
            flush=True,
        )
    # the library's layer: the first of its order that loads (a layer asked for by name that cannot load
    # makes Numba raise, so the child fails)
    library = next((x for x in LAYER_ORDER if layers.get(x) and layers[x]["layer"] == x), None)
    cases = []
    for n, res in CASES:
        rows = []
        if library is not None:
            rows.append(next(dict(c) for c in layers[library]["cases"] if (c["n"], c["res"]) == (n, res)))
            rows[-1]["layer"] = library
        if not (args.no_torch or n > TORCH_MAX_N):  # torch's own default thread count
            timed = time_case("torch", n, res, args.torch_reps, 1)
            rows.append({"n": n, "res": res, "backend": "torch", **timed})
        for row in rows:
            row["peak_mb"] = None if args.no_mem else measure_peak(row["backend"], n, res)
            print(
                f"{row['backend']:>5}  N={n:>6}  {res}x{res}  fwd {row['fwd_ms']:>9.2f} ms  "
                f"fwd+bwd {row['fwdbwd_ms']:>9.2f} ms  peak {row['peak_mb']} MB",
                flush=True,
            )
        cases += rows
    by = {(c["n"], c["res"], c["backend"]): c for c in cases}
    speedup = None
    if (5000, 128, "torch") in by and (5000, 128, "cpu") in by:
        speedup = round(by[(5000, 128, "torch")]["fwdbwd_ms"] / by[(5000, 128, "cpu")]["fwdbwd_ms"], 1)
        print(f"speedup at 5000/128 (torch / cpu, fwd+bwd): {speedup}x")
    fastest = {}
    for n, res in CASES:
        times = {
            x: next(c["fwdbwd_ms"] for c in r["cases"] if (c["n"], c["res"]) == (n, res))
            for x, r in layers.items()
            if r is not None
        }
        if times:
            fastest[f"{n}/{res}"] = min(times, key=times.get)
    print(f"fastest threading layer (fwd+bwd): {fastest}; the library uses {library}")
    grown = None if args.no_growth else growth(args.growth_reps, not args.no_mem)
    if grown is not None and args.plot:
        plot_growth(grown, args.plot)
    result = {
        "cases": cases,
        "speedup_5000_128": speedup,
        "layers": layers,
        "library_layer": library,
        "fastest_layer_fwdbwd": fastest,
        "growth": grown,
        "threads": numba.config.NUMBA_NUM_THREADS,
        "torch_threads_reference": torch.get_num_threads(),
        "torch_threads_cpu": "splatlab.threads.thread_counts(res * res)",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "peak_mb_method": "VmHWM - VmRSS of a fresh subprocess over one fwd+bwd (warm, clear_refs reset)",
    }
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
