"""The fake dbt Cloud API (tests/support/dbt_cloud_server.py) against the official DbtCloudHook.

``DbtCloudJob`` (hooks/dbt_cloud_job.py) on the provider's own client, over HTTPS on
127.0.0.1: errors that name the connection, account and job (401, 404, rate limits waited out
as ``Retry-After`` says), and a run cancelled when it outlives its timeout. Triggering,
polling and reading artifacts are exercised by every state-aware run in
``test_dbt_cloud_state_aware.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dbt_cloud_server import CANCELLED, SLOW_PYTHON_MODEL, DbtCloudServer
from support.tutorial import Baseline, Workspace

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
    started = time.monotonic()
    assert DbtCloudJob(CONN_ID, JOB).definition().steps == ("dbt build",)
    assert time.monotonic() - started < 1.5, "Retry-After: 0 was not honoured"
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
    (ws.project / "models" / "slow_for_cancel.py").write_text(SLOW_PYTHON_MODEL)
    job = DbtCloudJob(CONN_ID, JOB, poll_interval=0.2, timeout=4)
    run_id = job.trigger(["dbt run --select slow_for_cancel"], cause="too slow")
    with pytest.raises(DbtCloudJobError, match=f"run {run_id} did not finish within 4 s"):
        job.wait(run_id)
    assert server.runs[run_id].status == CANCELLED
    process = server.runs[run_id].process
    assert process is None or process.poll() is not None, "dbt still runs"
