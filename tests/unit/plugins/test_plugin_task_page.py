"""A task's reuse page (each model's state and next step) and pictures kept on S3."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from support.s3_server import MotoS3Server

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator
from airflow_provider_orchestra_dbt.plugins.model_state import model_states, next_run
from airflow_provider_orchestra_dbt.plugins.paths import (
    URL_PREFIX,
    picture_relative_path,
    picture_url,
    remote_picture_key,
)
from airflow_provider_orchestra_dbt.state import LocalFileStateStore
from airflow_provider_orchestra_dbt.state.model import StateEntry
from airflow_provider_orchestra_dbt.state.s3 import S3StateStore

Bearer = Callable[..., dict[str, str]]
AddRun = Callable[..., None]
BUILT_AT = "2026-02-03T04:05:06+00:00"
PAGE = f"{URL_PREFIX}/reuse/dags/shop/tasks/dbt_build"


def _entry(**fields: Any) -> StateEntry:
    return StateEntry.from_json(
        {
            "checksum": "c",
            "last_updated": BUILT_AT,
            "sources": {"source.shop.raw.orders": "2026-02-03T00:00:00+00:00"},
            "status": "success",
        }
        | fields
    )


def _detail(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "unique_id": f"model.shop.{name}",
        "resource_type": "model",
        "decision": "reuse",
        "reason": "up to date: code unchanged and no new upstream data",
        "outcome": "reused",
        "key": f"db.main.{name}",
    } | fields


@pytest.mark.parametrize(
    ("entry", "detail", "expected"),
    [
        (None, {}, "builds: no state recorded for it"),
        (_entry(status="test_failed"), {}, "builds: an error-severity test failed"),
        (_entry(status="error"), {}, "builds: its last recorded status is 'error'"),
        (_entry(), {"outcome": "skipped"}, "builds: it skipped in the last run"),
        (
            _entry(),
            {"decision": "reuse", "reason": "build_after 6h: last built at x, due at y"},
            "waits: build_after 6h",
        ),
        (_entry(), {"outcome": "reused"}, "reused unless its code changes"),
    ],
)
def test_next_run_says_what_state_implies(
    entry: StateEntry | None, detail: dict[str, Any], expected: str
) -> None:
    assert next_run(entry, detail).startswith(expected)


def test_model_rows_join_details_and_state_and_leave_tests_out() -> None:
    details = [
        _detail("orders"),
        _detail("orders", unique_id="test.shop.not_null", resource_type="test"),
        _detail("new_model", decision="build", reason="no state recorded", outcome="built"),
    ]
    many = {f"source.shop.raw.t{i}": None for i in range(5)}
    rows = model_states(details, {"db.main.orders": _entry()})
    assert [r.unique_id for r in rows] == ["model.shop.orders", "model.shop.new_model"]
    assert rows[0].last_built == BUILT_AT
    assert rows[0].consumed == "raw.orders (up to 2026-02-03T00:00:00+00:00)"
    assert rows[1].last_built is None and rows[1].next_run.startswith("builds")
    (wide,) = model_states([_detail("orders")], {"db.main.orders": _entry(sources=many)})
    assert wide.consumed == "raw.t0, raw.t1, raw.t2 +2 more"


@pytest.fixture
def local_state(tmp_path: Path) -> Path:
    path = tmp_path / "state.json"
    LocalFileStateStore(path).save(
        {"db.main.orders": _entry(), "db.main.failing": _entry(status="test_failed")}
    )
    return path


def _summary(**state: Any) -> dict[str, Any]:
    counts = {"built": 1, "reused": 1, "failed": 0}
    return {"counts": counts, "time_saved_seconds": 3.0, "state": state, "run": {"try_number": 2}}


def test_task_page_lists_models_with_state_and_next_step(
    client: TestClient, bearer: Bearer, task_runs: AddRun, local_state: Path
) -> None:
    details = [_detail("orders"), _detail("failing", outcome="built", decision="build")]
    summary = _summary(conn_id=None, local_file=str(local_state))
    task_runs("shop", 1, {"return_value": summary, "orchestra_dbt_nodes": details})
    page = client.get(PAGE, headers=bearer())
    assert page.status_code == 200, page.text
    # No sandbox (its links must carry the login cookie inside the UI's iframe), no scripts.
    policy = page.headers["content-security-policy"]
    assert "sandbox" not in policy and policy.startswith("default-src 'none'")
    text = page.text
    assert f"State read from local file {local_state}" in text
    assert "model.shop.orders" in text and BUILT_AT in text
    assert "reused unless its code changes" in text
    assert "builds: an error-severity test failed after its last build" in text
    assert "1 runs" in text


def test_task_page_says_when_state_cannot_be_read(
    client: TestClient, bearer: Bearer, task_runs: AddRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_GONE", raising=False)
    task_runs("shop", 1, {"return_value": _summary(conn_id="gone")})
    page = client.get(PAGE, headers=bearer())
    assert page.status_code == 200
    assert "Could not read this task&#x27;s state" in page.text and "gone" in page.text
    assert "push_node_details=False" in page.text


def test_task_page_needs_the_dags_read_permission(
    client: TestClient, bearer: Bearer, task_runs: AddRun
) -> None:
    assert client.get(PAGE).status_code == 401
    assert client.get(PAGE, headers=bearer(None)).status_code == 403


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3Server]:
    with MotoS3Server() as server:
        yield server


def test_picture_uploaded_next_to_s3_state_is_served_by_another_machine(
    client: TestClient,
    bearer: Bearer,
    task_runs: AddRun,
    s3: MotoS3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = s3.create_bucket()
    store = S3StateStore(params.bucket, "team/state.json", **params.store_kwargs())
    # The worker: writes the picture under its own directory and uploads it.
    monkeypatch.setenv("ORCHESTRA_DBT_PICTURE_DIR", str(tmp_path / "worker"))
    ti = SimpleNamespace(
        dag_id="shop", run_id="scheduled__1", task_id="dbt_build", try_number=2, map_index=-1,
        xcom_push=mock.Mock(),
    )  # fmt: skip
    operator = OrchestraDbtOperator(task_id="dbt_build", project_dir=str(tmp_path))

    def write_run_html(report: Any, path: Path, title: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html>{title}</html>")
        return path

    with mock.patch(
        "airflow_provider_orchestra_dbt.presentation.picture.write_run_html", write_run_html
    ):
        location = operator._write_picture({"ti": ti}, mock.Mock(), store)  # type: ignore[arg-type, typeddict-item]
    relative = picture_relative_path("shop", "scheduled__1", "dbt_build", -1, 2)
    key = remote_picture_key("team/state.json", relative)
    assert key == "team/orchestra_dbt_pictures/shop/scheduled__1/dbt_build.try2.html"
    assert location == f"s3://{params.bucket}/{key}"

    # The api-server: another picture directory, the task's connection from its summary.
    monkeypatch.setenv("ORCHESTRA_DBT_PICTURE_DIR", str(tmp_path / "api-server"))
    connection = {
        "conn_type": "orchestra_dbt",
        "login": params.aws_access_key_id,
        "extra": {
            "backend": "s3",
            "state_uri": f"s3://{params.bucket}/team/state.json",
            "endpoint_url": params.endpoint_url,
            "region_name": params.region_name,
            "aws_secret_access_key": params.aws_secret_access_key,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_STATE", json.dumps(connection))
    task_runs("shop", 1, {"return_value": _summary(conn_id="shop_state")})
    headers = bearer()
    served = client.get(
        "/" + picture_url("shop", "scheduled__1", "dbt_build", 2, -1), headers=headers
    )
    assert served.status_code == 200, served.text
    assert served.text == "<html>shop · dbt_build</html>"
    assert served.headers["content-security-policy"].startswith("sandbox")
    latest = client.get(
        f"{URL_PREFIX}/dags/shop/runs/scheduled__1/tasks/dbt_build/latest", headers=headers
    )
    assert latest.text == served.text
    missing = client.get(
        "/" + picture_url("shop", "scheduled__1", "dbt_build", 1, -1), headers=headers
    )
    assert missing.status_code == 404
    assert "S3 state connection" in missing.json()["detail"]
