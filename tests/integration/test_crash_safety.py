"""Crash probes: kills at the worst moments leave the project, the state and the data sound.

After each probe: the project directory is byte-identical, the state file is valid JSON with
either the old or the new entries (here: the old, since nothing finished recording), the
next run completes, and every table equals what a plain ``dbt build`` produces from the same
data. New source data is never recorded as consumed by a node that did not finish building.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from support.airflow_env import Proc, children, processes, wait_for
from support.tutorial import Workspace, plain_dbt_build, tree_digest

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import run_lock_path

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc"
)]  # fmt: skip

SLOW_ENV = "ORCHESTRA_TEST_SLOW"
# A killed run cannot give its lease back, so the next run waits one TTL for it (60 s by
# default). The probes kill runs on purpose; the next run need not wait that long.
SHORT_LEASE = {"ORCHESTRA_DBT_LEASE_TTL": "10"}
FAST_PARENT_SQL = """{{ config(materialized='table') }}
select customer_id, count(*) as orders from {{ ref('stg_orders') }} group by customer_id
"""
# Minutes of DuckDB work when ORCHESTRA_TEST_SLOW is set, instant otherwise.
SLOW_CHILD_SQL = """{{ config(materialized='table') }}
select (select count(*) from {{ ref('fast_parent') }}) as parents, count(*) as n
from range({{ 20000000000 if env_var('ORCHESTRA_TEST_SLOW', '') else 10 }}) as t(i)
"""


def add_slow_models(ws: Workspace) -> None:
    models = ws.project / "models" / "slow"
    models.mkdir()
    (models / "fast_parent.sql").write_text(FAST_PARENT_SQL)
    (models / "slow_child.sql").write_text(SLOW_CHILD_SQL)


def start_cli(ws: Workspace, log: Path, **env: str) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "airflow_provider_orchestra_dbt", "build",
        "--project-dir", str(ws.project), "--profiles-dir", str(ws.project),
        "--state-file", str(ws.state_file),
    ]  # fmt: skip
    environ = os.environ | {"TUTORIAL_DUCKDB_PATH": str(ws.warehouse)} | env
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=environ, stdout=out, stderr=subprocess.STDOUT)


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (a lock file it waits on or holds)."""
    fds = Path(f"/proc/{pid}/fd")
    with suppress(OSError):
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    return False


def worker_of(proc: subprocess.Popen[bytes]) -> int | None:
    found = children(proc.pid, "dbt_worker.py")
    return found[0].pid if found else None


@contextmanager
def state_lock_held(ws: Workspace) -> Iterator[None]:
    """Hold the state store's lock, as another writer would, so a save must wait."""
    lock = ws.state_file.with_name(ws.state_file.name + ".lock")
    lock.touch()
    with lock.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reference_copy(ws: Workspace, tmp_path: Path) -> Path:
    """The warehouse as it is now, for a plain ``dbt build`` to compare with."""
    reference_warehouse = tmp_path / "plain" / "tutorial.duckdb"
    reference_warehouse.parent.mkdir()
    shutil.copy(ws.warehouse, reference_warehouse)
    return reference_warehouse


def next_run_equals_plain_build(ws: Workspace, tmp_path: Path, reference: Path) -> None:
    report = ws.run()  # the next run, at normal speed
    assert {"fast_parent", "slow_child", "stg_orders"} <= {
        u.split(".")[-1] for u in report["built"]
    }
    assert ws.tables() == plain_dbt_build(ws, reference, tmp_path / "plain", unset=(SLOW_ENV,))


def slow_child_running(proc: subprocess.Popen[bytes], log: Path) -> int:
    """Wait until the slow model is being built; returns the worker's pid."""
    finished = re.compile(r"SUCCESS\s+model\.orchestra_tutorial\.fast_parent\b")
    wait_for(lambda: finished.search(log.read_text()), 300, "fast_parent to finish")
    return wait_for(lambda: worker_of(proc), 30, "the dbt worker")


def test_sigkill_of_the_worker_mid_build(ws: Workspace, tmp_path: Path) -> None:
    add_slow_models(ws)
    ws.append("orders")
    digest, state = tree_digest(ws.project), ws.state_file.read_bytes()
    reference = reference_copy(ws, tmp_path)

    log = tmp_path / "killed.log"
    proc = start_cli(ws, log, **{SLOW_ENV: "1"})
    try:
        os.kill(slow_child_running(proc, log), signal.SIGKILL)
        assert proc.wait(timeout=60) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "the dbt worker exited unexpectedly (exit code -9)" in output
    assert ws.state_file.read_bytes() == state, "a crashed run must not record anything"
    assert tree_digest(ws.project) == digest
    next_run_equals_plain_build(ws, tmp_path, reference)


def of_the_run(cli: int, worker: int) -> list[Proc]:
    """What is left of a run whose CLI had pid ``cli``: its worker, the worker's watchdog
    (both name the CLI in their command line) and anything in the worker's process group."""
    return [p for p in processes() if p.pgid == worker or names_cli(p, cli)]


def names_cli(proc: Proc, cli: int) -> bool:
    return f"dbt_worker.py --parent {cli} " in f"{proc.cmdline} "


def test_sigkill_of_the_cli_mid_build_takes_dbt_and_then_the_lock_with_it(
    ws: Workspace, tmp_path: Path
) -> None:
    """What the OOM killer or a lost node does to a task: dbt must not go on writing to the
    warehouse, and the next run must not start before it has stopped."""
    add_slow_models(ws)
    ws.append("orders")
    digest, state = tree_digest(ws.project), ws.state_file.read_bytes()
    reference = reference_copy(ws, tmp_path)
    lock_path = run_lock_path(DbtRunConfig.create(project_dir=ws.project, profiles_dir=ws.project))

    log = tmp_path / "killed.log"
    proc = start_cli(ws, log, **{SLOW_ENV: "1"}, **SHORT_LEASE)
    worker: int | None = None
    try:
        worker = slow_child_running(proc, log)
        named = [p for p in of_the_run(proc.pid, worker) if names_cli(p, proc.pid)]
        assert len(named) == 2, f"the worker and its watchdog, not {named}"
        proc.kill()
        killed = time.monotonic()
        proc.wait(timeout=30)
        with lock_path.open("rb") as handle:
            # Polled: nothing of the run lives 1s after the kill, and the lock comes free
            # (within a bound) but never while anything of it lives.
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    waited = time.monotonic() - killed
                    left = of_the_run(proc.pid, worker)
                    assert waited < 1.0 or not left, f"alive 1s after the CLI's death: {left}"
                    assert waited < 30, "the run lock is still taken 30s after the CLI's death"
                    time.sleep(0.01)
                    continue
                left = of_the_run(proc.pid, worker)
                fcntl.flock(handle, fcntl.LOCK_UN)
                assert left == [], "the run lock came free while the run lived on"
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        # A failed probe must not leave minutes of DuckDB work behind.
        for leftover in of_the_run(proc.pid, worker) if worker else []:
            with suppress(ProcessLookupError):
                os.kill(leftover.pid, signal.SIGKILL)
    assert ws.state_file.read_bytes() == state, "a killed run must not record anything"
    assert tree_digest(ws.project) == digest
    next_run_equals_plain_build(ws, tmp_path, reference)


def test_sigkill_of_the_parent_while_it_saves_state(ws: Workspace, tmp_path: Path) -> None:
    ws.append("orders")
    digest, state = tree_digest(ws.project), ws.state_file.read_bytes()
    log = tmp_path / "killed.log"
    lock = ws.state_file.resolve().with_name(ws.state_file.name + ".lock")
    with state_lock_held(ws):
        proc = start_cli(ws, log, **SHORT_LEASE)
        try:
            # The parent opens the state's lock file only to save what dbt finished.
            wait_for(lambda: has_open(proc.pid, lock), 300, "the parent to start saving")
            output = log.read_text()
            assert proc.poll() is None and re.search(r"\[ *(\d+)/\1\] ", output), output[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert ws.state_file.read_bytes() == state
    json.loads(ws.state_file.read_bytes())
    assert tree_digest(ws.project) == digest
    # The new orders were never recorded as consumed: the next run builds them again.
    report = ws.run()
    assert "new data in source raw.orders" in {
        n["reason"].split(" (")[0] for n in report["nodes"] if n["unique_id"].endswith("stg_orders")
    }
