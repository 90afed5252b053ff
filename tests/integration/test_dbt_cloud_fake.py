"""The fake dbt Cloud API (tests/support/dbt_cloud_server.py) against the official DbtCloudHook.

The ground the state-aware dbt Cloud operator (issue 15) is tested on: the provider's own
client triggers a job with ``steps_override`` over HTTPS on 127.0.0.1, polls it, and reads its
artifacts, which real dbt wrote on DuckDB and which this package's readers understand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dbt_cloud_server import SUCCESS, DbtCloudServer
from support.tutorial import Baseline, Workspace, short

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.execution.manifest_graph import graph_message
from airflow_provider_orchestra_dbt.execution.run_artifacts import node_results

pytestmark = pytest.mark.integration

JOB = 11
CONN_ID = "dbt_cloud_fake"


@pytest.fixture
def cloud(
    baseline: Baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DbtCloudServer, Workspace]]:
    ws = baseline.copy_to(tmp_path / "ws")
    with DbtCloudServer() as server:
        server.add_job(JOB, ws.project, {"TUTORIAL_DUCKDB_PATH": str(ws.warehouse)})
        # The hook speaks https only: trust the fake's own certificate (requests, aiohttp).
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(server.connection()))
        yield server, ws


def test_a_job_triggered_with_steps_override_runs_them_and_serves_real_artifacts(
    cloud: tuple[DbtCloudServer, Workspace],
) -> None:
    from airflow.providers.dbt.cloud.hooks.dbt import DbtCloudHook

    server, ws = cloud
    ws.append("orders")
    hook = DbtCloudHook(CONN_ID)
    response = hook.trigger_job_run(
        job_id=JOB, cause="orchestra test", steps_override=["dbt build --select stg_orders+"]
    )
    run_id = response.json()["data"]["id"]
    deadline = time.monotonic() + 240
    while (status := hook.get_job_run_status(run_id)) not in (10, 20, 30):
        assert time.monotonic() < deadline, "the fake dbt Cloud run did not finish"
        time.sleep(0.2)
    assert status == SUCCESS, (server.runs[run_id].directory / "step-1" / "step.log").read_text()
    assert server.runs[run_id].cause == "orchestra test"

    names = hook.list_job_run_artifacts(run_id).json()["data"]
    assert {"manifest.json", "run_results.json"} <= set(names)
    results = node_results(
        hook.get_job_run_artifact(run_id, "run_results.json").json(), origin="run_results.json"
    )
    models = {short(r.unique_id) for r in results if r.unique_id.startswith("model.")}
    assert "stg_orders" in models and "stg_customers" not in models
    assert all(r.status in ("success", "pass") for r in results)
    manifest = hook.get_job_run_artifact(run_id, "manifest.json").json()
    graph = Graph.from_message(graph_message(manifest, origin="manifest.json"))
    assert {r.unique_id for r in results} <= graph.nodes.keys()


def test_wrong_token_unknown_job_and_rate_limits_answer_like_dbt_cloud(
    cloud: tuple[DbtCloudServer, Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.dbt.cloud.hooks.dbt import DbtCloudHook

    server, _ws = cloud
    hook = DbtCloudHook(CONN_ID)
    with pytest.raises(Exception, match=r"^404:"):
        hook.get_job(job_id=999)
    server.fail_next(429)
    with pytest.raises(Exception, match=r"^429:"):
        hook.get_job(job_id=JOB)
    assert hook.get_job(job_id=JOB).json()["data"]["execute_steps"] == ["dbt build"]
    monkeypatch.setenv("AIRFLOW_CONN_DBT_CLOUD_WRONG", json.dumps(server.connection("nope")))
    with pytest.raises(Exception, match=r"^401:"):
        DbtCloudHook("dbt_cloud_wrong").get_job(job_id=JOB)


SLOW_SQL = "{{ config(materialized='table') }}\nselect count(*) as n from range(20000000000)\n"


def test_a_cancelled_run_stops_dbt_and_says_cancelled(
    cloud: tuple[DbtCloudServer, Workspace],
) -> None:
    from airflow.providers.dbt.cloud.hooks.dbt import DbtCloudHook

    server, ws = cloud
    (ws.project / "models" / "slow_for_cancel.sql").write_text(SLOW_SQL)
    hook = DbtCloudHook(CONN_ID)
    run_id = hook.trigger_job_run(
        job_id=JOB, cause="cancel me", steps_override=["dbt run --select slow_for_cancel"]
    ).json()["data"]["id"]
    log = server.runs[run_id].directory / "step-1" / "step.log"
    deadline = time.monotonic() + 120
    while "slow_for_cancel" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the slow model never started"
        time.sleep(0.2)
    hook.cancel_job_run(run_id)
    assert hook.get_job_run_status(run_id) == 30
    process = server.runs[run_id].process
    assert process is not None and process.poll() is not None, "dbt still runs"
