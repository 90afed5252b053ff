"""The "dbt reuse" page: summaries read from XCom rows, per readable DAG, as plain HTML."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from airflow_provider_orchestra_dbt.plugins.paths import URL_PREFIX
from airflow_provider_orchestra_dbt.plugins.reuse import (
    ReuseRow,
    load_rows,
    parse_summary,
    render_page,
)

Bearer = Callable[..., dict[str, str]]
AddRun = Callable[..., None]


def _summary(built: int, reused: int, failed: int = 0, saved: float = 0.0) -> dict[str, Any]:
    counts = {"built": built, "reused": reused, "failed": failed, "skipped": 0, "not_run": 0}
    return {"command": "build", "counts": counts, "time_saved_seconds": saved}


@pytest.fixture
def runs(task_runs: AddRun) -> None:
    """Three runs of a dbt task in "shop", one in "secret", and another operator's XCom."""
    task_runs("shop", 1, {"return_value": _summary(10, 0, saved=0)})
    task_runs("shop", 2, {"return_value": _summary(2, 8, saved=95.5)})
    task_runs("shop", 3, {"return_value": _summary(1, 8, failed=1, saved=90)})
    task_runs("secret", 1, {"return_value": _summary(3, 3, saved=7)})
    task_runs("other", 1, {"return_value": {"counts": {"built": 99}}}, operator="PythonOperator")


def test_rows_come_from_dbt_tasks_of_the_given_dags_oldest_first(runs: None) -> None:
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = load_rows(session, ["shop", "other"])
    assert [(r.dag_id, r.run_id, r.built, r.reused, r.failed) for r in rows] == [
        ("shop", "scheduled__1", 10, 0, 0),
        ("shop", "scheduled__2", 2, 8, 0),
        ("shop", "scheduled__3", 1, 8, 1),
    ]
    assert rows[1].time_saved_seconds == 95.5
    with create_session() as session:
        assert load_rows(session, []) == []
        assert len(load_rows(session, ["shop"], limit=2)) == 2


def test_page_shows_only_dags_the_user_may_read(
    client: TestClient,
    auth_manager: Any,
    bearer: Bearer,
    runs: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_manager, "get_authorized_dag_ids", lambda **_: {"shop"})
    response = client.get(f"{URL_PREFIX}/reuse", headers=bearer())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "shop &middot; dbt_build" in response.text
    assert "3 runs, 3.1 min saved" in response.text
    assert "secret" not in response.text
    assert response.text.count("<rect ") == 6  # run 1: built; 2: built+reused; 3: all three


def test_page_needs_a_signed_in_user(client: TestClient, runs: None) -> None:
    assert client.get(f"{URL_PREFIX}/reuse").status_code == 401


def test_summary_parsing_ignores_other_values() -> None:
    assert parse_summary('{"counts": {"built": 1}}') == {"counts": {"built": 1}}
    for value in (None, 3, "not json", {"no": "counts"}, ["counts"], {"counts": 2}):
        assert parse_summary(value) is None


def test_page_escapes_ids_and_says_when_empty() -> None:
    row = ReuseRow("<dag>", "t&t", "<script>", 2, None, 1, 2, 0, 5.0)
    page = render_page([row])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;dag&gt; &middot; t&amp;t" in page
    assert "[2]" in page
    empty = "No runs of OrchestraDbtOperator or OrchestraDbtCloudOperator tasks yet."
    assert empty in render_page([])


def test_page_asks_the_auth_manager_for_readable_dags(
    client: TestClient, bearer: Bearer, runs: None
) -> None:
    # The real lookup lists DAGs from the ``dag`` table, which these bare runs lack.
    response = client.get(f"{URL_PREFIX}/reuse", headers=bearer())
    assert response.status_code == 200
    empty = "No runs of OrchestraDbtOperator or OrchestraDbtCloudOperator tasks yet."
    assert empty in response.text
