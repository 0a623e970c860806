"""Where the heads' fits run: this process, or worker processes forked from a fork server.

Fits run on one thread each, in worker processes when the data is large enough to pay for
starting them; the workers fork from a fork server that imported the fitting code and torch
once, and run at a lower priority than the main process, which feeds them.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import types
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import forkserver
from typing import Any

from threadpoolctl import threadpool_limits

WORKER_NICENESS = 10  # fit workers' priority below the main process's (`_start_worker`)


PARALLEL_MIN_VALUES = 1 << 22  # scaled feature values (rows x columns) worth worker processes


class _InlineExecutor:
    """Runs each submitted call at once, in this process (small problems: `fit_processes`)."""

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # delivered by future.result(), as from a worker
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Nothing to stop (the executor interface)."""


def fit_executor(n_jobs: int) -> Any:
    """Where fits run: this process (n_jobs 1), or n_jobs worker processes that each fit on
    one thread (processes are what puts the cores to use), started now. Jobs submitted
    while the next feature set is still being projected start at once; `shutdown` it when
    done. Workers fork from the fork server (`start_fork_server`) and, unlike plain
    multiprocessing workers, never re-run the caller's script: a script calling `train`
    needs no ``if __name__ == "__main__":`` guard."""
    if n_jobs <= 1:
        return _InlineExecutor()
    context = start_fork_server()
    executor = ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_start_worker)
    # Workers are started by submits; each records the main module to re-import it (what
    # multiprocessing does so that functions defined there can be unpickled; ours are in
    # this package). An empty stand-in while they start keeps them from re-running it.
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        for _ in range(n_jobs):
            executor.submit(int)
    finally:
        sys.modules["__main__"] = main
    return executor


def start_fork_server() -> multiprocessing.context.BaseContext:
    """The context fit workers start from (idempotent; starts the server without waiting).

    Linux: a fork server that has imported the fitting code and torch's compiler package once,
    so workers fork ready to fit. torch.optim imports the latter on an optimizer's first
    use; with this module's imports that cost every fresh worker ~6 CPU-seconds before its
    first fit. Started as soon as a run is known to be large, its imports overlap the main
    process's loading. Elsewhere: spawned workers."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["affectpipe.heads.fitting", "torch._dynamo"])
    forkserver.ensure_running()
    return context


def _start_worker() -> None:
    """Set up a fit worker: one thread for every library (fits are many and small: processes,
    not threads, share the cores out; LightGBM reads OMP_NUM_THREADS, `models`), and a CPU
    priority below the main process's, which reads and projects the features the next fits
    need and writes finished heads: on a machine with no spare core it should not wait
    behind fits that can run later. The total work is unchanged."""
    one_thread = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    os.environ.update(dict.fromkeys(one_thread, "1"))
    threadpool_limits(1)
    os.nice(WORKER_NICENESS)


def fit_processes(workers: int, n_candidates: int, largest: int) -> int:
    """Processes for the fits of `n_candidates` whose largest scaled feature set holds `largest`
    values: small problems stay in this process (starting workers would cost more than it
    saves)."""
    if n_candidates == 1 or largest < PARALLEL_MIN_VALUES:
        return 1
    return max(1, min(workers, n_candidates))
