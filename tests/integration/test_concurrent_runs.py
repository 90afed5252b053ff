"""Two runs of the same project and target at once (two DAG runs), as two OS processes.

They take turns on the run lock: both finish, the one that waited plans on what the other
built, neither touches the other's target dir, and the state holds both runs' updates. On
both targets: without the lock, DuckDB fails the second run (one writer per file) and
PostgreSQL runs clash on dbt's ``<model>__dbt_tmp`` relations.

The test holds the lock itself while the two runs start, so both are known to be waiting
before either gets it (no timing luck, no sleeps); then it lets go and they race.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from support.cli_runs import GATE, INTERVALS, in_turn, race_after_gate, started, utc
from support.tutorial import TARGETS, Workspace, built, decisions, short, tree_digest

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import run_lock_path
from airflow_provider_orchestra_dbt.execution.run_lock import RunLock

# ``target`` feeds the ``baseline`` and ``ws`` fixtures (tests/integration/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("target", TARGETS)]

LOG = logging.getLogger("test")


def test_two_runs_at_once_take_turns_and_the_state_keeps_both(ws: Workspace) -> None:
    ws.append("orders")  # news for the first run to build; the second should reuse it
    project = tree_digest(ws.project)
    config = DbtRunConfig.create(
        project_dir=ws.project, profiles_dir=ws.project, target=ws.target if ws.pg else None
    )
    gate = RunLock(run_lock_path(config), what="the test", timeout=0, log=LOG, label=GATE)
    gate.acquire()
    try:
        with started(ws, ["--state-file", str(ws.state_file)]) as runs:
            # Both start at once and parse in parallel, then wait at the lock; once it is
            # released one run takes it, and the other waits for that one.
            race_after_gate(runs, "Waiting for another run", gate.release)
    finally:
        gate.release()
    first, second = in_turn(runs, "now held by pid ")
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
    first_end, second_start = first.window()[1], second.window()[0]

    # The state holds both runs' updates: the first's builds and the second's interval.
    state = {short(e["unique_id"]): e for e in ws.state().values()}
    revenue = state["fct_daily_revenue"]
    assert utc(revenue["last_updated"]) >= second_start, "written by the second run"
    for name in reused:
        assert utc(state[name]["last_updated"]) <= first_end, f"{name}: by the first run"
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
