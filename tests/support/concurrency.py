"""Run one function in several spawned processes at once, for the state stores' race tests.

Spawned rather than forked so that nothing is inherited from the test process: the
guarantees under test (locks, conditional writes, server-side merges) must hold between
processes that share nothing but the store.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier

SPAWN = multiprocessing.get_context("spawn")
"""The context the workers run in; shared objects passed to them must come from it too."""


def run_in_processes(
    target: Callable[..., object],
    args: Callable[[int, Barrier], tuple[object, ...]],
    *,
    processes: int,
    timeout: float,
) -> None:
    """Run ``target(*args(worker, start))`` for each worker number and wait for all of them.

    ``start`` is a barrier for all the workers: waiting on it just before the first write
    makes the writes overlap instead of being staggered by each process's start-up.
    ``target`` must be importable by the children (a module-level function).
    Workers still running ``timeout`` seconds after the start are killed, so a hung one
    fails the test with its exit code rather than at pytest's own timeout.
    Fails the test unless every worker exits with 0.
    """
    start = SPAWN.Barrier(processes)
    workers = [
        SPAWN.Process(target=target, args=args(worker, start)) for worker in range(processes)
    ]
    for process in workers:
        process.start()
    deadline = time.monotonic() + timeout
    for process in workers:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in workers:
        if process.is_alive():
            process.kill()
            process.join()
    assert [process.exitcode for process in workers] == [0] * processes
