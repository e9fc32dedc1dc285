"""The one place that chooses Numba's threading layer and the torch / Numba thread counts."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import numba
import pytest
import torch

from splatlab import threads
from splatlab.threads import TORCH_ONE_THREAD_UP_TO, tbb_library, thread_counts, use_threads


def test_small_images_one_torch_thread_numba_every_core():
    cores = numba.config.NUMBA_NUM_THREADS
    assert thread_counts(128 * 128) == (1, cores)
    assert thread_counts(TORCH_ONE_THREAD_UP_TO) == (1, cores)
    assert thread_counts(TORCH_ONE_THREAD_UP_TO + 1) == (cores, cores)


def test_explicit_num_threads_wins():
    cores = numba.config.NUMBA_NUM_THREADS
    assert thread_counts(10**8, num_threads=1) == (1, 1)
    assert thread_counts(16, num_threads=cores + 3) == (cores + 3, cores)  # Numba capped at its maximum
    with pytest.raises(ValueError, match="num_threads"):
        thread_counts(16, num_threads=0)


def test_use_threads_sets_and_restores():
    threads.choose_threading_layer()
    before = (torch.get_num_threads(), numba.get_num_threads())
    with use_threads(1, 1):
        assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
    assert (torch.get_num_threads(), numba.get_num_threads()) == before
    with pytest.raises(RuntimeError), use_threads(1, 1):
        raise RuntimeError("restored on errors too")
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


def test_tbb_library_is_the_wheels_file():
    try:
        importlib.metadata.version("tbb")
    except importlib.metadata.PackageNotFoundError:
        assert tbb_library() is None
        return
    if not sys.platform.startswith("linux"):
        assert tbb_library() is None
        return
    path = tbb_library()
    assert path is not None and os.path.isfile(path) and os.path.basename(path).startswith("libtbb.so.12")


def _layer_in_fresh_process(prelude: str, env_layer: str | None) -> str:
    code = (
        "import sys\n"
        f"{prelude}\n"
        "import numba, torch\n"
        "from splatlab.render import render\n"
        "n = 20000\n"
        "g = torch.Generator().manual_seed(0)\n"
        "V = torch.eye(4)[None].clone()\n"
        "V[0, 2, 3] = 3.0\n"
        "render(torch.randn(n, 3, generator=g) * 0.3, torch.randn(n, 4, generator=g),\n"
        "       torch.full((n, 3), 0.02), torch.full((n,), 0.5), torch.rand(n, 3), V,\n"
        "       torch.tensor([[[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]]), 64, 64, backend='cpu')\n"
        "print(numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if env_layer is not None:
        env["NUMBA_THREADING_LAYER"] = env_layer
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


def test_without_tbb_the_fallback_is_workqueue_not_omp():
    # a process in which Numba's tbb layer cannot load: the next in the library's order is workqueue
    assert threads.LAYER_ORDER[:2] == ("tbb", "workqueue")
    assert _layer_in_fresh_process("sys.modules['numba.np.ufunc.tbbpool'] = None", None) == "workqueue"


def test_a_layer_chosen_by_the_user_is_kept():
    assert _layer_in_fresh_process("", "workqueue") == "workqueue"


def test_workers_share_the_cores_and_the_env_caps_a_new_process():
    import subprocess
    import sys

    from splatlab.threads import thread_env, worker_threads

    assert worker_threads(2, cores=2) == 1 and worker_threads(3, cores=8) == 2
    assert worker_threads(4, cores=2) == 1
    env = dict(__import__("os").environ) | thread_env(1)
    code = "import numba, torch; print(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]
