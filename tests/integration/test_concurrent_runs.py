"""Two runs of the same project and target at once (two DAG runs), as two OS processes.

They take turns on the run lock: both finish, the one that waited plans on what the other
built, neither touches the other's target dir, and the state holds both runs' updates. On
both targets: without the lock, DuckDB fails the second run (one writer per file) and
PostgreSQL runs clash on dbt's ``<model>__dbt_tmp`` relations.

The test holds the lock itself while the two runs start, so both are known to be waiting
before either gets it (no timing luck, no sleeps); then it lets go and they race.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from support.tutorial import TARGETS, Workspace, built, decisions, short, tree_digest

from airflow_provider_orchestra_dbt.engine.config import DbtRunConfig
from airflow_provider_orchestra_dbt.engine.run_lock import RunLock
from airflow_provider_orchestra_dbt.engine.session import run_lock_path

# ``target`` feeds the ``baseline`` and ``ws`` fixtures (tests/integration/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("target", TARGETS)]

# Each run re-aggregates its own data interval (as two DAG runs of the tutorial DAG do).
INTERVALS = {
    "a": {"data_interval_start": "2024-01-01", "data_interval_end": "2024-03-01"},
    "b": {"data_interval_start": "2024-03-01", "data_interval_end": "2024-05-01"},
}
LOG = logging.getLogger("test")
STARTUP_BOUND = 180.0  # seconds for a run to start and parse; it takes a few
RUN_BOUND = 300.0


class Run:
    """One CLI run in its own process, its output in a file."""

    def __init__(self, ws: Workspace, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = ws.root / f"{name}.log"
        self.report_path = ws.root / f"{name}-report.json"
        self.target_path = ws.root / f"{name}-target"
        argv = [
            sys.executable, "-m", "airflow_provider_orchestra_dbt", "build",
            "--project-dir", str(ws.project),
            "--profiles-dir", str(ws.project),
            "--state-file", str(ws.state_file),
            "--report", str(self.report_path),
            "--target-path", str(self.target_path),
            "--vars", json.dumps(INTERVALS[name]),
            *(["--target", ws.target] if ws.pg else []),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return report

    def artifacts(self) -> set[str]:
        """Nodes in this run's own run_results.json."""
        results = json.loads((self.target_path / "run_results.json").read_text())["results"]
        return {short(r["unique_id"]) for r in results}

    def timing(self) -> tuple[datetime, datetime]:
        """When this run's dbt work started and ended, from its run_results.json."""
        results = json.loads((self.target_path / "run_results.json").read_text())["results"]
        moments = [
            _time(t[k])
            for r in results
            for t in r["timing"]
            for k in ("started_at", "completed_at")
        ]
        return min(moments), max(moments)

    def wait_until_logged(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None, f"run {self.name} ended early:\n{self.log[-5000:]}"
            assert time.monotonic() < deadline, f"run {self.name} never logged {text!r}"
            time.sleep(0.1)

    def finish(self) -> int:
        try:
            return self.proc.wait(RUN_BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"run {self.name} did not finish:\n{self.log[-5000:]}") from None


@contextmanager
def started(ws: Workspace) -> Iterator[list[Run]]:
    with ws.env():
        env = dict(os.environ)
    runs = [Run(ws, name, env) for name in INTERVALS]
    try:
        yield runs
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


def test_two_runs_at_once_take_turns_and_the_state_keeps_both(ws: Workspace) -> None:
    ws.append("orders")  # news for the first run to build; the second should reuse it
    project = tree_digest(ws.project)
    config = DbtRunConfig.create(
        project_dir=ws.project, profiles_dir=ws.project, target=ws.target if ws.pg else None
    )
    gate = RunLock(run_lock_path(config), what="the test", timeout=0, log=LOG, label="gate")
    gate.acquire()
    try:
        with started(ws) as runs:
            # Both start at once and parse in parallel, then wait at the lock.
            for run in runs:
                run.wait_until_logged("Waiting for another run", STARTUP_BOUND)
                assert "(gate)" in run.log, "the waiting line names the holder"
            gate.release()  # one run takes the lock; the other now waits for that one
            codes = {run.name: run.finish() for run in runs}
    finally:
        gate.release()
    for run in runs:
        assert codes[run.name] == 0, f"run {run.name} exited {codes[run.name]}:\n{run.log[-5000:]}"
    a, b = runs
    first, second = (a, b) if f"now held by pid {a.proc.pid} " in b.log else (b, a)
    assert f"now held by pid {first.proc.pid} " in second.log, second.log[-5000:]
    assert "Got the run lock" in second.log
    assert tree_digest(ws.project) == project, "a run modified the dbt project"

    # The second run planned on the first one's results: it read the state after the lock.
    first_report, second_report = first.report(), second.report()
    first_built = built(first_report)  # the new orders' downstream
    assert {"stg_orders", "int_orders_enriched", "fct_daily_revenue"} <= first_built
    assert built(second_report) == {"fct_daily_revenue"}
    assert "code changed (vars" in decisions(second_report)["fct_daily_revenue"]
    reused = first_built - {"fct_daily_revenue"}
    assert set(decisions(second_report, "reuse")) >= reused

    # Each run kept its own artifacts, and the runs never met in the warehouse.
    assert first.artifacts() >= first_built
    assert "fct_daily_revenue" in second.artifacts() and not second.artifacts() & reused
    first_end, second_start = first.timing()[1], second.timing()[0]
    assert first_end <= second_start, "dbt work of the two runs overlapped"

    # The state holds both runs' updates: the first's builds and the second's interval.
    state = {short(e["unique_id"]): e for e in ws.state().values()}
    revenue = state["fct_daily_revenue"]
    assert _time(revenue["last_updated"]) >= second_start, "written by the second run"
    for name in reused:
        assert _time(state[name]["last_updated"]) <= first_end, f"{name}: by the first run"
    enriched = ws.relation("int_orders_enriched")
    assert revenue["upstream"][enriched] == state["int_orders_enriched"]["last_updated"]

    # The warehouse holds what plain dbt builds with each run's vars produce.
    [(orders,)] = ws.sql("select count(*) from raw.orders")
    assert ws.sql(f"select count(*) from {ws.schema}.int_orders_enriched") == [(orders,)]
    for interval in INTERVALS.values():
        assert revenue_rows(ws, interval) == expected_revenue(ws, interval)
        assert revenue_rows(ws, interval), "the interval holds orders"


def revenue_rows(ws: Workspace, interval: dict[str, str]) -> list[tuple[Any, ...]]:
    return ws.sql(
        f"select order_date, order_count, revenue from {ws.schema}.fct_daily_revenue"
        f" where {_within(interval)} order by 1"
    )


def expected_revenue(ws: Workspace, interval: dict[str, str]) -> list[tuple[Any, ...]]:
    """fct_daily_revenue's SQL for one interval, straight from its parent."""
    return ws.sql(
        "select order_date, count(*), sum(total_amount)"
        f" from {ws.schema}.int_orders_enriched where status <> 'returned' and {_within(interval)}"
        " group by order_date order by 1"
    )


def _within(interval: dict[str, str]) -> str:
    start, end = interval["data_interval_start"], interval["data_interval_end"]
    return f"order_date >= cast('{start}' as date) and order_date < cast('{end}' as date)"


def _time(text: str) -> datetime:
    """A dbt or state timestamp (ISO 8601, 'Z' or an offset; dbt's are UTC) as aware UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
