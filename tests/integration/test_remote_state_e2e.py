"""OrchestraDbtOperator with its state behind an Airflow connection: Orchestra HTTP and S3 (moto).

One DAG holds a dbt task per backend, each on its own copy of the tutorial (project and DuckDB
warehouse), and runs twice with real ``airflow dags test``: the first run builds everything
and records the state in the backend, the second reuses everything but the model that reads
the data interval. The known secret of each connection must appear nowhere: task logs, XCom,
rendered template fields. Both backends share the two runs because each ``dags test`` costs
about 10 s of CPU in Airflow alone; the tests then read what the runs left, per backend.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support.airflow_env import AirflowEnv
from support.orchestra_server import OrchestraStateServer
from support.s3_server import MotoS3Server
from support.tutorial import STATEFUL, Baseline, Workspace, short

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG = "orchestra_dbt_remote_state"
BACKENDS = ("s3", "http")
API_KEY = "orch-api-key-E2E-7c1d9f3a"
AWS_SECRET = "aws-secret-E2E-b84e02f1c6"
AWS_KEY_ID = "AKIAE2ETESTKEY00001"
STATE_KEY = "dbt/state.json"
FIRST_DATE, SECOND_DATE = "2026-03-01", "2026-03-02"

# The tutorial DAG's dbt task once per backend. A task's project comes from the environment
# when the file is parsed and its warehouse from the operator's ``env`` (the profile reads
# TUTORIAL_DUCKDB_PATH): one process runs both tasks, so neither can come from the process
# environment. The tutorial's land_raw_data is left out: the copied warehouses have raw data.
DAG_SOURCE = f"""
import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator

with DAG(
    dag_id={DAG!r},
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    for backend in {BACKENDS!r}:
        prefix = f"ORCHESTRA_E2E_{{backend.upper()}}"
        project = Path(os.environ.get(f"{{prefix}}_DIR", "/nonexistent"))
        warehouse = os.environ.get(f"{{prefix}}_DUCKDB_PATH", "/nonexistent/tutorial.duckdb")
        OrchestraDbtOperator(
            task_id=f"dbt_build_{{backend}}",
            project_dir=project,
            profiles_dir=project,
            vars={{
                "data_interval_start": "{{{{ data_interval_start | ds }}}}",
                "data_interval_end": "{{{{ data_interval_end | ds }}}}",
            }},
            env={{"TUTORIAL_DUCKDB_PATH": warehouse}},
            state_conn_id=f"orchestra_dbt_e2e_{{backend}}",
        )
"""


def conn_id(backend: str) -> str:
    return f"orchestra_dbt_e2e_{backend}"


def task_id(backend: str) -> str:
    return f"dbt_build_{backend}"


@dataclass
class Backend:
    """One backend's connection, its workspace, and a reader of the state it holds."""

    name: str
    secret: str
    connection: dict[str, Any]
    entries: Callable[[], dict[str, Any]]
    ws: Workspace
    bucket: str | None = None
    s3_client: Any = None


@dataclass
class Runs:
    """What the two ``dags test`` runs left, and what was seen between them."""

    backends: dict[str, Backend]
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    # Read right after the first run: the second one rewrites the state.
    after_first: dict[str, set[str]]
    local_state_after_first: bool


def http_backend(ws: Workspace, stack: list[Callable[[], None]]) -> Backend:
    server = OrchestraStateServer(token=API_KEY).start()
    stack.append(server.stop)
    connection = {
        "conn_type": "orchestra_dbt",
        "password": API_KEY,
        "extra": {"backend": "http", "base_url": server.base_url, "timeout": 10},
    }
    return Backend("http", API_KEY, connection, lambda: server.entries, ws)


def s3_backend(ws: Workspace, s3_server: MotoS3Server) -> Backend:
    params = s3_server.create_bucket()
    connection = {
        "conn_type": "orchestra_dbt",
        "login": AWS_KEY_ID,
        "extra": {
            "backend": "s3",
            "state_uri": f"s3://{params.bucket}/{STATE_KEY}",
            "endpoint_url": params.endpoint_url,
            "region_name": params.region_name,
            "aws_secret_access_key": AWS_SECRET,
        },
    }
    client = params.client()

    def entries() -> dict[str, Any]:
        body = client.get_object(Bucket=params.bucket, Key=STATE_KEY)["Body"].read()
        state: dict[str, Any] = json.loads(body)["state"]
        return state

    return Backend("s3", AWS_SECRET, connection, entries, ws, params.bucket, client)


def _entry_names(backend: Backend) -> set[str]:
    try:
        return {short(e["unique_id"]) for e in backend.entries().values()}
    except Exception as exc:  # nothing recorded: the test that reads it says so
        return {f"<no state: {exc!r}>"}


@pytest.fixture(scope="module")
def runs(
    airflow_env: AirflowEnv,
    duckdb_baseline: Baseline,
    s3_server: MotoS3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    """Both ``dags test`` runs of the module, shared by its tests."""
    root = tmp_path_factory.mktemp("remote-state")
    cleanup: list[Callable[[], None]] = []
    try:
        backends: dict[str, Backend] = {}
        for name in BACKENDS:
            # A workspace each, as when each backend had runs of its own: DuckDB locks its
            # file, and one task's builds must not change what the other task finds.
            ws = duckdb_baseline.copy_to(root / f"ws-{name}")
            ws.state_file.unlink()  # the state lives behind the connection, not in a file
            if name == "http":
                backends[name] = http_backend(ws, cleanup)
            else:
                backends[name] = s3_backend(ws, s3_server)
        # Where a task without a connection would keep state: it must stay absent.
        local_state_file = root / "local-state.json"
        env = {"ORCHESTRA_DBT_STATE_FILE": str(local_state_file)}
        for b in backends.values():
            prefix = f"ORCHESTRA_E2E_{b.name.upper()}"
            env[f"{prefix}_DIR"] = str(b.ws.project)
            env[f"{prefix}_DUCKDB_PATH"] = str(b.ws.warehouse)
            env[f"AIRFLOW_CONN_{conn_id(b.name).upper()}"] = json.dumps(b.connection)
        airflow_env.add_dag(f"{DAG}.py", DAG_SOURCE)

        first = airflow_env.dags_test(DAG, FIRST_DATE, env)
        after_first = {name: _entry_names(b) for name, b in backends.items()}
        local_state_after_first = local_state_file.exists()
        second = airflow_env.dags_test(DAG, SECOND_DATE, env)
        yield Runs(backends, first, second, after_first, local_state_after_first)
    finally:
        for stop in cleanup:
            stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_run_builds_everything_and_records_the_state_behind_the_connection(
    runs: Runs, backend: str
) -> None:
    assert runs.first.returncode == 0, runs.first.stdout[-3000:]
    assert runs.after_first[backend] == STATEFUL
    assert not runs.local_state_after_first, "a task kept its state in a local file"
    assert not runs.backends[backend].ws.state_file.exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_run_reuses_everything_but_the_data_interval_model(
    runs: Runs, airflow_env: AirflowEnv, backend: str
) -> None:
    assert runs.second.returncode == 0, runs.second.stdout[-3000:]
    summary = airflow_env.xcom(DAG, task_id(backend), logical_date=SECOND_DATE)
    # Only fct_daily_revenue reads the (new) data interval.
    assert summary["counts"]["built"] == 1 and summary["counts"]["reused"] == 14
    # The state names itself for the UI plugin; a picture on S3 is there for any api-server.
    assert summary["state"] == {"conn_id": conn_id(backend), "local_file": None}
    b = runs.backends[backend]
    if b.bucket is not None:
        assert summary["picture"].startswith(f"s3://{b.bucket}/dbt/orchestra_dbt_pictures/{DAG}/")
        key = summary["picture"].removeprefix(f"s3://{b.bucket}/")
        picture = b.s3_client.get_object(Bucket=b.bucket, Key=key)["Body"].read().decode()
        assert "fct_daily_revenue" in picture
    else:
        assert not summary["picture"].startswith("s3://")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_connection_secret_leaks_nowhere(
    runs: Runs, airflow_env: AirflowEnv, backend: str
) -> None:
    # Both runs must have happened, or an absent secret would prove nothing.
    assert runs.first.returncode == 0 and runs.second.returncode == 0
    leaks = {
        "task logs": runs.first.stdout + runs.second.stdout,
        "xcom": json.dumps(airflow_env.query("select value from xcom where dag_id = ?", [DAG])),
        "rendered fields": json.dumps(
            airflow_env.query(
                "select rendered_fields from rendered_task_instance_fields where dag_id = ?",
                [DAG],
            )
        ),
    }
    secret = runs.backends[backend].secret
    for where, text in leaks.items():
        assert secret not in text, f"the {backend} secret leaked into {where}"
