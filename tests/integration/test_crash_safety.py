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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.airflow_env import children, wait_for
from support.tutorial import Workspace, plain_dbt_build, tree_digest

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc"
)]  # fmt: skip

SLOW_ENV = "ORCHESTRA_TEST_SLOW"
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


def test_sigkill_of_the_worker_mid_build(ws: Workspace, tmp_path: Path) -> None:
    add_slow_models(ws)
    ws.append("orders")
    digest, state = tree_digest(ws.project), ws.state_file.read_bytes()
    reference_warehouse = tmp_path / "plain" / "tutorial.duckdb"
    reference_warehouse.parent.mkdir()
    shutil.copy(ws.warehouse, reference_warehouse)

    log = tmp_path / "killed.log"
    proc = start_cli(ws, log, **{SLOW_ENV: "1"})
    try:
        finished = re.compile(r"SUCCESS\s+model\.orchestra_tutorial\.fast_parent\b")
        wait_for(lambda: finished.search(log.read_text()), 300, "fast_parent to finish")
        worker = wait_for(lambda: worker_of(proc), 30, "the dbt worker")
        os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=60) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "the dbt worker exited unexpectedly (exit code -9)" in output
    assert ws.state_file.read_bytes() == state, "a crashed run must not record anything"
    assert tree_digest(ws.project) == digest

    report = ws.run()  # the next run, at normal speed
    assert {"fast_parent", "slow_child", "stg_orders"} <= {
        u.split(".")[-1] for u in report["built"]
    }
    assert ws.tables() == plain_dbt_build(
        ws, reference_warehouse, tmp_path / "plain", unset=(SLOW_ENV,)
    )


def test_sigkill_of_the_parent_while_it_saves_state(ws: Workspace, tmp_path: Path) -> None:
    ws.append("orders")
    digest, state = tree_digest(ws.project), ws.state_file.read_bytes()
    log = tmp_path / "killed.log"
    with state_lock_held(ws):
        proc = start_cli(ws, log)
        try:
            wait_for(lambda: "Executing" in log.read_text(), 300, "the build to start")
            # dbt is done when the worker has gone but the parent lives on: it is saving.
            wait_for(lambda: worker_of(proc) is None, 300, "the worker to finish")
            assert proc.poll() is None, log.read_text()[-2000:]
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
