"""The per-project+target run lock: waits, times out, is interrupted, and names its holder.

Real ``flock`` on real files; holders are other descriptors in this process (flock locks
belong to an open file description, so two opens conflict like two processes do) or real
child processes. No fixed sleeps: every wait polls a condition with a bounded timeout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.log_lines import Lines

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import run_lock_path
from airflow_provider_orchestra_dbt.execution.run_lock import (
    Holder,
    RunLock,
    RunLockError,
    RunLockStopped,
)
from airflow_provider_orchestra_dbt.execution.session import DbtRunError, DbtSession
from airflow_provider_orchestra_dbt.state import LocalFileStateStore

WHAT = "dbt project /p (target 'dev')"
BOUND = 10.0  # seconds: an upper bound for things that take milliseconds


def wait_for(condition: Callable[[], object], what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def lock(path: Path, log: Lines | None = None, **kwargs: object) -> RunLock:
    options: dict = {"what": WHAT, "timeout": BOUND, "log": log or Lines(), **kwargs}
    return RunLock(path, **options)


class Attempt(threading.Thread):
    """``acquire`` in a thread; ``outcome`` is the seconds waited or the exception."""

    def __init__(self, run_lock: RunLock) -> None:
        super().__init__(daemon=True)
        self.run_lock = run_lock
        self.outcome: float | BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = self.run_lock.acquire()
        except BaseException as exc:
            self.outcome = exc

    def result(self) -> float | BaseException | None:
        self.join(BOUND)
        assert not self.is_alive(), "acquire did not return"
        return self.outcome


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "run.lock"  # the directory does not exist yet


def test_a_second_run_waits_says_for_whom_and_gets_the_lock_when_the_first_ends(
    path: Path,
) -> None:
    first = lock(path, label="dbt build dag_id=d run_id=r1")
    first.acquire()
    log = Lines()
    second = Attempt(lock(path, log))
    second.start()
    wait_for(lambda: log.having("Waiting for another run"), "the waiting line")
    [waiting] = log.having("Waiting")
    assert WHAT in waiting and str(path) in waiting and "up to 10s (lock_timeout)" in waiting
    assert f"pid {os.getpid()} on " in waiting and "(dbt build dag_id=d run_id=r1)" in waiting
    assert second.is_alive(), "it must wait while the first run holds the lock"

    first.release()
    waited = second.result()
    assert isinstance(waited, float) and waited > 0
    assert second.run_lock.held
    assert len(log.having("Waiting")) == 1, "the wait is announced once"
    assert re.search(r"Got the run lock of .* after waiting \d+\.\ds", log.lines[-1])
    second.run_lock.release()


def test_the_holder_signs_the_lock_file_and_clears_it_on_release(path: Path) -> None:
    with lock(path, label="dbt run") as held:
        holder = held.holder()
        assert holder is not None
        assert (holder.pid, holder.label) == (os.getpid(), "dbt run")
    assert path.read_bytes() == b""
    assert Holder.from_bytes(b'{"pid": 1, "ho') is None, "a half-written file is no holder"


def test_a_timeout_names_the_project_the_lock_file_the_holder_and_the_timeout(
    path: Path,
) -> None:
    with lock(path, label="dag_id=d run_id=first"):
        log = Lines()
        with pytest.raises(RunLockError) as caught:
            lock(path, log, timeout=0.3).acquire()
    message = str(caught.value)
    assert message.startswith(f"another run of {WHAT} holds its run lock {path}: pid ")
    assert "(dag_id=d run_id=first); gave up after 0s (lock_timeout=0.3)" in message
    assert len(log.having("Waiting")) == 1 and not log.having("Got the run lock")


def test_lock_timeout_zero_fails_at_once_without_announcing_a_wait(path: Path) -> None:
    with lock(path):
        log = Lines()
        started = time.monotonic()
        with pytest.raises(RunLockError, match=r"gave up after 0s \(lock_timeout=0\)"):
            lock(path, log, timeout=0).acquire()
        assert time.monotonic() - started < 1
        assert log.lines == []


def test_stop_interrupts_the_wait_promptly(path: Path) -> None:
    stop = threading.Event()
    with lock(path):
        log = Lines()
        waiter = Attempt(lock(path, log, timeout=3600, stop=stop))
        waiter.start()
        wait_for(lambda: log.having("Waiting"), "the waiting line")
        stopped_at = time.monotonic()
        stop.set()
        outcome = waiter.result()
        assert time.monotonic() - stopped_at < 2
    assert isinstance(outcome, RunLockStopped)
    assert str(outcome) == f"stopped while waiting for the run lock of {WHAT}"
    assert not waiter.run_lock.held


def test_the_lock_is_released_when_the_run_raises(path: Path) -> None:
    with pytest.raises(ZeroDivisionError), lock(path):
        _ = 1 / 0
    with lock(path, timeout=0) as again:
        assert again.held


def test_one_run_lock_object_cannot_be_taken_twice(path: Path) -> None:
    with lock(path) as held, pytest.raises(RunLockError, match="already held by this run"):
        held.acquire()


# -- across processes ----------------------------------------------------------------------------

HOLDER_SCRIPT = """
import sys
from pathlib import Path
from airflow_provider_orchestra_dbt.execution.run_lock import RunLock

class Log:
    def info(self, *a): pass
    def warning(self, *a): pass

with RunLock(Path(sys.argv[1]), what="x", timeout=10, log=Log(), label="holder process"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder_process(path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(BOUND)
        for pipe in (proc.stdin, proc.stdout):  # left to the collector, they would warn
            if pipe is not None:
                pipe.close()


def test_a_lock_held_by_another_process_is_waited_for_and_named(
    path: Path, holder_process: subprocess.Popen[str]
) -> None:
    with pytest.raises(RunLockError, match=rf"pid {holder_process.pid} on .*\(holder process\)"):
        lock(path, timeout=0).acquire()
    log = Lines()
    waiter = Attempt(lock(path, log))
    waiter.start()
    wait_for(lambda: log.having(f"pid {holder_process.pid}"), "the waiting line")
    assert holder_process.stdin is not None
    holder_process.stdin.close()  # the holder leaves its `with` block and exits
    assert isinstance(waiter.result(), float)
    waiter.run_lock.release()


def test_a_killed_holder_leaves_no_stale_lock(
    path: Path, holder_process: subprocess.Popen[str]
) -> None:
    os.kill(holder_process.pid, signal.SIGKILL)
    holder_process.wait(BOUND)
    with lock(path, timeout=BOUND) as taken:
        assert taken.held


# -- in a session ----------------------------------------------------------------------------------


def test_a_session_waiting_for_the_lock_is_stopped_and_runs_nothing(
    project: Path, tmp_path: Path
) -> None:
    # `seed` passes through: it takes the lock before starting dbt, so no dbt is needed here.
    config = DbtRunConfig.create(project_dir=project, command="seed", target="dev")
    state = tmp_path / "state.json"
    log = Lines()
    session = DbtSession(config, LocalFileStateStore(state), log)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            session.run()
        except BaseException as exc:
            errors.append(exc)

    with lock(run_lock_path(config)):
        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        wait_for(lambda: log.having("Waiting for another run"), "the waiting line")
        assert f"{project} (target 'dev')" in log.lines[0]
        session.stop()
        runner.join(BOUND)
        assert not runner.is_alive()
    [error] = errors
    assert isinstance(error, DbtRunError)
    assert str(error) == (
        f"dbt seed was stopped while waiting for another run of dbt project {project} "
        "(target 'dev') to finish; nothing ran"
    )
    assert not state.exists()


def test_runs_share_a_lock_only_with_the_same_project_profiles_and_target(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "profiles.yml").write_text("p: {}\n")
    here = run_lock_path(DbtRunConfig.create(project_dir=project, profiles_dir=project))
    monkeypatch.chdir(project)
    relative = DbtRunConfig.create(project_dir=".", profiles_dir=".")
    assert run_lock_path(relative) == here, "the same directories, spelled differently"
    other_target = DbtRunConfig.create(project_dir=project, profiles_dir=project, target="x")
    assert run_lock_path(other_target) != here
