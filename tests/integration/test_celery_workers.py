"""The tutorial DAG on a multi-worker Airflow: CeleryExecutor, two workers, one backfill.

As production runs it, on 127.0.0.1: Redis (Debian's ``redis-server``) as the Celery broker,
PostgreSQL as Airflow's metadata DB and Celery result backend, the API server, the
dag-processor and the scheduler, and two Celery workers. Each worker stands for a machine of
its own: its own temp, cache (so run lock) and log directories, its own copy of the dbt
project and its own host name in Airflow. They share what workers must share: the warehouse
(the tutorial's PostgreSQL target) and the state store (S3, moto's server over HTTP).
The deployment itself is ``support/celery_deployment.py`` (``bench/backfill.py`` times it).

A backfill of three daily intervals runs with all three DAG runs active at once. Only the
lease in the S3 state store can keep their dbt builds apart, so the checks are that:

- the builds took turns (no two dbt builds at the same time), and a waiting run said whom it
  waited for in its task log;
- every interval's row of ``fct_daily_revenue`` holds what its data says;
- the state holds every run's updates: what the first run rebuilt is recorded as its, the
  later runs reused it, and the interval model is recorded as built by the last run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from support.celery_deployment import (
    STATE_KEY,
    TUTORIAL,
    WORKERS,
    CeleryDeployment,
    celery_deployment,
    dbt_window,
)
from support.postgres import PgServer
from support.s3_server import MotoS3Server
from support.tutorial import Baseline, short, tree_digest

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import lease_name
from airflow_provider_orchestra_dbt.state import S3StateStore
from airflow_provider_orchestra_dbt.state.lease import Lease

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKFILL = ("2026-01-03", "2026-01-05")  # three daily intervals
LANDED_DAYS = tuple(f"2026-01-0{day}" for day in range(2, 8))
ORDERS_PER_DAY = 2
GATE = "the test's gate"
BACKFILL_TIMEOUT = 600.0
ORDERS_CHAIN = {"stg_orders", "int_orders_enriched", "fct_orders"}


@pytest.fixture(scope="module")
def celery(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_baseline: Baseline,
    pg_server: PgServer,
    s3_server: MotoS3Server,
    redis_broker: str,
) -> Iterator[CeleryDeployment]:
    with celery_deployment(
        tmp_path_factory.mktemp("celery"),
        postgres_baseline,
        pg_server,
        s3_server.create_bucket(),
        redis_broker,
        WORKERS,
    ) as deployment:
        yield deployment


def test_backfill_on_two_celery_workers_takes_turns_and_keeps_every_update(
    celery: CeleryDeployment,
) -> None:
    d = celery
    digests = {name: tree_digest(path / "project") for name, path in d.worker_dirs.items()}
    # New orders on every day around the backfill: the first run in turn must rebuild the
    # orders chain, the others plan on what it built; each run re-aggregates its own day.
    d.land_orders(LANDED_DAYS, ORDERS_PER_DAY)

    # The test holds the runs' lease while they start, so that two of them (one per worker)
    # are known to wait for it at once; then it lets go and they race.
    config = DbtRunConfig.create(
        project_dir=d.ws.project, profiles_dir=d.ws.project, target="postgres"
    )
    gate = Lease(
        S3StateStore(d.s3.bucket, STATE_KEY, **d.s3.store_kwargs()),
        lease_name(config),
        holder={"pid": os.getpid(), "host": "test-host", "since": "", "label": GATE},
    )
    assert gate.try_acquire()
    lost: list[str] = []
    gate.start_heartbeat(lost.append)
    try:
        # Unpaused, the DAG also gets its latest scheduled run (catchup is off): a fourth run
        # of the same project and target, as a scheduled run beside a backfill would be.
        d.unpause(TUTORIAL)
        # What `airflow backfill create --dag-id ... --from-date ... --to-date ...
        # --max-active-runs 3` does (days at midnight UTC; reprocess behavior `none`).
        d.api(
            "POST",
            "/api/v2/backfills",
            {
                "dag_id": TUTORIAL,
                "from_date": f"{BACKFILL[0]}T00:00:00+00:00",
                "to_date": f"{BACKFILL[1]}T00:00:00+00:00",
                "max_active_runs": 3,
                "run_backwards": False,
                "reprocess_behavior": "none",
            },
        )

        def both_workers_wait() -> bool:
            rows = d.query(
                "select run_id from task_instance where dag_id = ? and task_id = 'dbt_build' "
                "and state = 'running'",
                (TUTORIAL,),
            )
            return sum(f"({GATE})" in d.task_log(r) for (r,) in rows) == len(WORKERS)

        d.wait(both_workers_wait, BACKFILL_TIMEOUT, "a dbt build on each worker to wait")
        assert not lost, lost
    finally:
        gate.release()

    def finished() -> list[tuple[Any, ...]] | None:
        rows = d.query(
            "select run_id, run_type, state, data_interval_start from dag_run "
            "where dag_id = ? order by id",
            (TUTORIAL,),
        )
        types = [row[1] for row in rows]
        done = all(row[2] in ("success", "failed") for row in rows)
        return rows if done and types.count("backfill") == 3 and "scheduled" in types else None

    rows = d.wait(finished, BACKFILL_TIMEOUT, "the backfill and the scheduled run to finish")
    runs = [str(row[0]) for row in rows]
    for run_id, _, state, _ in rows:
        assert state == "success", d.task_log(run_id)[-6000:]
    days = sorted(row[3].date().isoformat() for row in rows if row[1] == "backfill")
    assert set(days) <= set(LANDED_DAYS), days

    # Both "machines" ran dbt builds (else nothing here crossed machines).
    hosts = d.query(
        "select hostname from task_instance where dag_id = ? and task_id = 'dbt_build'",
        (TUTORIAL,),
    )
    assert {h for (h,) in hosts} == set(WORKERS), hosts

    # No two dbt builds at the same time, and the turns are visible in the logs.
    logs = {run_id: d.task_log(run_id) for run_id in runs}
    windows = sorted((*dbt_window(logs[r]), r) for r in runs)
    for (_, end, before), (start, _, after) in itertools.pairwise(windows):
        assert end <= start, f"the dbt builds of {before} and {after} overlapped: {windows}"
    # Of the two that waited for the test, one then waited for the other, and said so.
    waited_for_run = [
        (waiter, holder)
        for waiter, log in logs.items()
        for line in log.splitlines()
        if "for the lease of" in line and "held by" in line
        for holder in runs
        if holder != waiter and f"run_id={holder}" in line
    ]
    assert waited_for_run, [log[-3000:] for log in logs.values() if f"({GATE})" in log]

    # The first run in turn rebuilt the orders chain (new rows); the later ones reused it.
    order = [r for _, _, r in windows]
    built = {r: {short(u) for u in d.xcom(r)["built"]} for r in runs}
    assert ORDERS_CHAIN | {"fct_daily_revenue"} <= built[order[0]], built
    for later in order[1:]:
        assert built[later] == {"fct_daily_revenue"}, (later, built)

    # Every interval holds its data: the landed orders, aggregated from the rebuilt chain.
    within = "order_date in (" + ", ".join(f"'{day}'" for day in days) + ")"
    revenue = {
        str(day): (int(count), amount)
        for day, count, amount in d.ws.sql(
            "select order_date, order_count, revenue from analytics.fct_daily_revenue "
            f"where {within}"
        )
    }
    expected = {
        str(day): (int(count), amount)
        for day, count, amount in d.ws.sql(
            "select order_date, count(*), sum(total_amount) from analytics.int_orders_enriched "
            f"where status <> 'returned' and {within} group by order_date"
        )
    }
    assert revenue == expected and set(revenue) == set(days), (revenue, expected)
    assert all(count == ORDERS_PER_DAY for count, _ in revenue.values()), revenue

    # The state holds every run's updates: each node as its last builder recorded it.
    state = d.state()
    for name in ORDERS_CHAIN:
        assert state[name]["run"]["run_id"] == order[0], (name, state[name]["run"])
    assert state["fct_daily_revenue"]["run"]["run_id"] == order[-1]
    assert state["fct_daily_revenue"]["status"] == "success"
    for name, machine in d.worker_dirs.items():
        assert tree_digest(machine / "project") == digests[name], f"{name} changed the project"
