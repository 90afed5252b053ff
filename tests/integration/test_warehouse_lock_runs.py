"""Runs on the PostgreSQL target take turns on an advisory lock in the warehouse itself.

Each run here has its own cache dir (its own flock) and its own state file in a directory
of its own (its own lease), so only the advisory lock relates them: as two workers with
different state locations, or a laptop and an Airflow worker, would be.

The test holds the lock itself (a "gate") while the runs start, so both are known to be
waiting before either gets it: no timing luck, no sleeps. One pair of runs shows both the
turn-taking and a killed holder freeing the lock: a run's start (dbt's parse) is most of its
time.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from support.airflow_env import free_port, wait_for
from support.cli_runs import CliRun, reaped
from support.tutorial import Baseline, Workspace

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import lease_name
from airflow_provider_orchestra_dbt.execution.warehouse_lock import advisory_lock_key

pytestmark = pytest.mark.integration

STARTUP_BOUND = 120.0  # seconds for a run to start, parse and reach the lock; it takes a few
RUN_BOUND = 180.0
GATE = "lock test gate"
WAITING = "holds the PostgreSQL advisory lock"


@pytest.fixture(scope="module")
def ws(postgres_baseline: Baseline, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One copy of the postgres baseline for the module; its tests only read and rebuild."""
    return postgres_baseline.copy_to(tmp_path_factory.mktemp("warehouse-lock") / "ws")


@pytest.fixture(scope="module")
def key(ws: Workspace) -> int:
    config = DbtRunConfig.create(
        project_dir=ws.project, profiles_dir=ws.project, target=ws.target, command="build"
    )
    return advisory_lock_key(lease_name(config))


def own_run(ws: Workspace, name: str, *args: str, env: dict[str, str] | None = None) -> CliRun:
    """A CLI run with a cache dir (flock) and a state file (lease) of its own."""
    home = ws.root / name
    home.mkdir(exist_ok=True)
    state_file = home / "state.json"
    if not state_file.exists():
        shutil.copyfile(ws.state_file, state_file)
    with ws.env():
        run_env = {**os.environ, "ORCHESTRA_DBT_CACHE_DIR": str(home / "cache"), **(env or {})}
    return CliRun(ws, name, ["--state-file", str(state_file)], run_env, *args)


def holder(ws: Workspace, key: int) -> str | None:
    """The application name of the session holding the lock, or None when it is free."""
    assert ws.pg is not None
    conn = ws.pg.server.connect(ws.pg.name)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "select a.application_name from pg_locks l join pg_stat_activity a using (pid) "
                "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
                "and l.classid = %s::bigint::oid and l.objid = %s::bigint::oid",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
            )
            row = cursor.fetchone()
    finally:
        conn.close()
    return str(row[0]) if row else None


@contextmanager
def gate(ws: Workspace, key: int) -> Iterator[Any]:
    """Hold the runs' lock from a session of our own until the block ends."""
    assert ws.pg is not None
    conn = ws.pg.server.connect(ws.pg.name)
    try:
        with conn.cursor() as cursor:
            cursor.execute("set application_name = %s", (GATE,))
            cursor.execute("select pg_try_advisory_lock(%s)", (key,))
            assert cursor.fetchone()[0], f"the lock is taken already, by {holder(ws, key)}"
        yield conn
    finally:
        conn.close()


def test_runs_unrelated_but_by_the_warehouse_take_turns_and_a_killed_holder_frees_it(
    ws: Workspace, key: int
) -> None:
    ws.append("orders")  # news, so that whichever runs first has something to build
    runs: list[CliRun] = []
    with reaped(runs):
        with gate(ws, key):
            runs += [own_run(ws, "a"), own_run(ws, "b")]
            for run in runs:
                # Waiting on the gate, named by its application_name: so past the flock and
                # the lease, which relate nothing here.
                run.wait_until_logged(WAITING)
                assert f"application '{GATE}'" in run.log
        # The gate is open: one run takes the lock, and the other names it as the holder.
        wait_for(lambda: holder(ws, key) not in (None, GATE), 60.0, "a run to take the lock")
        taken_by = holder(ws, key)
        first = next(run for run in runs if application(run) == taken_by)
        second = next(run for run in runs if run is not first)
        second.wait_until_logged("now held by backend pid", timeout=60.0)
        assert f"application '{application(first)}'" in second.log

        # Killed outright while it holds the lock (planning or building): the server frees the
        # lock with the connection, so the waiting run gets it within its next polls, with
        # no TTL to wait out (a lease's is 60 s).
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(RUN_BOUND) == -signal.SIGKILL
        killed = time.monotonic()
        second.wait_until_logged("Got the PostgreSQL advisory lock", timeout=15.0)
        assert time.monotonic() - killed < 15.0
        assert second.finish() == 0, second.log[-5000:]
    assert holder(ws, key) is None, "the lock outlived the run"


def test_a_lock_that_cannot_be_tried_fails_the_run_naming_the_target(
    ws: Workspace, key: int
) -> None:
    # Nothing listens there: parsing needs no connection, so the lock's is the first.
    failing = own_run(ws, "c", "--lock-timeout", "5", env={"TUTORIAL_PG_PORT": str(free_port())})
    with reaped([failing]):
        assert failing.finish() == 2, failing.log[-5000:]
    assert (
        "cannot take the PostgreSQL advisory lock that keeps runs of dbt project "
        f"{ws.project} (target 'postgres') apart"
    ) in failing.log
    assert "from target 'postgres': FailedToConnectError" in failing.log
    assert "Loaded" not in failing.log  # failed before reading the state


def application(run: CliRun) -> str:
    return f"orchestra-dbt pid {run.proc.pid}: dbt build"
