"""Where run pictures live and their URLs under the plugin; light enough for workers to import.

A try's picture is ``<dag>/<run>/<task>[.<map index>].try<n>.html`` (ids made path-safe) under
the local picture directory, and, when the task keeps its state on S3, under
``REMOTE_PICTURE_DIR`` next to the state object, so an api-server on another machine can read it.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

URL_PREFIX = "/orchestra-dbt"
PICTURE_DIR_ENV = "ORCHESTRA_DBT_PICTURE_DIR"
REMOTE_PICTURE_DIR = "orchestra_dbt_pictures"


def picture_root() -> Path:
    """Where the operator writes pictures by default; read on each call so tests can move it."""
    configured = os.environ.get(PICTURE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    home = Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()
    return home / "orchestra_dbt" / "pictures"


def safe_part(part: object) -> str:
    """A path component from an Airflow id (run ids hold ':' and '+')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(part))


def task_picture_stem(
    dag_id: str, run_id: str, task_id: str, map_index: int
) -> tuple[PurePosixPath, str]:
    """The directory (relative to a picture root) and file-name stem of a task instance.

    Raises:
        ValueError: an id that would name "." or ".." (the sanitising keeps dots).
    """
    parts = [safe_part(dag_id), safe_part(run_id)]
    task = safe_part(task_id)
    if any(part in {"", ".", ".."} for part in [*parts, task]):
        raise ValueError("invalid dag, run or task id")
    mapped = f".{map_index}" if map_index >= 0 else ""
    return PurePosixPath(*parts), f"{task}{mapped}"


def try_file_name(stem: str, try_number: int) -> str:
    return f"{stem}.try{try_number}.html"


def picture_relative_path(
    dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> PurePosixPath:
    directory, stem = task_picture_stem(dag_id, run_id, task_id, map_index)
    return directory / try_file_name(stem, try_number)


def remote_picture_key(state_key: str, relative: PurePosixPath) -> str:
    """The S3 key of a picture for a task whose state object is ``state_key``."""
    return posixpath.join(posixpath.dirname(state_key), REMOTE_PICTURE_DIR, relative.as_posix())


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
