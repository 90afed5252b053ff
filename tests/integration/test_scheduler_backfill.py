"""The tutorial DAGs under a real Airflow 3 scheduler: backfill, manual runs, Asset scheduling.

One Airflow deployment for the module, as ``airflow standalone`` would run it, minus the
triggerer (no deferrable task here): ``airflow api-server`` (the execution API the tasks talk
to), ``airflow dag-processor`` and ``airflow scheduler`` with the LocalExecutor, all on SQLite
in a temp ``AIRFLOW_HOME`` and on 127.0.0.1. The dags folder holds the tutorial DAG and the
consumer DAG as shipped; the manifest they declare their Assets from is produced at "deploy
time" with ``dbt parse --target-path`` (as ``scripts/tutorial.sh`` does).

Unpausing the tutorial DAG makes the scheduler create its latest scheduled run (catchup is
off): that first, normal run builds the fresh warehouse and the state, and triggers the
consumer. The tests read every result back from the metadata DB.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.airflow_deployment import (
    HEARTBEAT_SEC,
    STARTUP_TIMEOUT,
    ApiError,
    Deployment,
    scheduler_env,
)
from support.airflow_env import AirflowEnv, free_port, fresh_workspace, tutorial_env
from support.tutorial import REPO, STATEFUL, Workspace, day_ago, short, tree_digest

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import run_lock_path
from airflow_provider_orchestra_dbt.execution.run_lock import RunLock

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TUTORIAL = "orchestra_dbt_tutorial"
CONSUMER = "orchestra_dbt_consumer"
FCT_ORDERS = "tutorial.main.fct_orders"
FCT_DAILY_REVENUE = "tutorial.main.fct_daily_revenue"
FINISHED = ("success", "failed")
GATE = "test gate"
RUN_TIMEOUT = 240.0
BACKFILL_TIMEOUT = 360.0


def _model_assets(unique_ids: list[str]) -> set[str]:
    """The Asset names the operator emits for what it built: models only, in schema ``main``."""
    return {f"tutorial.main.{short(u)}" for u in unique_ids if u.startswith("model.")}


def _decisions(nodes: list[dict[str, Any]], decision: str) -> dict[str, str]:
    return {
        short(n["unique_id"]): n["reason"]
        for n in nodes
        if n["decision"] == decision and n["resource_type"] not in ("test", "unit_test")
    }


def _db_time(value: str) -> datetime:
    """A timestamp as Airflow stores it in SQLite (UTC, naive)."""
    return datetime.fromisoformat(value)


@dataclass
class TutorialDeployment(Deployment):
    """A running Airflow (scheduler, dag-processor, API server) around one tutorial workspace."""

    ws: Workspace = field(kw_only=True)
    project_digest: dict[str, str] = field(default_factory=dict)
    first_run: str = ""

    def trigger(self, run_id: str | None = None, logical_date: str | None = None) -> Any:
        """A manual run of the tutorial (``POST /dagRuns``, what ``airflow dags trigger`` does),
        with a run id and a logical date if given; the new DAG run as the API returns it.

        The data interval is the one the DAG's timetable infers from the logical date, if any.
        """
        body: dict[str, Any] = {"logical_date": logical_date}
        if run_id is not None:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/api/v2/dags/{TUTORIAL}/dagRuns", body)

    # -- the metadata DB ---------------------------------------------------------------------

    def run_row(self, run_id: str, dag_id: str = TUTORIAL) -> dict[str, Any]:
        cols = (
            "id", "run_id", "run_type", "state", "logical_date", "data_interval_start",
            "data_interval_end", "run_after", "end_date", "backfill_id",
        )  # fmt: skip
        rows = self.query(
            f"select {', '.join(cols)} from dag_run where dag_id = ? and run_id = ?",
            (dag_id, run_id),
        )
        assert len(rows) == 1, f"{dag_id} {run_id}: {len(rows)} DAG runs"
        return dict(zip(cols, rows[0], strict=True))

    def wait_finished(self, run_ids: list[str], timeout: float = RUN_TIMEOUT) -> None:
        def done() -> bool:
            states = [self.run_row(r)["state"] for r in run_ids]
            return all(s in FINISHED for s in states)

        self.wait(done, timeout, f"{TUTORIAL} runs {run_ids} to finish")

    def xcom(
        self,
        run_id: str,
        key: str = "return_value",
        *,
        dag_id: str = TUTORIAL,
        task_id: str = "dbt_build",
    ) -> Any:
        rows = self.query(
            "select value from xcom where dag_id = ? and run_id = ? and task_id = ? "
            "and map_index = -1 and key = ?",
            (dag_id, run_id, task_id, key),
        )
        assert rows, f"no XCom {key!r} for {dag_id}.{task_id} in {run_id}"
        return json.loads(rows[0][0])

    def rendered_vars(self, run_id: str) -> dict[str, Any]:
        rows = self.query(
            "select rendered_fields from rendered_task_instance_fields "
            "where dag_id = ? and run_id = ? and task_id = 'dbt_build' and map_index = -1",
            (TUTORIAL, run_id),
        )
        assert rows, f"no rendered fields for dbt_build in {run_id}"
        rendered: dict[str, Any] = json.loads(rows[0][0])["vars"]
        return rendered

    def task_log(self, run_id: str, task_id: str = "dbt_build") -> str:
        path = (
            self.env.home / "logs" / f"dag_id={TUTORIAL}" / f"run_id={run_id}"
            / f"task_id={task_id}" / "attempt=1.log"
        )  # fmt: skip
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Asset events recorded for a tutorial run: Asset name -> the event's extra."""
        rows = self.query(
            "select a.name, e.extra, e.source_task_id from asset_event e "
            "join asset a on a.id = e.asset_id where e.source_dag_id = ? and e.source_run_id = ?",
            (TUTORIAL, run_id),
        )
        assert all(task == "dbt_build" for _, _, task in rows), rows
        names = [name for name, _, _ in rows]
        assert len(names) == len(set(names)), f"duplicate events in {run_id}: {names}"
        return {name: json.loads(extra) for name, extra, _ in rows}

    def consumer_runs(self, triggered_by: str | None = None) -> dict[str, dict[str, Any]]:
        """Consumer runs (run_id -> row); with ``triggered_by``, only those a run's events queued.

        Which events triggered a run is the ``dagrun_asset_event`` association.
        """
        sql = (
            "select dr.run_id, dr.run_type, dr.state, group_concat(a.name), "
            "group_concat(e.source_run_id) from dag_run dr "
            "left join dagrun_asset_event x on x.dag_run_id = dr.id "
            "left join asset_event e on e.id = x.event_id "
            "left join asset a on a.id = e.asset_id where dr.dag_id = ? group by dr.id"
        )
        found = {}
        for run_id, run_type, state, assets, sources in self.query(sql, (CONSUMER,)):
            source_runs = set((sources or "").split(",")) - {""}
            if triggered_by is None or triggered_by in source_runs:
                found[run_id] = {
                    "run_type": run_type,
                    "state": state,
                    "assets": set((assets or "").split(",")) - {""},
                    "source_runs": source_runs,
                }
        return found

    def queued_for_consumer(self) -> list[tuple[Any, ...]]:
        return self.query(
            "select asset_id, created_at from asset_dag_run_queue where target_dag_id = ?",
            (CONSUMER,),
        )

    def wait_scheduler_loops(self, after: str, loops: int = 2) -> None:
        """Wait until the scheduler heartbeat twice after ``after`` (a DB timestamp).

        The scheduler heartbeats at the end of a loop (at most every HEARTBEAT_SEC): the
        second heartbeat after ``after`` closes a loop that started after ``after`` and so
        looked at the Asset queue (``_create_dagruns_for_dags``) with everything recorded by
        then. A robust "the scheduler had its chance" signal, unlike a sleep.
        """
        seen: set[str] = set()

        def beats() -> bool:
            rows = self.query(
                "select latest_heartbeat from job where job_type = 'SchedulerJob' "
                "and state = 'running'"
            )
            seen.update(str(r[0]) for r in rows if r[0] and str(r[0]) > after)
            return len(seen) >= loops

        self.wait(beats, 20 * HEARTBEAT_SEC + 30, f"{loops} scheduler loops after {after}")

    def wait_consumer_run_from(self, run_id: str) -> dict[str, Any]:
        """The consumer run the events of ``run_id`` triggered, once it finished."""

        def finished() -> dict[str, dict[str, Any]] | None:
            runs = self.consumer_runs(triggered_by=run_id)
            return runs if runs and all(r["state"] in FINISHED for r in runs.values()) else None

        runs = self.wait(finished, RUN_TIMEOUT, f"the consumer run triggered by {run_id}")
        assert len(runs) == 1, f"{run_id} triggered {len(runs)} consumer runs: {runs}"
        ((consumer_run_id, row),) = runs.items()
        return row | {"run_id": consumer_run_id}


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, _dbt_cache: None
) -> Iterator[TutorialDeployment]:
    root = tmp_path_factory.mktemp("scheduler")
    ws = fresh_workspace(root / "ws")
    logs = root / "logs"
    logs.mkdir()
    target = root / "target"

    # Deploy step (scripts/tutorial.sh): the manifest, outside the project; in parallel with
    # the metadata DB migration.
    dbt_env = os.environ | tutorial_env(ws) | {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    dbt = Path(sys.executable).parent / "dbt"
    parse_argv = [
        str(dbt), "parse", "--quiet",
        "--project-dir", str(ws.project), "--profiles-dir", str(ws.project),
        "--target-path", str(target), "--log-path", str(root / "dbt-logs"),
    ]  # fmt: skip
    with (logs / "dbt-parse.log").open("wb") as sink:
        parse = subprocess.Popen(
            parse_argv,
            env={k: v for k, v in dbt_env.items() if not k.startswith("AIRFLOW")},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        env = AirflowEnv.create(root / "airflow")
        assert parse.wait(timeout=300) == 0, (logs / "dbt-parse.log").read_text()
    finally:
        if parse.poll() is None:
            parse.kill()
            parse.wait()
    assert (target / "manifest.json").is_file()
    for dag_file in ("orchestra_dbt_tutorial.py", "orchestra_dbt_consumer.py"):
        env.add_dag(dag_file, (REPO / "dags" / dag_file).read_text())

    # SQLite lets one writer in at a time and Python's sqlite3 gives up after 5 s; with a
    # scheduler, a dag-processor, an API server and three parallel runs on 2 busy cores, a
    # writer (e.g. `backfill create`) can wait longer than that. $AIRFLOW_HOME/config is on
    # every Airflow process's sys.path.
    (env.home / "config").mkdir(exist_ok=True)
    (env.home / "config" / "orchestra_test_sqlite.py").write_text(
        'CONNECT_ARGS = {"timeout": 60}\n'
    )
    port = free_port()
    extra = (
        tutorial_env(ws)
        | scheduler_env(port)
        | {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "orchestra_test_sqlite.CONNECT_ARGS",
            "ORCHESTRA_DBT_TUTORIAL_MANIFEST": str(target / "manifest.json"),
            # What `airflow standalone` runs on SQLite: the LocalExecutor (3.x has no
            # SequentialExecutor); tasks reach the metadata DB through the execution API only.
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
    )
    deployment = TutorialDeployment(env=env, ws=ws, extra=extra, logs=logs)
    deployment.project_digest = tree_digest(ws.project)
    try:
        deployment.start("dag-processor", "dag-processor")
        # No log-serving sub-process: logs are files under AIRFLOW_HOME, and nothing else binds.
        deployment.start("scheduler", "scheduler", "--skip-serve-logs")
        deployment.start_api_server(port)
        deployment.wait_parsed({TUTORIAL, CONSUMER})

        def consumer_on_asset() -> bool:
            return bool(
                deployment.query(
                    "select 1 from dag_schedule_asset_reference r "
                    "join asset a on a.id = r.asset_id where r.dag_id = ? and a.name = ?",
                    (CONSUMER, FCT_ORDERS),
                )
            )

        deployment.wait(consumer_on_asset, STARTUP_TIMEOUT, "the consumer to listen")
        # The consumer first, so that it listens before the tutorial's first run emits anything.
        for dag_id in (CONSUMER, TUTORIAL):
            deployment.unpause(dag_id)
        assert env.query("select count(*) from dag where is_paused = 0") == [(2,)]

        # Catchup is off: the scheduler creates one run, for the latest interval.
        def first_run() -> str | None:
            rows = env.query(
                "select run_id from dag_run where dag_id = ? and run_type = 'scheduled'",
                (TUTORIAL,),
            )
            return str(rows[0][0]) if rows else None

        deployment.first_run = deployment.wait(first_run, 60, "the first scheduled run")
        deployment.wait_finished([deployment.first_run])
        yield deployment
    finally:
        deployment.stop()


def create_backfill(d: TutorialDeployment, start: str, end: str) -> tuple[Any, int]:
    """A backfill of the tutorial for [start, end] (UTC days), three runs at once, as ``airflow
    backfill create --dag-id ... --from-date start --to-date end --max-active-runs 3`` would
    create it (``POST /backfills``; the reprocess behavior is the default, ``none``); the
    API's answer and the backfill's id.

    On a loaded machine SQLite may refuse the request's writes ("database is locked": the
    scheduler and the API server write all the time; the API answers 503). Airflow then removes
    what it created of the backfill so that the user can try again, which is what this does, if
    nothing is left.
    """
    body = {
        "dag_id": TUTORIAL,
        "from_date": _utc(start),
        "to_date": _utc(end),
        "max_active_runs": 3,
        "run_backwards": False,
        "reprocess_behavior": "none",
    }

    def created() -> list[tuple[Any, ...]]:
        query = "select id from backfill where dag_id = ? and from_date like ?"
        return d.env.query(query, (TUTORIAL, f"{start}%"))

    for attempt in range(3):
        try:
            backfill = d.api("POST", "/api/v2/backfills", body)
            break
        except ApiError as exc:
            if attempt == 2 or exc.status != 503 or created():
                raise
    ((backfill_id,),) = created()
    assert backfill["id"] == backfill_id, backfill
    return backfill, int(backfill_id)


def _utc(day: str) -> str:
    """``2026-01-03`` as the CLI reads it (midnight, UTC: Airflow's default time zone)."""
    return datetime.fromisoformat(day).replace(tzinfo=UTC).isoformat()


# -- 1. backfill ---------------------------------------------------------------------------------


def test_backfill_rebuilds_only_the_interval_model_and_emits_only_its_asset(
    deployment: TutorialDeployment,
) -> None:
    d = deployment
    first = d.first_run
    assert d.run_row(first)["state"] == "success", d.task_log(first)
    summary = d.xcom(first)
    assert {short(u) for u in summary["built"]} == STATEFUL, "the first run builds everything"
    events = d.events(first)
    assert set(events) == _model_assets(summary["built"]) and FCT_ORDERS in events
    consumer = d.wait_consumer_run_from(first)
    assert consumer["run_type"] == "asset_triggered" and consumer["state"] == "success"
    assert consumer["assets"] == {FCT_ORDERS}

    # The test holds the runs' lock while the backfill starts, so that its runs are known to
    # overlap (two of them wait at once); then it lets go, and the run lock takes their dbt
    # builds in turn.
    config = DbtRunConfig.create(
        project_dir=d.ws.project, profiles_dir=d.ws.project, target="duckdb"
    )
    lock_path = run_lock_path(config)
    assert lock_path.is_file(), f"the first run took no lock at {lock_path}"
    gate = RunLock(
        lock_path, what="the tutorial", timeout=0, log=logging.getLogger(GATE), label=GATE
    )
    gate.acquire()
    try:
        result, backfill_id = create_backfill(d, "2026-01-03", "2026-01-05")
        runs = [
            str(r[0])
            for r in d.env.query(
                "select run_id from dag_run where backfill_id = ? order by logical_date",
                (backfill_id,),
            )
        ]
        assert len(runs) == 3, json.dumps(result)

        def two_wait() -> bool:
            return sum(f"({GATE})" in d.task_log(r) for r in runs) >= 2

        d.wait(two_wait, BACKFILL_TIMEOUT, "two backfill runs to wait for the run lock")
    finally:
        gate.release()
    d.wait_finished(runs, timeout=BACKFILL_TIMEOUT)

    for run_id, day in zip(runs, ("2026-01-03", "2026-01-04", "2026-01-05"), strict=True):
        row = d.run_row(run_id)
        assert row["run_type"] == "backfill" and row["logical_date"].startswith(day), row
        assert row["state"] == "success", d.task_log(run_id)[-6000:]
        # The vars are the run's data interval: one whole day, [day, next day).
        next_day = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
        assert row["data_interval_start"].startswith(day), row
        assert d.rendered_vars(run_id) == {
            "data_interval_start": day,
            "data_interval_end": next_day,
        }
        summary = d.xcom(run_id)
        assert summary["success"] is True and summary["run"]["run_id"] == run_id
        assert [short(u) for u in summary["built"]] == ["fct_daily_revenue"]
        assert summary["counts"]["built"] == 1 and summary["counts"]["reused"] == 14
        nodes = d.xcom(run_id, "orchestra_dbt_nodes")
        assert _decisions(nodes, "build") == {"fct_daily_revenue": "code changed (vars)"}
        assert set(_decisions(nodes, "reuse")) == STATEFUL - {"fct_daily_revenue"}
        # Asset events: only the model this run rebuilt, stamped with this dbt invocation.
        events = d.events(run_id)
        assert set(events) == {FCT_DAILY_REVENUE}
        assert events[FCT_DAILY_REVENUE]["dbt_invocation_id"] == summary["invocation_id"]
        assert events[FCT_DAILY_REVENUE]["unique_id"] == summary["built"][0]

    # fct_orders was reused by every backfill run: no consumer run may come of them.
    d.wait_scheduler_loops(after=max(d.run_row(r)["end_date"] for r in runs))
    for run_id in runs:
        assert d.consumer_runs(triggered_by=run_id) == {}
    assert d.queued_for_consumer() == []
    assert tree_digest(d.ws.project) == d.project_digest


# -- 2. a run without a logical date ---------------------------------------------------------------


def test_run_without_logical_date_falls_back_to_run_after(deployment: TutorialDeployment) -> None:
    d = deployment
    triggered = d.trigger()
    run_id = triggered["dag_run_id"]
    assert triggered["logical_date"] is None
    d.wait_finished([run_id])

    row = d.run_row(run_id)
    assert row["run_type"] == "manual"
    assert row["logical_date"] is None and row["data_interval_start"] is None
    assert row["state"] == "success", d.task_log(run_id)[-6000:]
    run_after = _db_time(row["run_after"])
    assert d.rendered_vars(run_id) == {
        "data_interval_start": (run_after - timedelta(days=1)).date().isoformat(),
        "data_interval_end": run_after.date().isoformat(),
    }
    summary = d.xcom(run_id)
    assert summary["success"] is True
    nodes = d.xcom(run_id, "orchestra_dbt_nodes")
    assert _decisions(nodes, "build").get("fct_daily_revenue") == "code changed (vars)"
    assert set(d.events(run_id)) == _model_assets(summary["built"])


# -- 3. the Asset-scheduled consumer ---------------------------------------------------------------


def test_consumer_runs_after_fct_orders_is_rebuilt_and_not_after_it_is_reused(
    deployment: TutorialDeployment,
) -> None:
    d = deployment
    consumers_before = set(d.consumer_runs())
    d.ws.append("orders", 3)  # new raw orders: fct_orders must be rebuilt
    # fct_orders inherits mart_customer_revenue's 1-minute build_after: make the last build
    # old enough that this does not depend on how fast the earlier tests ran.
    d.ws.set_built_at(day_ago())

    rebuilt, reused = "consumer_check_rebuild", "consumer_check_reuse"
    d.trigger(rebuilt, "2026-02-01T00:00:00+00:00")
    d.wait_finished([rebuilt])
    assert d.run_row(rebuilt)["state"] == "success", d.task_log(rebuilt)[-6000:]
    summary = d.xcom(rebuilt)
    built = {short(u) for u in summary["built"]}
    assert {"stg_orders", "int_orders_enriched", "fct_orders"} <= built
    events = d.events(rebuilt)
    assert set(events) == _model_assets(summary["built"])
    fct_orders_event = events[FCT_ORDERS]
    assert fct_orders_event["unique_id"] == "model.orchestra_tutorial.fct_orders"
    assert fct_orders_event["dbt_invocation_id"] == summary["invocation_id"]

    consumer = d.wait_consumer_run_from(rebuilt)
    assert consumer["run_type"] == "asset_triggered" and consumer["state"] == "success"
    assert consumer["assets"] == {FCT_ORDERS} and consumer["source_runs"] == {rebuilt}
    task_state = d.env.query(
        "select state from task_instance where dag_id = ? and run_id = ? "
        "and task_id = 'report_on_orders'",
        (CONSUMER, consumer["run_id"]),
    )
    assert task_state == [("success",)]
    # The consumer read the event through inlet_events and returned its extra.
    report = d.xcom(consumer["run_id"], dag_id=CONSUMER, task_id="report_on_orders")
    assert report == fct_orders_event

    # Nothing new: the next run reuses fct_orders, emits no event for it, triggers nothing.
    d.trigger(reused, "2026-02-02T00:00:00+00:00")
    d.wait_finished([reused])
    row = d.run_row(reused)
    assert row["state"] == "success", d.task_log(reused)[-6000:]
    summary = d.xcom(reused)
    assert "fct_orders" not in {short(u) for u in summary["built"]}
    assert "fct_orders" in _decisions(d.xcom(reused, "orchestra_dbt_nodes"), "reuse")
    assert FCT_ORDERS not in d.events(reused)
    assert set(d.events(reused)) == _model_assets(summary["built"])
    d.wait_scheduler_loops(after=row["end_date"])
    assert d.consumer_runs(triggered_by=reused) == {}
    assert set(d.consumer_runs()) - consumers_before == {consumer["run_id"]}
    assert d.queued_for_consumer() == []
    assert tree_digest(d.ws.project) == d.project_digest
