"""The fake dbt Cloud API (tests/support/dbt_cloud_server.py) against the official DbtCloudHook.

The ground the state-aware dbt Cloud operator (issue 15) is tested on: the provider's own
client triggers a job with ``steps_override`` over HTTPS on 127.0.0.1, polls it, and reads its
artifacts, which real dbt wrote on DuckDB and which this package's readers understand; then
``DbtCloudJob`` (hooks/dbt_cloud_job.py) on top of it: step artifacts, failed steps, errors
that name the connection, account and job, and a run cancelled when it outlives its timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dbt_cloud_server import CANCELLED, SUCCESS, DbtCloudServer
from support.tutorial import Baseline, Workspace, short

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.execution.manifest_graph import graph_message
from airflow_provider_orchestra_dbt.execution.run_artifacts import node_results
from airflow_provider_orchestra_dbt.hooks.dbt_cloud_job import DbtCloudJob, DbtCloudJobError

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


SLOW_SQL = "{{ config(materialized='table') }}\nselect count(*) as n from range(20000000000)\n"


def test_the_job_client_triggers_waits_and_reads_a_steps_artifacts(
    cloud: tuple[DbtCloudServer, Workspace],
) -> None:
    server, _ws = cloud
    job = DbtCloudJob(CONN_ID, JOB, poll_interval=0.2, timeout=240)
    run_id = job.trigger(["dbt seed", "dbt run --select stg_orders"], cause="two steps")
    run = job.wait(run_id)
    assert (run.id, run.status_name) == (run_id, "success")
    assert server.runs[run_id].steps == ["dbt seed", "dbt run --select stg_orders"]
    assert "run_results.json" in job.artifact_names(run_id, step=1)
    first = node_results(job.artifact(run_id, "run_results.json", step=1), origin="step 1")
    last = node_results(job.artifact(run_id, "run_results.json"), origin="last step")
    assert {short(r.unique_id) for r in first} == {"country_codes"}
    assert {short(r.unique_id) for r in last} == {"stg_orders"}

    failing = job.trigger(["dbt run-operation no_such_macro"], cause="fails")
    assert job.wait(failing).status_name == "error"


def test_errors_name_the_connection_account_and_job_and_never_the_token(
    cloud: tuple[DbtCloudServer, Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ws = cloud
    messages = []
    with pytest.raises(DbtCloudJobError) as missing:
        DbtCloudJob(CONN_ID, 999).trigger(["dbt build"], cause="x")
    messages.append(str(missing.value))
    assert "job 999" in messages[-1] and "not found: check the job id" in messages[-1]
    # Rate limits are waited out (Retry-After), and reported once they outlast the retries.
    server.fail_next(429, times=2)
    assert DbtCloudJob(CONN_ID, JOB).definition().steps == ("dbt build",)
    server.fail_next(429, times=5)
    with pytest.raises(DbtCloudJobError) as limited:
        DbtCloudJob(CONN_ID, JOB).definition()
    messages.append(str(limited.value))
    assert "job 11" in messages[-1] and "rate-limiting" in messages[-1]
    monkeypatch.setenv("AIRFLOW_CONN_DBT_CLOUD_WRONG", json.dumps(server.connection("nope-9f")))
    with pytest.raises(DbtCloudJobError) as refused:
        DbtCloudJob("dbt_cloud_wrong", JOB).trigger(["dbt build"], cause="x")
    messages.append(str(refused.value))
    assert "'dbt_cloud_wrong'" in messages[-1] and "API token was refused" in messages[-1]
    assert not any(server.token in m or "nope-9f" in m for m in messages)


def test_a_run_past_its_timeout_is_cancelled_and_dbt_stopped(
    cloud: tuple[DbtCloudServer, Workspace],
) -> None:
    server, ws = cloud
    (ws.project / "models" / "slow_for_cancel.sql").write_text(SLOW_SQL)
    job = DbtCloudJob(CONN_ID, JOB, poll_interval=0.2, timeout=4)
    run_id = job.trigger(["dbt run --select slow_for_cancel"], cause="too slow")
    with pytest.raises(DbtCloudJobError, match=f"run {run_id} did not finish within 4 s"):
        job.wait(run_id)
    assert server.runs[run_id].status == CANCELLED
    process = server.runs[run_id].process
    assert process is None or process.poll() is not None, "dbt still runs"
