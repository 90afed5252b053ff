"""The plugin is found by Airflow: entry point, plugin class, and the UI's view shapes."""

from __future__ import annotations

import tomllib
from pathlib import Path

from airflow_provider_orchestra_dbt.plugins.orchestra_dbt_plugin import (
    LazyPictureApp,
    OrchestraDbtPlugin,
)
from airflow_provider_orchestra_dbt.plugins.paths import URL_PREFIX

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_entry_point_names_the_plugin_class() -> None:
    from airflow._shared.module_loading import import_string
    from airflow.plugins_manager import is_valid_plugin

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    target = project["entry-points"]["airflow.plugins"]["orchestra_dbt"]
    plugin = import_string(target.replace(":", "."))
    assert plugin is OrchestraDbtPlugin
    assert is_valid_plugin(plugin)
    plugin.validate()


def test_app_is_mounted_outside_airflows_reserved_prefixes() -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    (entry,) = OrchestraDbtPlugin.fastapi_apps
    assert entry["url_prefix"] == URL_PREFIX
    assert isinstance(entry["app"], LazyPictureApp)
    assert not any(URL_PREFIX.startswith(prefix) for prefix in RESERVED_URL_PREFIXES)


def test_external_views_are_what_the_ui_accepts() -> None:
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    picture, reuse = (
        ExternalViewResponse.model_validate(view) for view in OrchestraDbtPlugin.external_views
    )
    assert picture.destination == "task_instance"
    assert picture.href.startswith(f"{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}/tasks/")
    assert "{TASK_ID}" in picture.href and "{MAP_INDEX}" in picture.href
    assert (reuse.destination, reuse.href) == ("nav", f"{URL_PREFIX}/reuse")
