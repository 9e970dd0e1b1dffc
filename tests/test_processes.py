"""Worker processes of the shard builder and mask inspection (engine.data.processes)."""

import multiprocessing
import os
import threading

import pytest

from engine.data.processes import WorkerDiedError, parallel_map

_LOCK = threading.Lock()


def _pid(_: int) -> int:
    return os.getpid()


def _takes_the_lock(value: int) -> bool:
    acquired = _LOCK.acquire(timeout=3)
    if acquired:
        _LOCK.release()
    return acquired


def test_results_come_in_order_from_worker_processes():
    assert list(parallel_map(abs, range(-30, 0), 2)) == list(range(30, 0, -1))
    assert os.getpid() not in set(parallel_map(_pid, range(8), 2))


def test_a_worker_that_dies_fails_the_map_instead_of_hanging():
    with pytest.raises(WorkerDiedError, match="worker process died"):
        list(parallel_map(os._exit, [3, 3, 3], 2))


def test_workers_do_not_inherit_a_lock_held_by_another_thread():
    """A forked worker gets a copy of ``_LOCK`` still held, and would wait on it forever."""
    release = threading.Event()
    holder = threading.Thread(target=lambda: (_LOCK.acquire(), release.wait(), _LOCK.release()))
    holder.start()
    try:
        while not _LOCK.locked():
            pass
        assert list(parallel_map(_takes_the_lock, [1, 2], 2)) == [True, True]
        with multiprocessing.get_context("fork").Pool(1) as pool:  # what plain fork does
            assert pool.map(_takes_the_lock, [1]) == [False]
    finally:
        release.set()
        holder.join()
