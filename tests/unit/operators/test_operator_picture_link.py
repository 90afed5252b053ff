"""The "dbt run picture" extra link points at the api-server plugin instead of a file:// URL."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtRunPictureLink

RUN_ID = "manual__2026-02-01T00:00:00+00:00"
PLUGIN_PATH = "orchestra-dbt/dags/my_dag/runs/manual__2026-02-01T00%3A00%3A00%2B00%3A00"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORCHESTRA_DBT_PICTURE_DIR", str(tmp_path / "pictures"))
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    return tmp_path / "pictures"


def _link(monkeypatch: pytest.MonkeyPatch, pushed: str | None, map_index: int = -1) -> str:
    from airflow.sdk.bases.xcom import BaseXCom

    def get_value(*, ti_key: Any, key: str) -> str | None:
        assert key == OrchestraDbtRunPictureLink().xcom_key
        return pushed

    monkeypatch.setattr(BaseXCom, "get_value", get_value)
    ti = SimpleNamespace(
        dag_id="my_dag", run_id=RUN_ID, task_id="build", try_number=2, map_index=map_index
    )
    return OrchestraDbtRunPictureLink().get_link(operator=None, ti_key=ti)  # type: ignore[arg-type]


def test_file_picture_links_to_the_plugin_relative_to_the_ui(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = root / "my_dag" / "run" / "build.try2.html"
    link = _link(monkeypatch, picture.as_uri())
    assert link == f"/{PLUGIN_PATH}/tasks/build/tries/2"


def test_plugin_link_uses_the_api_base_url(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/prod/")
    picture = root / "my_dag" / "run" / "build.3.try2.html"
    link = _link(monkeypatch, picture.as_uri(), map_index=3)
    assert link == (
        f"https://airflow.example.com/prod/{PLUGIN_PATH}/tasks/build/tries/2?map_index=3"
    )


def test_served_pictures_keep_their_url(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = "https://pictures.example.com/my_dag/run/build.try2.html"
    assert _link(monkeypatch, served) == served


def test_picture_written_elsewhere_still_links_to_the_plugin(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's own picture_dir (or another machine's path): the UI would drop the file://
    # link, while the plugin serves it from S3 or says where it looked.
    elsewhere = (tmp_path / "custom" / "build.try2.html").as_uri()
    assert _link(monkeypatch, elsewhere) == f"/{PLUGIN_PATH}/tasks/build/tries/2"


def test_no_picture_no_link(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _link(monkeypatch, None) == ""
