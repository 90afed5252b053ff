"""State-aware dbt Cloud runs (hooks/dbt_cloud_executor.py) against the fake dbt Cloud API.

The fake runs real dbt on the tutorial's DuckDB for every step, so after each run of a
scripted sequence of changes (new source data, an edited model, a failing test, its fix) the
warehouse is compared with what plain ``dbt build`` jobs make of the same changes on a copy.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dbt_cloud_server import CANCELLED, SLOW_PYTHON_MODEL, DbtCloudServer
from support.tutorial import Baseline, Workspace, day_ago, short

from airflow_provider_orchestra_dbt.hooks.dbt_cloud_executor import (
    DbtCloudRunOptions,
    DbtCloudStateAwareRun,
)
from airflow_provider_orchestra_dbt.hooks.dbt_cloud_job import DbtCloudJob
from airflow_provider_orchestra_dbt.presentation.report import RunReport
from airflow_provider_orchestra_dbt.state import LocalFileStateStore

pytestmark = pytest.mark.integration

JOB = 12
CONN_ID = "dbt_cloud_state_aware"
# The job passes the vars its models read: dbt Cloud's values are then known, so the models
# reading them can be reused (a manifest carries no var values; docs/design.md §2.2).
VARS = "{revenue_start_date: '1900-01-01', data_interval_start: null, data_interval_end: null}"
JOB_STEPS = [f'dbt build --vars "{VARS}"']


class ListLog:
    """A run logger that keeps every formatted line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, /, *args: object) -> None:
        self.lines.append(msg % args if args else msg)

    def warning(self, msg: str, /, *args: object) -> None:
        self.info(msg, *args)


class Cloud:
    def __init__(self, server: DbtCloudServer, ws: Workspace, store_path: Path) -> None:
        self.server = server
        self.ws = ws
        self.store = LocalFileStateStore(store_path)
        self.log = ListLog()

    def age(self) -> None:
        """Move every recorded build a day back, so no build_after window holds a model back
        (those waits are the documented difference from plain dbt)."""
        aged = Workspace(self.ws.root)
        aged.state_file = self.store.path
        aged.set_built_at(day_ago())

    def job(self, **kw: Any) -> DbtCloudJob:
        return DbtCloudJob(CONN_ID, JOB, account_id=self.server.account_id, poll_interval=0.1, **kw)

    def run(self, **options: Any) -> RunReport:
        before = len(self.server.runs)
        run = DbtCloudStateAwareRun(
            self.job(timeout=300), self.store, self.log, DbtCloudRunOptions(**options)
        )
        report = run.run()
        self.triggered = len(self.server.runs) - before
        return report


@pytest.fixture
def cloud(baseline: Baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    ws = baseline.copy_to(tmp_path / "ws")
    with DbtCloudServer() as server:
        server.add_job(JOB, ws.project, {"TUTORIAL_DUCKDB_PATH": str(ws.warehouse)})
        server.jobs[JOB].steps = list(JOB_STEPS)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(server.connection()))
        yield Cloud(server, ws, tmp_path / "cloud-state.json")


def built_models(report: RunReport) -> set[str]:
    return {short(u) for u in report.ids_with("built") if not u.startswith("test.")}


class PlainJobs:
    """The reference: plain ``dbt build`` jobs on a copy of the project and warehouse."""

    def __init__(self, ws: Workspace, root: Path, server: DbtCloudServer) -> None:
        self.ws = ws
        self.root = root
        self.server = server
        # The same file name: DuckDB names the database after it.
        self.warehouse = root / "warehouse" / ws.warehouse.name
        self.warehouse.parent.mkdir(parents=True)
        shutil.copy(ws.warehouse, self.warehouse)
        self.project = root / "plain-project"

    def build(self) -> int:
        shutil.rmtree(self.project, ignore_errors=True)
        shutil.copytree(self.ws.project, self.project)
        code = self.server.dbt(
            ["build", "--vars", VARS, "--project-dir", str(self.project),
             "--profiles-dir", str(self.project), "--target-path", str(self.root / "target"),
             "--log-path", str(self.root / "logs")],
            self.project,
            os.environ | {"TUTORIAL_DUCKDB_PATH": str(self.warehouse),
                          "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
            self.root / "build.log",
        )  # fmt: skip
        assert code is not None
        return code

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        reference = Workspace(self.root)
        reference.warehouse = self.warehouse
        return reference.tables()

    def land_same_rows(self, table: str) -> None:
        """Copy raw ``table`` from the workspace: the same rows, load times included."""
        import duckdb

        con = duckdb.connect(str(self.warehouse))
        try:
            con.execute(f"attach '{self.ws.warehouse}' as landed (read_only)")
            con.execute(f"delete from raw.{table}")
            con.execute(f"insert into raw.{table} select * from landed.raw.{table}")
        finally:
            con.close()


def test_a_scripted_sequence_of_changes_ends_where_plain_dbt_build_jobs_end(
    cloud: Cloud, tmp_path: Path
) -> None:
    ws = cloud.ws
    plain = PlainJobs(ws, tmp_path / "plain", cloud.server)

    # 1. reuse=False: the job runs as configured, and its outcome is recorded.
    first = cloud.run(reuse=False, cause="Airflow dag d run r1 task t")
    assert first.success and cloud.triggered == 2  # the plan run and the build run
    assert {"stg_orders", "fct_daily_revenue", "country_codes"} <= built_models(first)
    build_run = max(cloud.server.runs.values(), key=lambda r: r.id)
    assert build_run.cause == "Airflow dag d run r1 task t"
    assert build_run.steps == JOB_STEPS
    assert plain.build() == 0
    assert ws.tables() == plain.tables()

    # 2. Nothing changed: no build run at all, only the plan run.
    second = cloud.run()
    assert second.success and cloud.triggered == 1
    assert built_models(second) == set()
    assert second.plan is not None and not second.plan.to_execute()

    cloud.age()
    # 3. New rows in raw.orders and an edited stg_customers: exactly the models downstream
    # of either, written as exact selections.
    ws.append("orders")
    plain.land_same_rows("orders")
    ws.edit("models/staging/stg_customers.sql", "name as", "trim(name) as")
    third = cloud.run()
    assert third.success and cloud.triggered == 2
    assert {"stg_orders", "stg_customers"} <= built_models(third)
    assert not {"stg_payments", "country_codes", "stg_countries"} & built_models(third)
    build_run = max(cloud.server.runs.values(), key=lambda r: r.id)
    assert all(step.startswith("dbt build --select ") for step in build_run.steps)
    assert plain.build() == 0
    assert ws.tables() == plain.tables()

    cloud.age()
    # 4. An order lands with a status stg_orders' accepted_values test refuses, and a model
    # error in stg_payments: the run fails as plain dbt does, and neither model is recorded
    # as built and tested.
    ws.sql(
        "insert into raw.orders select * replace (id + 1000 as id, 'lost' as status, "
        "(select max(_loaded_at) from raw.orders) + interval 1 minute as _loaded_at) "
        "from raw.orders order by id limit 1"
    )
    plain.land_same_rows("orders")
    ws.edit("models/staging/stg_payments.sql", "select", "select no_such_column,")
    broken = cloud.run()
    assert broken.exit_code == 1 and "dbt Cloud connection" in str(broken.error)
    statuses = {short(uid): result.status for uid, result in broken.results.items()}
    assert statuses["stg_payments"] == "error" and "skipped" in statuses.values()
    assert "fail" in {r.status for u, r in broken.results.items() if "stg_orders" in u}
    assert plain.build() == 1
    assert ws.tables() == plain.tables()

    cloud.age()
    # 5. The fixes. The bad order is deleted: raw.orders has no new data and stg_orders'
    # code is unchanged, but its tests failed, so it is built again, never reused.
    # stg_payments is back to the code of its last successful build, and dbt left its table
    # as it was when the broken build failed: it is reused, as a local run would.
    ws.sql("delete from raw.orders where status = 'lost'")
    plain.land_same_rows("orders")
    ws.edit("models/staging/stg_payments.sql", "select no_such_column,", "select")
    fixed = cloud.run()
    assert fixed.success and "stg_orders" in built_models(fixed), "a failed model was reused"
    assert "stg_payments" not in built_models(fixed)
    assert plain.build() == 0
    assert ws.tables() == plain.tables()
    settled = cloud.run()
    assert settled.success and cloud.triggered == 1

    # The API token never reaches the log.
    assert not any(cloud.server.token in line for line in cloud.log.lines)


def test_killing_the_deferred_task_cancels_the_run_and_records_nothing_unfinished(
    cloud: Cloud,
) -> None:
    """What Airflow 3.3's triggerer does when a user marks the deferred task failed."""
    from airflow_provider_orchestra_dbt.triggers.dbt_cloud import OrchestraDbtCloudRunTrigger

    (cloud.ws.project / "models" / "slow_cloud.py").write_text(SLOW_PYTHON_MODEL)
    run = DbtCloudStateAwareRun(cloud.job(), cloud.store, cloud.log, DbtCloudRunOptions())
    planned = run.plan()
    assert planned.pending is not None
    run_id = planned.pending.run_id
    trigger = OrchestraDbtCloudRunTrigger(
        conn_id=CONN_ID,
        run_id=run_id,
        end_time=time.time() + 600,
        poll_interval=0.2,
        account_id=cloud.server.account_id,
        pending=planned.pending.to_json(),
    )
    asyncio.run(trigger.on_kill())
    assert cloud.server.runs[run_id].status == CANCELLED
    process = cloud.server.runs[run_id].process
    assert process is None or process.poll() is not None, "dbt still runs"
    report = run.complete(planned.pending, run.job.run(run_id))
    assert report.exit_code == 130 and "cancelled" in str(report.error)
    assert "slow_cloud" not in {short(e.unique_id) for e in cloud.store.load().entries.values()}
