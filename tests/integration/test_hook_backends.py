"""``OrchestraDbtHook.test_connection`` against the real S3 (moto) and Orchestra test servers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.orchestra_server import OrchestraStateServer
from support.s3_server import MotoS3Server

from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import OrchestraDbtHook

pytestmark = pytest.mark.integration

API_KEY = "hook-api-key-3f9a"
AWS_SECRET = "hook-aws-secret-77c1"
ENTRY = {"checksum": "c", "last_updated": "2026-01-01T00:00:00+00:00", "sources": {}}


def hook(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any]) -> OrchestraDbtHook:
    monkeypatch.setenv("AIRFLOW_CONN_HOOK_UNDER_TEST", json.dumps(conn))
    return OrchestraDbtHook("hook_under_test")


def s3_conn(s3: MotoS3Server, key: str = "dbt/state.json") -> dict[str, Any]:
    params = s3.create_bucket()
    return {
        "conn_type": "orchestra_dbt",
        "login": params.aws_access_key_id,
        "extra": {
            "backend": "s3",
            "state_uri": f"s3://{params.bucket}/{key}",
            "endpoint_url": params.endpoint_url,
            "aws_secret_access_key": params.aws_secret_access_key,
        },
    }


def test_s3_empty_bucket_then_state_then_missing_bucket(
    monkeypatch: pytest.MonkeyPatch, s3_server: MotoS3Server
) -> None:
    conn = s3_conn(s3_server)
    ok, message = hook(monkeypatch, conn).test_connection()
    assert (
        ok and message.startswith("no state object yet at s3://") and "bucket reachable" in message
    )

    hook(monkeypatch, conn).get_state_store().save({"db.main.m": ENTRY})
    ok, message = hook(monkeypatch, conn).test_connection()
    assert ok and message.endswith("found, 1 entry")

    missing = s3_conn(s3_server)
    missing["extra"]["state_uri"] = "s3://no-such-bucket/dbt/state.json"
    ok, message = hook(monkeypatch, missing).test_connection()
    assert not ok and "bucket 'no-such-bucket' does not exist" in message
    assert "connection 'hook_under_test'" in message


def test_http_reachable_rejected_and_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with OrchestraStateServer(token=API_KEY, state={"db.main.m": ENTRY}) as server:
        conn = {
            "conn_type": "orchestra_dbt",
            "password": API_KEY,
            "extra": {"backend": "http", "base_url": server.base_url, "timeout": 5},
        }
        ok, message = hook(monkeypatch, conn).test_connection()
        assert (ok, message) == (True, "Orchestra state API reachable: 1 entry")

        wrong = conn | {"password": "not-the-key"}
        ok, message = hook(monkeypatch, wrong).test_connection()
        assert not ok and "rejected the API key (HTTP 401)" in message
        assert "not-the-key" not in message and API_KEY not in message
        closed_port = server.base_url
    ok, message = hook(
        monkeypatch, conn | {"extra": conn["extra"] | {"base_url": closed_port}}
    ).test_connection()
    assert not ok and closed_port in message and API_KEY not in message


def test_s3_endpoint_that_never_answers_fails_within_the_connections_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import time

    # Listening but never accepting: requests are sent and never answered.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        conn = {
            "conn_type": "orchestra_dbt",
            "login": "testing",
            "extra": {
                "backend": "s3",
                "state_uri": "s3://bucket/dbt/state.json",
                "endpoint_url": endpoint,
                "aws_secret_access_key": AWS_SECRET,
                "timeout": 1,
            },
        }
        started = time.monotonic()
        ok, message = hook(monkeypatch, conn).test_connection()
        elapsed = time.monotonic() - started
    # Three attempts of 1 s and botocore's short waits, not minutes.
    assert elapsed < 8, elapsed
    assert not ok and f"cannot reach endpoint {endpoint}" in message
    assert AWS_SECRET not in message
