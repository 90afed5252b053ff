"""The dbt worker dies with its parent, and the run lock stays taken until it has.

No dbt needed: the worker script answers ``hello`` before it imports dbt, and waits there
for the next request as it would wait in a warehouse query. Each wait polls a condition
with a deadline; no fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.execution.run_lock import RunLock, RunLockError
from airflow_provider_orchestra_dbt.worker.client import WORKER_SCRIPT, WorkerProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

BOUND = 10.0  # seconds: an upper bound for things that take milliseconds
# The promise: one second after the parent's death nothing of the run is left.
DEATH_BOUND = 1.0


class Log:
    def info(self, msg: str, /, *args: object) -> None: ...

    def warning(self, msg: str, /, *args: object) -> None: ...


def alive(pid: int) -> bool:
    """Running, or dead but not yet reaped (a zombie has run its course: not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def lock_is_free(path: Path) -> bool:
    try:
        with RunLock(path, what="the test's project", timeout=0, log=Log()):
            return True
    except RunLockError:
        return False


def free_only_once_gone(path: Path, pids: list[int], since: float) -> None:
    """Poll until the lock at ``path`` comes free: none of ``pids`` may be alive DEATH_BOUND
    after ``since``, nor when it comes free (up to BOUND later)."""
    while not lock_is_free(path):
        waited, left = time.monotonic() - since, [pid for pid in pids if alive(pid)]
        assert waited < DEATH_BOUND or not left, f"alive {DEATH_BOUND}s after: {left}"
        assert waited < BOUND, "the run lock is still taken"
        time.sleep(0.005)
    left = [pid for pid in pids if alive(pid)]
    assert left == [], f"the lock came free while {left} lived"


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def watchdog_of(worker: int) -> int:
    """The worker's only child right after hello: its watchdog."""
    [task] = os.listdir(f"/proc/{worker}/task")[:1]
    children = Path(f"/proc/{worker}/task/{task}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "run.lock"


def test_the_worker_holds_the_run_lock_with_its_parent_and_leaves_nothing_behind(
    lock_path: Path,
) -> None:
    run_lock = RunLock(lock_path, what="the test's project", timeout=BOUND, log=Log())
    worker = WorkerProcess(
        python=sys.executable, env=os.environ, on_output=lambda _: None, lock_fd=run_lock.open()
    )
    worker.start()
    try:
        run_lock.acquire()  # as a state-aware run does: after the worker has started
        assert worker.receive("hello")["type"] == "hello"
        assert worker.pid is not None
        watchdog = watchdog_of(worker.pid)
        run_lock.release()  # only our copy: the worker's keeps the lock taken
        assert not lock_is_free(lock_path)
    finally:
        worker.close()  # the worker exits: the request stream ended
    # At once, without polling: the worker reaps its watchdog before it exits, so even a
    # next run with lock_timeout 0 finds the lock free.
    assert lock_is_free(lock_path)
    assert not alive(watchdog)


PARENT_SCRIPT = """
import os, sys
from pathlib import Path
from airflow_provider_orchestra_dbt.execution.run_lock import RunLock
from airflow_provider_orchestra_dbt.worker.client import WorkerProcess

class Log:
    def info(self, *a): pass
    def warning(self, *a): pass

lock = RunLock(Path(sys.argv[1]), what="x", timeout=10, log=Log())
worker = WorkerProcess(
    python=sys.executable, env=os.environ, on_output=lambda _: None, lock_fd=lock.open()
)
worker.start()
lock.acquire()
worker.receive("hello")
print(worker.pid, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def parent(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A run's process (CLI or Airflow task) with its worker started and the lock taken."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(BOUND)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def test_a_killed_parent_takes_its_worker_and_the_watchdog_along_then_frees_the_lock(
    parent: subprocess.Popen[str], lock_path: Path
) -> None:
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    watchdog = watchdog_of(worker)
    assert not lock_is_free(lock_path)
    os.kill(parent.pid, signal.SIGKILL)
    killed = time.monotonic()
    parent.wait(BOUND)
    free_only_once_gone(lock_path, [worker, watchdog], killed)


ORPHAN_SCRIPT = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import dbt_worker

dbt_worker.die_with_parent(sys.argv[2:])
# What dbt might start: it stays in the worker's process group and shrugs off SIGTERM.
stubborn = subprocess.Popen([
    sys.executable, "-c",
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(flush=True); time.sleep(600)",
], stdout=subprocess.PIPE)
stubborn.stdout.readline()
print(dbt_worker._watchdog[0], stubborn.pid, flush=True)
sys.stdin.read()
"""


def test_without_a_death_signal_the_watchdog_ends_the_worker_and_its_group(
    lock_path: Path,
) -> None:
    """The portable path: the parent lives on (so no death signal comes) but closes the
    lifeline, which is what its death does to it anywhere."""
    run_lock = RunLock(lock_path, what="the test's project", timeout=BOUND, log=Log())
    lock_fd = run_lock.open()
    lifeline, keep = os.pipe()
    argv = ["--parent", str(os.getpid()), "--lifeline", str(lifeline), "--lock-fd", str(lock_fd)]
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ORPHAN_SCRIPT), str(WORKER_SCRIPT.parent), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=(lifeline, lock_fd),
    )
    os.close(lifeline)
    try:
        run_lock.acquire()
        run_lock.release()  # the worker's copy keeps it taken
        assert proc.stdout is not None
        watchdog, stubborn = (int(pid) for pid in proc.stdout.readline().split())
        assert not lock_is_free(lock_path)
        os.close(keep)
        closed = time.monotonic()
        wait_for(lambda: proc.poll() is not None, "the worker to be killed")
        assert proc.returncode == -signal.SIGKILL
        free_only_once_gone(lock_path, [proc.pid, watchdog, stubborn], closed)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(BOUND)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
