"""Where run pictures live and their URLs under the plugin; light enough for workers to import."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit

URL_PREFIX = "/orchestra-dbt"


def picture_root() -> Path:
    """Where the operator writes pictures by default; read on each call so tests can move it."""
    from airflow_provider_orchestra_dbt.operators.orchestra_dbt import PICTURE_DIR_ENV

    configured = os.environ.get(PICTURE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    home = Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()
    return home / "orchestra_dbt" / "pictures"


def api_root_path() -> str:
    """The path part of ``[api] base_url`` ("/" without one), ending in "/"."""
    from airflow.configuration import conf

    path = urlsplit(conf.get("api", "base_url", fallback="") or "").path or "/"
    return path if path.endswith("/") else path + "/"


def picture_url(dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int) -> str:
    """The plugin's URL of one try's picture, relative to the api-server's base URL."""
    ids = "/".join(quote(str(part), safe="") for part in ("dags", dag_id, "runs", run_id))
    url = f"{URL_PREFIX.lstrip('/')}/{ids}/tasks/{quote(task_id, safe='')}/tries/{try_number}"
    return f"{url}?map_index={map_index}" if map_index >= 0 else url
