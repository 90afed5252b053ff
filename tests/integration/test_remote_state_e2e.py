"""The tutorial DAG with its state behind an Airflow connection: S3 (moto) and Orchestra HTTP.

Each runs twice with real ``airflow dags test``; the second run reuses everything. The known
secret of each connection must appear nowhere: task logs, XCom, rendered template fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.airflow_env import AirflowEnv, tutorial_env
from support.orchestra_server import OrchestraStateServer
from support.s3_server import MotoS3Server
from support.tutorial import STATEFUL, Baseline, short

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG = "orchestra_dbt_tutorial"
CONN_ID = "orchestra_dbt_e2e"
API_KEY = "orch-api-key-E2E-7c1d9f3a"
AWS_SECRET = "aws-secret-E2E-b84e02f1c6"
AWS_KEY_ID = "AKIAE2ETESTKEY00001"
STATE_KEY = "dbt/state.json"


def http_backend(stack: list[Any]) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    server = OrchestraStateServer(token=API_KEY).start()
    stack.append(server.stop)
    connection = {
        "conn_type": "orchestra_dbt",
        "password": API_KEY,
        "extra": {"backend": "http", "base_url": server.base_url, "timeout": 10},
    }
    return connection, lambda: server.entries


def s3_backend(
    stack: list[Any], s3_server: MotoS3Server
) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
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

    def entries() -> dict[str, Any]:
        body = params.client().get_object(Bucket=params.bucket, Key=STATE_KEY)["Body"].read()
        state: dict[str, Any] = json.loads(body)["state"]
        return state

    return connection, entries


@pytest.mark.parametrize("backend", ["s3", "http"])
def test_tutorial_dag_keeps_state_behind_a_connection_and_leaks_no_secret(
    backend: str,
    airflow_env: AirflowEnv,
    baseline: Baseline,
    s3_server: MotoS3Server,
    tmp_path: Path,
) -> None:
    cleanup: list[Any] = []
    try:
        if backend == "http":
            connection, remote_entries = http_backend(cleanup)
        else:
            connection, remote_entries = s3_backend(cleanup, s3_server)
            bucket = connection["extra"]["state_uri"].removeprefix("s3://").split("/")[0]
            s3_client = s3_server.params(bucket).client()
        ws = baseline.copy_to(tmp_path / "ws")
        ws.state_file.unlink()  # the state lives behind the connection, not in a local file
        env = tutorial_env(ws) | {
            "ORCHESTRA_DBT_TUTORIAL_CONN_ID": CONN_ID,
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(connection),
        }
        first = airflow_env.dags_test(DAG, "2026-03-01", env)
        assert first.returncode == 0, first.stdout[-3000:]
        assert {short(e["unique_id"]) for e in remote_entries().values()} == STATEFUL
        assert not ws.state_file.exists()

        second = airflow_env.dags_test(DAG, "2026-03-02", env)
        assert second.returncode == 0, second.stdout[-3000:]
        summary = airflow_env.xcom(DAG, "dbt_build", logical_date="2026-03-02")
        # Only fct_daily_revenue reads the (new) data interval.
        assert summary["counts"]["built"] == 1 and summary["counts"]["reused"] == 14
        # The state names itself for the UI plugin; a picture on S3 is there for any api-server.
        assert summary["state"] == {"conn_id": CONN_ID, "local_file": None}
        if backend == "s3":
            assert summary["picture"].startswith(f"s3://{bucket}/dbt/orchestra_dbt_pictures/{DAG}/")
            key = summary["picture"].removeprefix(f"s3://{bucket}/")
            picture = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            assert "fct_daily_revenue" in picture
        else:
            assert not summary["picture"].startswith("s3://")

        secret = API_KEY if backend == "http" else AWS_SECRET
        leaks = {
            "task logs": first.stdout + second.stdout,
            "xcom": json.dumps(airflow_env.query("select value from xcom where dag_id = ?", [DAG])),
            "rendered fields": json.dumps(
                airflow_env.query(
                    "select rendered_fields from rendered_task_instance_fields where dag_id = ?",
                    [DAG],
                )
            ),
        }
        for where, text in leaks.items():
            assert secret not in text, f"the {backend} secret leaked into {where}"
    finally:
        for stop in cleanup:
            stop()
