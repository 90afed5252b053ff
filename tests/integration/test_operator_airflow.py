"""OrchestraDbtOperator through real Airflow 3: ``airflow dags test`` in subprocesses.

Each test runs the operator on its own copy of the tutorial project and warehouse, in one
Airflow home shared by the session (see ``support.airflow_env``). In 3.x ``dags test`` runs
tasks in its own process (no supervisor child): a SIGTERM to that process goes to the task
runner's handler, which calls ``on_kill``.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from support.airflow_env import (
    AirflowEnv,
    children,
    group_members,
    kill_group,
    process,
    stop_process_group,
    tutorial_env,
    wait_for,
)
from support.tutorial import STATEFUL, Workspace, short, tree_digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "model.orchestra_tutorial"
INT_CUSTOMER_ORDERS = "models/intermediate/int_customer_orders.sql"
BROKEN_SELECT = "select\n    no_such_column,\n"


def _ok(result: Any) -> None:
    assert result.returncode == 0, f"dags test failed:\n{result.stdout[-6000:]}"


def _models(nodes: list[dict[str, Any]], decision: str) -> dict[str, str]:
    return {
        short(n["unique_id"]): n["reason"]
        for n in nodes
        if n["decision"] == decision and n["resource_type"] not in ("test", "unit_test")
    }


def _names(unique_ids: list[str]) -> set[str]:
    return {short(u) for u in unique_ids}


def _model_names(unique_ids: list[str]) -> set[str]:
    return {short(u) for u in unique_ids if u.startswith("model.")}


# -- 1. the tutorial DAG, the day after a full build -------------------------------------------
#
# The very first run through Airflow (everything built, every model's Asset event) is the
# README's `bash scripts/tutorial.sh` (test_readme_commands.py) and the scheduler's first run
# (test_scheduler_backfill.py); here the DAG starts from a warehouse and state built before.


def test_tutorial_dag_next_day_rebuilds_only_the_interval_model(
    airflow_env: AirflowEnv, ws: Workspace
) -> None:
    digest = tree_digest(ws.project)
    env = tutorial_env(ws)
    dag = "orchestra_dbt_tutorial"
    state_before = ws.state()

    # Only fct_daily_revenue reads the data interval, so only it is rebuilt.
    run = airflow_env.dags_test(dag, "2026-02-02", env)
    _ok(run)
    summary = airflow_env.xcom(dag, "dbt_build", logical_date="2026-02-02")
    counts = summary["counts"]
    assert summary["success"] is True and _names(summary["built"]) == {"fct_daily_revenue"}
    assert counts["built"] == 1 and counts["reused"] == 14
    assert counts["tests_reused"] > 0 and counts["tests_failed"] == counts["tests_warned"] == 0
    assert 0 < counts["tests_passed"] < 5, "only fct_daily_revenue's own tests ran"
    assert summary["run"]["dag_id"] == dag
    assert summary["run"]["run_id"] == airflow_env.run_id(dag, "2026-02-02")

    nodes = airflow_env.xcom(dag, "dbt_build", "orchestra_dbt_nodes", logical_date="2026-02-02")
    assert len(nodes) == sum(counts.values()), "one entry per planned node"
    assert len({n["unique_id"] for n in nodes}) == len(nodes)
    assert all(n["decision"] in ("build", "reuse") and n["reason"] for n in nodes)
    assert set(_models(nodes, "reuse")) == STATEFUL - {"fct_daily_revenue"}
    # Built before without the interval vars, it called is_incremental(); with them it does not.
    assert _models(nodes, "build") == {"fct_daily_revenue": "code changed (macros, vars)"}

    picture = Path(
        airflow_env.xcom(dag, "dbt_build", "orchestra_dbt_picture", logical_date="2026-02-02")
    )
    assert picture.is_file() and "fct_daily_revenue" in picture.read_text()
    assert summary["picture"] == str(picture)
    link = airflow_env.xcom(
        dag, "dbt_build", "_link_OrchestraDbtRunPictureLink", logical_date="2026-02-02"
    )
    # The UI shows only web links: the button opens the picture through the provider's
    # api-server plugin (tests/unit/plugins checks that URL serves this file).
    assert link.startswith(f"/orchestra-dbt/dags/{dag}/runs/")
    assert link.endswith("/tasks/dbt_build/tries/1")
    changed = {short(e["unique_id"]) for k, e in ws.state().items() if e != state_before[k]}
    assert changed == {"fct_daily_revenue"}, "reused nodes' state must not change"
    assert ws.entry("fct_daily_revenue")["run"]["run_id"] == summary["run"]["run_id"]
    assert tree_digest(ws.project) == digest
    assert "dbt build: built=1 reused=14" in run.stdout
    # Asset events only for what was rebuilt.
    events = airflow_env.query(
        "select a.name from asset_event e join asset a on a.id = e.asset_id "
        "where e.source_dag_id = ? and e.source_run_id = ?",
        [dag, airflow_env.run_id(dag, "2026-02-02")],
    )
    assert events == [("tutorial.main.fct_daily_revenue",)]


# -- 2. a failing model, then a real task retry -------------------------------------------------

RETRY_DAG = '''
"""One dbt task with a retry; before the retry a callback records try 1 and fixes the model."""
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator

PROJECT = Path(os.environ.get("ORCHESTRA_DBT_TUTORIAL_DIR", "/nonexistent"))
EVIDENCE = Path(os.environ.get("ORCHESTRA_TEST_EVIDENCE_DIR", "/nonexistent"))


def record_try_and_fix_model(context):
    ti = context["ti"]
    EVIDENCE.mkdir(parents=True, exist_ok=True)
    evidence = {
        "try_number": ti.try_number,
        "return_value": ti.xcom_pull(task_ids=ti.task_id, key="return_value"),
        "nodes": ti.xcom_pull(task_ids=ti.task_id, key="orchestra_dbt_nodes"),
    }
    (EVIDENCE / "try1.json").write_text(json.dumps(evidence))
    shutil.copyfile(os.environ["ORCHESTRA_DBT_STATE_FILE"], EVIDENCE / "try1_state.json")
    sql = PROJECT / "models" / "intermediate" / "int_customer_orders.sql"
    sql.write_text(sql.read_text().replace("select\\n    no_such_column,\\n", "select distinct\\n"))


with DAG(
    dag_id="orchestra_dbt_retry",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
):
    OrchestraDbtOperator(
        task_id="dbt_build",
        project_dir=PROJECT,
        profiles_dir=PROJECT,
        retries=1,
        retry_delay=timedelta(0),
        on_retry_callback=record_try_and_fix_model,
    )
'''

ORDERS_DOWNSTREAM_OK = {
    "stg_orders", "int_orders_enriched", "fct_orders", "fct_daily_revenue", "mart_order_status",
}  # fmt: skip
SKIPPED_BELOW_INT_CUSTOMER_ORDERS = {
    "dim_customers", "mart_country_revenue", "mart_customer_revenue",
}  # fmt: skip


def test_failed_model_state_is_saved_and_the_real_retry_builds_only_what_failed(
    airflow_env: AirflowEnv, ws: Workspace, tmp_path: Path
) -> None:
    airflow_env.add_dag("orchestra_dbt_retry.py", RETRY_DAG)
    dag, date = "orchestra_dbt_retry", "2026-03-01"
    ws.append("orders")  # new data: try 1 has real work that succeeds around the failure
    ws.edit(INT_CUSTOMER_ORDERS, "select\n", BROKEN_SELECT)
    baseline_state = ws.state()
    evidence = tmp_path / "evidence"

    result = airflow_env.dags_test(
        dag, date, tutorial_env(ws) | {"ORCHESTRA_TEST_EVIDENCE_DIR": str(evidence)}
    )

    # Try 1 failed, try 2 (a real Airflow retry) succeeded, so the DAG run succeeded.
    _ok(result)
    assert airflow_env.tries(dag, "dbt_build", logical_date=date) == [(1, "failed"), (2, "success")]
    failed_id = f"{MODEL}.int_customer_orders"
    message = re.search(r"dbt_build: dbt build finished with failures \([^)]*\)", result.stdout)
    assert message and failed_id in message.group(0), "the operator's failure message is logged"

    # What try 1 left behind, recorded by the retry callback before the model was fixed.
    try1 = json.loads((evidence / "try1.json").read_text())
    assert try1["try_number"] == 1
    summary = try1["return_value"]
    assert summary["success"] is False and summary["failed"] == [failed_id]
    assert _names(summary["built"]) == ORDERS_DOWNSTREAM_OK
    assert _model_names(summary["skipped"]) == SKIPPED_BELOW_INT_CUSTOMER_ORDERS
    assert summary["counts"]["tests_skipped"] > 0 and summary["counts"]["tests_failed"] == 0
    assert summary["run"]["try_number"] == 1
    assert {n["decision"] for n in try1["nodes"]} <= {"build", "reuse"}
    try1_state = json.loads((evidence / "try1_state.json").read_text())["state"]
    for key, entry in try1_state.items():
        name = short(entry["unique_id"])
        if name in ORDERS_DOWNSTREAM_OK:
            assert entry["last_updated"] > baseline_state[key]["last_updated"], name
        else:  # the failed and skipped nodes keep their previous entry; so does the rest
            assert entry == baseline_state[key], name

    # Try 2: state-driven, it builds exactly the failed node and what was skipped below it.
    final = airflow_env.xcom(dag, "dbt_build", logical_date=date)
    assert final["success"] is True and final["run"]["try_number"] == 2
    assert _names(final["built"]) == {"int_customer_orders"} | SKIPPED_BELOW_INT_CUSTOMER_ORDERS
    nodes = airflow_env.xcom(dag, "dbt_build", "orchestra_dbt_nodes", logical_date=date)
    built = _models(nodes, "build")
    assert built["int_customer_orders"].startswith("code changed")
    assert "is being built in this run" in built["dim_customers"]
    assert set(_models(nodes, "reuse")) == STATEFUL - set(built)
    assert set(_models(nodes, "reuse")) >= ORDERS_DOWNSTREAM_OK, "try 1's work is reused"
    # Try 2's log says why each node is built: its plan table is the last one printed.
    try2_plan = result.stdout.rsplit("Plan (", 1)[1]
    for name, reason in built.items():
        assert re.search(rf"\.{name}\s+build\s+{re.escape(reason)}", try2_plan), name
    for key, entry in ws.state().items():
        if short(entry["unique_id"]) in set(built):
            assert entry["last_updated"] > try1_state[key]["last_updated"], key
            assert entry["run"]["try_number"] == 2, key
        else:
            assert entry == try1_state[key], key


# -- 3. SIGTERM while a slow model runs ------------------------------------------------------------

SLOW_DAG = """
import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator

PROJECT = Path(os.environ.get("ORCHESTRA_DBT_TUTORIAL_DIR", "/nonexistent"))

with DAG(
    dag_id="orchestra_dbt_slow",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
):
    OrchestraDbtOperator(
        task_id="dbt_build", project_dir=PROJECT, profiles_dir=PROJECT, select="+slow_child"
    )
"""
FAST_PARENT_SQL = """{{ config(materialized='table') }}
select customer_id from {{ ref('stg_customers') }}
"""
# About two minutes of DuckDB work on two cores (~6 s per 10^9 rows); interruptible.
SLOW_CHILD_SQL = """{{ config(materialized='table') }}
select
    (select count(*) from {{ ref('fast_parent') }}) as parents,
    count(*) as n
from range(20000000000) as t(i)
where i % 7 = 3
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_dbt_and_keeps_the_state_of_finished_nodes(
    airflow_env: AirflowEnv, ws: Workspace, tmp_path: Path
) -> None:
    airflow_env.add_dag("orchestra_dbt_slow.py", SLOW_DAG)
    (ws.project / "models" / "slow").mkdir()
    (ws.project / "models" / "slow" / "fast_parent.sql").write_text(FAST_PARENT_SQL)
    (ws.project / "models" / "slow" / "slow_child.sql").write_text(SLOW_CHILD_SQL)
    digest = tree_digest(ws.project)
    baseline_state = ws.state()
    output = tmp_path / "dags-test.log"
    proc = airflow_env.start_dags_test("orchestra_dbt_slow", "2026-04-01", output, tutorial_env(ws))
    worker_pid: int | None = None
    try:
        finished = re.compile(rf"SUCCESS\s+{re.escape(MODEL)}\.fast_parent\b")

        def parent_done() -> bool:
            assert proc.poll() is None, f"dags test ended early:\n{output.read_text()[-4000:]}"
            return bool(finished.search(output.read_text(errors="replace")))

        wait_for(parent_done, 150, "fast_parent to finish")
        (worker,) = children(proc.pid, "dbt_worker.py")
        worker_pid = worker.pid
        assert worker.pgid == worker.pid, "the worker leads its own process group"
        # The slow query is running once the worker burns CPU after its parent finished.
        start_cpu = worker.cpu_seconds
        wait_for(
            lambda: (p := process(worker.pid)) and p.cpu_seconds > start_cpu + 1.0,
            60,
            "slow_child to be executing",
        )

        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=90)
        log = output.read_text(errors="replace")

        assert returncode != 0, "the interrupted DAG run must fail"
        assert f"Stopping the dbt worker (pid {worker.pid})" in log, "on_kill stopped the worker"
        assert "dbt_build: dbt was interrupted; nodes that finished were recorded" in log
        assert group_members(worker.pgid) == [], "a process of the worker's group survived"
        assert process(worker.pid) is None

        state = json.loads(ws.state_file.read_text())["state"]
        names = {short(e["unique_id"]) for e in state.values()}
        assert "fast_parent" in names and "slow_child" not in names
        assert ws.entry("fast_parent")["status"] == "success"
        assert {k: state[k] for k in baseline_state} == baseline_state
        summary = airflow_env.xcom("orchestra_dbt_slow", "dbt_build", logical_date="2026-04-01")
        assert summary["success"] is False and summary["exit_code"] == 130
        assert _names(summary["built"]) == {"fast_parent"}
        assert _names(summary["failed"]) == {"slow_child"}, "the interrupted node is not built"
        assert tree_digest(ws.project) == digest, "the project copy was modified"
    finally:
        stop_process_group(proc)
        if worker_pid is not None and process(worker_pid) is not None:
            kill_group(worker_pid)


# -- 4. templated fields reach dbt ----------------------------------------------------------------

TEMPLATED_DAG = """
import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator

PROJECT = Path(os.environ.get("ORCHESTRA_DBT_TUTORIAL_DIR", "/nonexistent"))

with DAG(
    dag_id="orchestra_dbt_templated",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    params={"sel": "fct_daily_revenue var_probe"},
):
    OrchestraDbtOperator(
        task_id="dbt_build",
        project_dir=PROJECT,
        profiles_dir=PROJECT,
        select="{{ params.sel }}",
        vars={"revenue_start_date": "{{ ds }}"},
    )
"""
# Materialises the var as dbt saw it: proof that the rendered value reached dbt itself.
VAR_PROBE_SQL = """{{ config(materialized='table') }}
select cast('{{ var("revenue_start_date", "1900-01-01") }}' as date) as revenue_start_date
"""


def test_templated_select_and_vars_render_and_reach_dbt(
    airflow_env: AirflowEnv, ws: Workspace
) -> None:
    airflow_env.add_dag("orchestra_dbt_templated.py", TEMPLATED_DAG)
    (ws.project / "models" / "marts" / "var_probe.sql").write_text(VAR_PROBE_SQL)
    digest = tree_digest(ws.project)
    dag = "orchestra_dbt_templated"
    # One run: that the fingerprint follows the logical date from run to run is the backfill's
    # (test_scheduler_backfill.py: each interval rebuilds the model reading it).
    date = "2024-03-01"
    _ok(airflow_env.dags_test(dag, date, tutorial_env(ws)))
    rendered = airflow_env.rendered_fields(dag, "dbt_build", logical_date=date)
    assert rendered["select"] == "fct_daily_revenue var_probe"
    assert rendered["vars"] == {"revenue_start_date": date}

    nodes = airflow_env.xcom(dag, "dbt_build", "orchestra_dbt_nodes", logical_date=date)
    planned = {short(n["unique_id"]) for n in nodes if n["resource_type"] == "model"}
    assert planned == {"fct_daily_revenue", "var_probe"}, "the rendered select reached dbt"
    assert _models(nodes, "build")["fct_daily_revenue"] == "code changed (vars)"
    summary = airflow_env.xcom(dag, "dbt_build", logical_date=date)
    assert summary["success"] is True
    assert _names(summary["built"]) == {"fct_daily_revenue", "var_probe"}
    assert ws.sql("select cast(revenue_start_date as varchar) from main.var_probe") == [(date,)]
    assert tree_digest(ws.project) == digest
