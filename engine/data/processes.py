"""Worker processes for the CPU-bound parts of building shards and inspecting masks.

Workers start from a *forkserver*, never by forking the caller: a process that forks
while another of its threads holds a lock (fsspec's I/O loop, an OpenMP pool, a logging
handler) can hand the child a lock nobody will release, and the child hangs. The
forkserver is a fresh single-threaded process, so what it forks is always clean.

A worker that dies (the out-of-memory killer, a crash in a decoder) fails the map with
:class:`WorkerDiedError` instead of leaving it waiting forever for the lost result, which
is what :class:`multiprocessing.pool.Pool` does.

Workers die with their caller: they are killed when the map ends, fails or is closed, and
on Linux ``PR_SET_PDEATHSIG`` kills them if the caller is killed outright (the forkserver,
their parent, exits with the caller). Ctrl-C is left to the caller.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from engine.errors import UserError


class WorkerDiedError(UserError):
    """A worker process ended abruptly (killed, out of memory, crashed)."""


def _worker_init(caller: int) -> None:
    """In each worker: die with the forkserver, and leave Ctrl-C to the caller."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers still end with a clean exit
        pass
    try:
        os.kill(caller, 0)
    except ProcessLookupError:  # the caller died before the prctl above took effect
        os._exit(1)


def _kill(executor: ProcessPoolExecutor) -> None:
    """Kill the workers at once (they may be mid-job), then release the pool's threads and pipes."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        if process.is_alive():
            process.kill()
    executor.shutdown(wait=True, cancel_futures=True)


def parallel_map(function: Callable, jobs: Iterable, workers: int) -> Generator:
    """``map(function, jobs)`` in order over ``workers`` worker processes (1: in process).

    At most ``2 * workers`` jobs are in flight, so results are not piled up in memory
    ahead of a slow consumer.

    Args:
        function: A module-level function (workers import it by name).
        jobs: Picklable arguments, one per call.
        workers: Number of processes; 1 or fewer runs in this process.

    Yields:
        ``function(job)`` for each job, in the order of ``jobs``.

    Raises:
        WorkerDiedError: when a worker process ends abruptly.
    """
    if workers <= 1:
        yield from map(function, jobs)
        return
    executor = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    pending: deque = deque()
    finished = False
    try:
        for job in jobs:
            pending.append(executor.submit(function, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        finished = True
    except BrokenProcessPool as error:
        raise WorkerDiedError(
            "a worker process died (killed, out of memory, or crashed); retry with fewer --workers"
        ) from error
    finally:
        if finished:
            executor.shutdown(wait=True)
        else:
            _kill(executor)
