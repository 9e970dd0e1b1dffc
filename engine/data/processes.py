"""Worker processes for the CPU-bound parts of building shards and inspecting masks.

Workers start from a *forkserver*, never by forking the caller: a process that forks
while another of its threads holds a lock (fsspec's I/O loop, an OpenMP pool, a logging
handler) can hand the child a lock nobody will release, and the child hangs. The
forkserver is a fresh single-threaded process, so what it forks is always clean.

Workers die with their parent: they are daemon processes, terminated when the map ends,
fails or is closed, and on Linux ``PR_SET_PDEATHSIG`` kills them if the parent is killed
outright (the forkserver, their parent, exits with the caller). Ctrl-C is left to the
caller.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator


def _worker_init(caller: int) -> None:
    """In each worker: die with the forkserver, and leave Ctrl-C to the caller.

    The forkserver exits when the caller does, so on Linux the chain caller → forkserver →
    worker ends with ``SIGKILL`` for the worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: daemon workers still die on a clean exit
        pass
    try:
        os.kill(caller, 0)
    except ProcessLookupError:  # the caller died before the prctl above took effect
        os._exit(1)


def parallel_map(function: Callable, jobs: Iterable, workers: int) -> Iterator:
    """``map(function, jobs)`` in order over ``workers`` worker processes (1: in process).

    Args:
        function: A module-level function (workers import it by name).
        jobs: Picklable arguments, one per call.
        workers: Number of processes; 1 or fewer runs in this process.

    Yields:
        ``function(job)`` for each job, in the order of ``jobs``.
    """
    if workers <= 1:
        yield from map(function, jobs)
        return
    context = multiprocessing.get_context("forkserver")
    pool = context.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        yield from pool.imap(function, jobs, chunksize=1)
    finally:
        pool.terminate()
        pool.join()
