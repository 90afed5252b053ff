"""OrchestraDbtCloudOperator through real Airflow 3 (``airflow dags test``) and the fake dbt Cloud.

The example DAG as shipped (``dags/orchestra_dbt_cloud.py``) runs against the fake dbt Cloud
API (tests/support/dbt_cloud_server.py), which runs real dbt on the tutorial's DuckDB. The
task defers while dbt Cloud builds (``dags test`` runs the trigger in-process) and resumes
to record the outcome; a second run triggers no build run at all; a run past its
``execution_timeout`` is cancelled in dbt Cloud, not left building.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.airflow_env import AirflowEnv
from support.dbt_cloud_server import CANCELLED, SLOW_PYTHON_MODEL, DbtCloudServer
from support.tutorial import Baseline, Workspace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "orchestra_dbt_cloud"
TASK_ID = "dbt_cloud_build"
JOB = 21
EVENTS = (
    "select a.name from asset_event e join asset a on a.id = e.asset_id where e.source_dag_id = ?"
)
VARS = "{revenue_start_date: '1900-01-01', data_interval_start: null, data_interval_end: null}"


@pytest.fixture
def cloud(
    baseline: Baseline, tmp_path: Path, airflow_env: AirflowEnv
) -> Iterator[tuple[DbtCloudServer, Workspace, dict[str, str]]]:
    ws = baseline.copy_to(tmp_path / "ws")
    example = REPO / "dags" / f"{DAG_ID}.py"
    airflow_env.add_dag(example.name, example.read_text())
    with DbtCloudServer() as server:
        server.add_job(JOB, ws.project, {"TUTORIAL_DUCKDB_PATH": str(ws.warehouse)})
        server.jobs[JOB].steps = [f'dbt build --vars "{VARS}"']
        env = {
            "REQUESTS_CA_BUNDLE": str(server.ca_file),
            "SSL_CERT_FILE": str(server.ca_file),
            "AIRFLOW_CONN_DBT_CLOUD_DEFAULT": json.dumps(server.connection()),
            "ORCHESTRA_DBT_CLOUD_JOB_ID": str(JOB),
            "ORCHESTRA_DBT_CLOUD_POLL_INTERVAL": "0.5",
            "ORCHESTRA_DBT_STATE_FILE": str(tmp_path / "cloud-state.json"),
        }
        yield server, ws, env


def _ok(result: Any) -> None:
    assert result.returncode == 0, f"dags test failed:\n{result.stdout[-6000:]}"


def _leaks(token: str, *texts: str) -> bool:
    encodings = (token, base64.b64encode(token.encode()).decode(), json.dumps(token)[1:-1])
    return any(e in text for text in texts for e in encodings)


def test_the_example_dag_defers_records_and_then_triggers_no_build_run(
    cloud: tuple[DbtCloudServer, Workspace, dict[str, str]], airflow_env: AirflowEnv
) -> None:
    server, _ws, env = cloud
    first = airflow_env.dags_test(DAG_ID, "2026-03-01", env)
    _ok(first)
    assert "Deferring until dbt Cloud run" in first.stdout
    summary = airflow_env.xcom(DAG_ID, TASK_ID, logical_date="2026-03-01")
    assert summary["success"] is True and summary["counts"]["built"] == 15
    runs = sorted(server.runs.values(), key=lambda r: r.id)
    assert [len(r.steps) for r in runs][:1] == [2] and len(runs) == 2
    build = runs[1]
    assert build.cause.startswith(f"Airflow {DAG_ID} / ") and TASK_ID in build.cause
    assert all(step.startswith("dbt build --select ") for step in build.steps)
    events = airflow_env.query(EVENTS, (DAG_ID,))
    assert {name.rsplit(".", 1)[-1] for (name,) in events} >= {"stg_orders", "fct_orders"}

    # Nothing changed: the plan run only, no build run.
    second = airflow_env.dags_test(DAG_ID, "2026-03-02", env)
    _ok(second)
    summary = airflow_env.xcom(DAG_ID, TASK_ID, logical_date="2026-03-02")
    assert summary["counts"]["built"] == 0 and summary["counts"]["reused"] == 15
    assert "no dbt Cloud build run is triggered" in second.stdout
    assert len(server.runs) == 3
    # Events only for models rebuilt: none this time. The picture shows the run all the same.
    assert len(airflow_env.query(EVENTS, (DAG_ID,))) == len(events)
    picture = airflow_env.xcom(DAG_ID, TASK_ID, "orchestra_dbt_picture", logical_date="2026-03-02")
    assert "stg_orders" in Path(picture).read_text()

    xcoms = airflow_env.query("select value from xcom where dag_id = ?", (DAG_ID,))
    rendered = airflow_env.query("select rendered_fields from rendered_task_instance_fields")
    assert not _leaks(
        server.token,
        first.stdout,
        second.stdout,
        *(str(v) for (v,) in xcoms),
        *(str(v) for (v,) in rendered),
    )


def test_a_run_past_execution_timeout_is_cancelled_in_dbt_cloud(
    cloud: tuple[DbtCloudServer, Workspace, dict[str, str]], airflow_env: AirflowEnv
) -> None:
    server, ws, env = cloud
    (ws.project / "models" / "slow_in_cloud.py").write_text(SLOW_PYTHON_MODEL)
    result = airflow_env.dags_test(
        DAG_ID, "2026-03-04", {**env, "ORCHESTRA_DBT_CLOUD_TIMEOUT": "45"}
    )
    assert result.returncode != 0 or "failed" in result.stdout.lower()
    build = max(server.runs.values(), key=lambda r: r.id)
    assert len(build.steps) >= 1 and build.steps[0].startswith("dbt build --select")
    assert build.status == CANCELLED, result.stdout[-4000:]
    assert "cancelling it" in result.stdout
    assert build.process is None or build.process.poll() is not None, "dbt still runs"
