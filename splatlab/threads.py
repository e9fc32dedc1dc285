"""CPU parallelism, decided in one place: Numba's threading layer and the torch / Numba thread counts.

The threading layer
    Numba picks its layer once per process, at its first parallel launch. :func:`choose_threading_layer`
    sets the order :data:`LAYER_ORDER` (``tbb``, then ``workqueue``; OpenMP only if the user asks for it
    with ``NUMBA_THREADING_LAYER``) and first loads the ``tbb`` wheel's ``libtbb.so.12`` by its full path.

    Why the load is needed: pip puts ``libtbb.so.12`` in ``<prefix>/lib``, and Numba's ``tbbpool``
    extension has no RPATH. Numba looks for the library by name (``ctypes.CDLL("libtbb.so.12")``); a
    by-name ``dlopen`` from Python searches the interpreter's own RUNPATH, which for a pyenv or
    self-built CPython is ``<base prefix>/lib`` (where it finds ``libpython``). In that system interpreter
    the wheel's library sits exactly there, so it is found. In a virtual environment ``sys.prefix`` is the
    venv, its ``lib/`` is on no search path, and Numba silently fell back to ``workqueue``. Once a library
    with the soname ``libtbb.so.12`` is loaded, ``tbbpool``'s dependency resolves to it, wherever it came
    from. The path is taken from the installed ``tbb`` distribution's file list, so a venv, a ``--user``
    install, the system interpreter and conda (whose Python has ``$ORIGIN/../lib`` on its RPATH anyway)
    all find the same file.

Thread counts
    :func:`thread_counts` chooses them from the size of the work: Numba (the renderer) always uses every
    core it may (``numba.config.NUMBA_NUM_THREADS``); torch uses one thread for images of up to
    :data:`TORCH_ONE_THREAD_UP_TO` pixels and every core above. ``benchmarks/threads.py`` times pose
    refinement both ways (2 cores, see the README): with ``OMP_WAIT_POLICY`` unset, as in a Python
    session, torch's spinning OpenMP threads took the cores from Numba's and one torch thread was 2-17x
    faster at every size from 64² to 800²; with ``PASSIVE`` the two were close. The library cannot set
    that variable once torch is imported, so one torch thread, up to the largest size measured. An
    explicit ``num_threads`` wins for both. :func:`threads_for` applies the choice for a block and
    restores the previous counts afterwards.

Processes that share the machine
    ``splatlab sweep`` runs several jobs at once. :func:`worker_threads` gives each its share of the cores,
    and :func:`thread_env` the environment that caps a fresh process at it. The cap has to be in place
    before the process imports Numba and torch, which read it once: ``NUMBA_NUM_THREADS`` is then the
    "every core" of :func:`thread_counts` in that process.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import logging
import os
import sys
from collections.abc import Iterator

import numba
import torch

__all__ = [
    "LAYER_ORDER",
    "TORCH_ONE_THREAD_UP_TO",
    "choose_threading_layer",
    "thread_counts",
    "threads_for",
    "tbb_library",
    "thread_env",
    "use_threads",
    "worker_threads",
]

log = logging.getLogger(__name__)

#: Numba's threading layers, most preferred first (Numba needs all three named). ``omp`` is last: see
#: ``benchmarks/render.py --layers`` for the measurement, and :func:`choose_threading_layer`.
LAYER_ORDER = ("tbb", "workqueue", "omp")

#: Up to this many pixels per image torch runs on one thread while Numba uses every core: the largest size
#: ``benchmarks/threads.py`` measured (2 cores; see the module docstring and the README).
TORCH_ONE_THREAD_UP_TO = 800 * 800

_TBB_SONAME = "libtbb.so.12"


def tbb_library() -> str | None:
    """The full path of the ``tbb`` wheel's ``libtbb.so.12``, or None (not installed, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == _TBB_SONAME:
            path = os.path.realpath(f.locate())
            if os.path.isfile(path):
                return path
    return None


@functools.cache
def _preload_tbb() -> str | None:
    """Load the wheel's libtbb once, globally, so that Numba's ``tbbpool`` finds it; returns its path."""
    path = tbb_library()
    if path is None:
        return None
    try:
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    except OSError as exc:  # a broken install: Numba falls back to the next layer
        log.warning("could not load %s (%s); Numba will not use its tbb threading layer", path, exc)
        return None
    return path


def _layer_fixed() -> bool:
    try:
        numba.threading_layer()  # raises ValueError until the first parallel launch
    except ValueError:
        return False
    return True


def choose_threading_layer() -> None:
    """Prefer Numba's ``tbb`` threading layer, then ``workqueue``; OpenMP only if the user chose it.

    Measured on 2 cores (``benchmarks/render.py``, the three side by side; see the README): ``tbb`` is
    the fastest or even with ``omp``, and ``workqueue`` the slowest at 256² and 400². ``workqueue`` still
    comes before ``omp`` as the fallback (used only where no tbb wheel exists): ``omp`` puts a second
    OpenMP runtime next to torch's, which made training slowest in an earlier measurement; torch's SSIM
    alone was not slower with it in ours, and training was not measured again.

    The layer is fixed by Numba's first parallel launch, and ``numba.get_num_threads()`` and
    ``set_num_threads()`` launch it too: call this first (the renderer and :func:`use_threads` do). Set
    ``NUMBA_THREADING_LAYER`` to choose yourself; the tbb library is still loaded when that choice may
    use it. Cheap after the first call.
    """
    if _layer_fixed():
        return
    chosen = os.environ.get("NUMBA_THREADING_LAYER", "").lower()
    if not chosen:
        numba.config.THREADING_LAYER = "default"
        numba.config.THREADING_LAYER_PRIORITY = list(LAYER_ORDER)
    if chosen not in ("omp", "workqueue"):
        _preload_tbb()


def thread_counts(pixels: int, num_threads: int | None = None) -> tuple[int, int]:
    """``(torch, numba)`` thread counts for work on images of ``pixels`` pixels.

    Args:
        pixels: Pixels of one image of the work (H·W).
        num_threads: An explicit count for both, capped at Numba's maximum for Numba; None = chosen here.
    """
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    cores = numba.config.NUMBA_NUM_THREADS  # the usable cores, or the NUMBA_NUM_THREADS variable
    if num_threads is not None:
        return num_threads, min(num_threads, cores)
    return (1 if pixels <= TORCH_ONE_THREAD_UP_TO else cores), cores


@contextlib.contextmanager
def use_threads(torch_threads: int, numba_threads: int) -> Iterator[None]:
    """Run a block with these torch and Numba thread counts and restore the previous ones afterwards."""
    choose_threading_layer()  # numba.get_num_threads() would otherwise fix Numba's default order
    old_torch, old_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        numba.set_num_threads(old_numba)


def threads_for(pixels: int, num_threads: int | None = None) -> contextlib.AbstractContextManager[None]:
    """The thread counts of :func:`thread_counts` for a block (restored afterwards)."""
    return use_threads(*thread_counts(pixels, num_threads))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Threads for each of ``workers`` processes running at once: an equal share of the cores, at least 1."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, (cores or usable_cores()) // workers)


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap a new process at ``threads`` threads (torch, Numba, BLAS).

    ``OMP_WAIT_POLICY=PASSIVE`` as the CLI sets it: torch's idle OpenMP threads do not spin.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    n = str(threads)
    return {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "OMP_WAIT_POLICY": "PASSIVE"}
