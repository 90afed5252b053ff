"""The plugin's FastAPI app behind Airflow's real auth dependencies (SimpleAuthManager, JWT)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from airflow_provider_orchestra_dbt.plugins.paths import URL_PREFIX, picture_url

Bearer = Callable[..., dict[str, str]]
RUN_ID = "manual__2026-02-01T00:00:00+00:00"


@pytest.fixture
def pictures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "pictures"
    monkeypatch.setenv("ORCHESTRA_DBT_PICTURE_DIR", str(root))
    run = root / "my_dag" / "manual__2026-02-01T00_00_00_00_00"
    run.mkdir(parents=True)
    (run / "build.try1.html").write_text("<html>try one</html>")
    (run / "build.try2.html").write_text("<html>try two</html>")
    (run / "fan.3.try1.html").write_text("<html>mapped three</html>")
    (tmp_path / "secret.try1.html").write_text("<html>outside</html>")
    return root


def _url(dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
    return "/" + picture_url(dag_id, run_id, task_id, try_number, map_index)


def test_authorized_user_gets_the_picture(
    client: TestClient, bearer: Bearer, pictures: Path
) -> None:
    response = client.get(_url("my_dag", RUN_ID, "build", 2), headers=bearer())
    assert response.status_code == 200
    assert response.text == "<html>try two</html>"
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"].startswith("sandbox")


def test_session_cookie_is_accepted_like_in_the_ui(
    client: TestClient, bearer: Bearer, pictures: Path
) -> None:
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    token = bearer()["Authorization"].removeprefix("Bearer ")
    client.cookies.set(COOKIE_NAME_JWT_TOKEN, token)
    assert client.get(_url("my_dag", RUN_ID, "build", 1)).text == "<html>try one</html>"


def test_mapped_task_and_latest_try(client: TestClient, bearer: Bearer, pictures: Path) -> None:
    headers = bearer()
    mapped = client.get(_url("my_dag", RUN_ID, "fan", 1, map_index=3), headers=headers)
    assert mapped.text == "<html>mapped three</html>"
    base = f"{URL_PREFIX}/dags/my_dag/runs/{RUN_ID.replace('+', '%2B')}/tasks"
    latest = client.get(f"{base}/build/latest", headers=headers)
    assert latest.text == "<html>try two</html>"
    # The UI leaves the placeholder as is when it has no map index.
    unfilled = client.get(f"{base}/build/latest?map_index={{MAP_INDEX}}", headers=headers)
    assert unfilled.text == "<html>try two</html>"
    assert client.get(f"{base}/fan/latest?map_index=3", headers=headers).status_code == 200


def test_anonymous_request_is_refused(client: TestClient, pictures: Path) -> None:
    response = client.get(_url("my_dag", RUN_ID, "build", 1))
    assert response.status_code == 401
    assert "try one" not in response.text


def test_invalid_token_is_refused(client: TestClient, pictures: Path) -> None:
    response = client.get(
        _url("my_dag", RUN_ID, "build", 1), headers={"Authorization": "Bearer not-a-jwt"}
    )
    assert response.status_code in (401, 403)


def test_user_without_dag_access_is_refused(
    client: TestClient, bearer: Bearer, pictures: Path
) -> None:
    response = client.get(_url("my_dag", RUN_ID, "build", 1), headers=bearer(None))
    assert response.status_code == 403


def test_permission_is_checked_for_the_pictures_dag(
    client: TestClient,
    auth_manager: Any,
    bearer: Bearer,
    pictures: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[Any] = []

    def is_authorized_dag(**kwargs: Any) -> bool:
        asked.append(kwargs)
        return kwargs["details"].id != "my_dag"

    monkeypatch.setattr(auth_manager, "is_authorized_dag", is_authorized_dag)
    response = client.get(_url("my_dag", RUN_ID, "build", 1), headers=bearer())
    assert response.status_code == 403
    assert [(a["method"], a["details"].id) for a in asked] == [("GET", "my_dag")]


def test_missing_picture_is_a_clear_404(client: TestClient, bearer: Bearer, pictures: Path) -> None:
    headers = bearer()
    response = client.get(_url("my_dag", RUN_ID, "build", 7), headers=headers)
    assert response.status_code == 404
    assert "No dbt run picture for my_dag" in response.json()["detail"]
    assert "ORCHESTRA_DBT_PICTURE_DIR" in response.json()["detail"]
    other = f"{URL_PREFIX}/dags/my_dag/runs/other/tasks/build/latest"
    assert client.get(other, headers=headers).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/dags/%2E%2E/runs/%2E%2E/tasks/secret/tries/1",
        "/dags/%2E%2E/runs/%2E/tasks/secret/tries/1",
        "/dags/my_dag/runs/%2E%2E/tasks/%2E%2E/latest",
        "/dags/..%2F..%2F..%2Fetc/runs/passwd/tasks/secret/tries/1",
        "/dags/my_dag/runs/..%2F..%2F..%2Fsecret/tasks/x/tries/1",
    ],
)
def test_path_traversal_is_refused(
    client: TestClient, bearer: Bearer, pictures: Path, path: str
) -> None:
    response = client.get(URL_PREFIX + path, headers=bearer())
    assert response.status_code in (400, 404)
    assert "<html>outside</html>" not in response.text


def test_symlink_out_of_the_picture_dir_is_refused(
    client: TestClient, bearer: Bearer, pictures: Path
) -> None:
    run = pictures / "my_dag" / "manual__2026-02-01T00_00_00_00_00"
    (run / "leak.try1.html").symlink_to(pictures.parent / "secret.try1.html")
    response = client.get(_url("my_dag", RUN_ID, "leak", 1), headers=bearer())
    assert response.status_code == 400
    assert "<html>outside</html>" not in response.text
