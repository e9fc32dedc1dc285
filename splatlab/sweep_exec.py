"""The executors of ``splatlab sweep``: a local process pool or Ray tasks, both running the same job function.

The job function is :func:`splatlab.sweep.run_job`.

Each is an iterator of ``(job, record)`` in the order jobs finish, with ``running`` (jobs in flight now) and
``close()`` (stop: jobs not started are dropped, jobs in flight are killed; a rerun starts them again).

- :class:`LocalPool`: ``workers`` processes (spawned, so nothing of the parent's torch or Numba state is
  inherited), each capped at ``threads`` threads through :func:`splatlab.threads.thread_env`, which must be
  set before torch and Numba are imported; on CUDA each worker gets one GPU (``CUDA_VISIBLE_DEVICES``).
  Workers ignore SIGINT: Ctrl-C reaches the driver, which stops them.
- :class:`RayTasks`: one Ray task per job with ``num_cpus=threads`` (and ``num_gpus=1`` on CUDA; Ray sets
  ``CUDA_VISIBLE_DEVICES``), the same thread caps through the task's ``runtime_env``. Ray is imported only
  here, only when asked for. The workers read the class folders and write the run cache at the paths the
  driver names: on one machine that is automatic; a cluster needs them on a shared filesystem (see the
  README). Results come back to the driver, which writes them.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator

log = logging.getLogger(__name__)

__all__ = ["LocalPool", "RayTasks", "local_results", "ray_results"]


def _init_worker(env: dict[str, str], gpus) -> None:
    """Runs first in each pool worker, before torch or Numba is imported there."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def _run(job):
    from splatlab.sweep import run_job

    return run_job(job)


class LocalPool:
    """The jobs in a local process pool; iterate for ``(job, record)`` as they finish."""

    def __init__(self, jobs: list, workers: int, threads: int, gpus: int = 0) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from splatlab.threads import thread_env

        ctx = mp.get_context("spawn")
        queue = None
        if gpus:
            queue = ctx.Manager().Queue()
            for i in range(gpus):
                queue.put(i)
            workers = min(workers, gpus)
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker,
            initargs=(thread_env(threads), queue),
        )
        self._futures = {self._pool.submit(_run, job): job for job in jobs}
        self._left = len(jobs)

    @property
    def running(self) -> int:
        return min(self.workers, self._left)

    def __iter__(self) -> Iterator[tuple]:
        from concurrent.futures import as_completed

        from splatlab.sweep import failed_record

        for future in as_completed(self._futures):
            job = self._futures[future]
            self._left -= 1
            try:
                record = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory)
                record = failed_record(job, f"{type(exc).__name__}: {exc}")
            yield job, record

    def close(self) -> None:
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:  # jobs in flight: stop them now rather than let them finish unrecorded
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=10)


class RayTasks:
    """The jobs as Ray tasks; iterate for ``(job, record)`` as they finish."""

    def __init__(self, jobs: list, address: str, threads: int, use_gpu: bool = False,
                 runtime_env: dict | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ValueError('--ray: Ray is not installed; pip install -e ".[ray]"') from exc
        from splatlab.threads import thread_env

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            # "auto": join the local Ray of `ray start` if there is one, else start one for this sweep
            ray.init(address=None if address == "auto" else address, log_to_driver=False)
            self._started = True
        runtime_env = dict(runtime_env or {})  # e.g. a working_dir for a cluster; the thread caps are added
        runtime_env["env_vars"] = dict(runtime_env.get("env_vars", {})) | thread_env(threads)
        task = ray.remote(_run).options(
            num_cpus=threads, num_gpus=1 if use_gpu else 0, max_retries=0, runtime_env=runtime_env,
        )
        self._refs = {task.remote(job): job for job in jobs}
        self._threads = threads

    @property
    def running(self) -> int:
        cpus = self._ray.available_resources().get("CPU", 0.0)
        total = self._ray.cluster_resources().get("CPU", 0.0)
        return min(len(self._refs), int(round((total - cpus) / self._threads)))

    def __iter__(self) -> Iterator[tuple]:
        from splatlab.sweep import failed_record

        while self._refs:
            done, _ = self._ray.wait(list(self._refs), num_returns=1)
            for ref in done:
                job = self._refs.pop(ref)
                try:
                    record = self._ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task that died (worker killed, node lost)
                    record = failed_record(job, f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
                yield job, record

    def close(self) -> None:
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile
                pass
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


def local_results(jobs: list, workers: int, threads: int, gpus: int = 0) -> LocalPool:
    """The local executor (see :class:`LocalPool`)."""
    return LocalPool(jobs, workers, threads, gpus)


def ray_results(jobs: list, address: str, threads: int, use_gpu: bool = False) -> RayTasks:
    """The Ray executor (see :class:`RayTasks`)."""
    return RayTasks(jobs, address, threads, use_gpu)
