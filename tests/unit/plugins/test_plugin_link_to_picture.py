"""The operator's picture, its extra link and the plugin agree: the link opens that file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import (
    OrchestraDbtOperator,
    OrchestraDbtRunPictureLink,
)


@pytest.mark.parametrize("map_index", [-1, 4])
def test_extra_link_of_a_written_picture_is_served_by_the_plugin(
    client: TestClient,
    bearer: Callable[..., dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    map_index: int,
) -> None:
    from airflow.sdk.bases.xcom import BaseXCom

    monkeypatch.setenv("ORCHESTRA_DBT_PICTURE_DIR", str(tmp_path / "pictures"))
    monkeypatch.delenv("ORCHESTRA_DBT_PICTURE_BASE_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(
        dag_id="shop.daily",
        run_id="manual__2026-02-01T00:00:00+00:00",
        task_id="group.dbt_build",
        try_number=3,
        map_index=map_index,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
    )
    operator = mock.Mock(outputs=mock.Mock(picture_dir=None, picture_base_url=None))
    operator._upload_picture.return_value = None  # state not on S3

    def write_run_html(report: Any, path: Path, title: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html>{title}</html>")
        return path

    with mock.patch(
        "airflow_provider_orchestra_dbt.presentation.picture.write_run_html", write_run_html
    ):
        OrchestraDbtOperator._write_picture(operator, {"ti": ti}, mock.Mock(), mock.Mock())  # type: ignore[arg-type, typeddict-item]
    link = OrchestraDbtRunPictureLink()
    monkeypatch.setattr(BaseXCom, "get_value", lambda *, ti_key, key: pushed[key])
    url = link.get_link(operator=operator, ti_key=ti)
    assert url.startswith("/orchestra-dbt/")
    response = client.get(url, headers=bearer())
    assert response.status_code == 200
    assert response.text == "<html>shop.daily · group.dbt_build</html>"
