"""FastAPI app mounted in Airflow's api-server: the run pictures, behind Airflow's own auth.

Pictures are read from the layout the operator writes (``<root>/<dag>/<run>/<task>.try<n>.html``
under ``$ORCHESTRA_DBT_PICTURE_DIR``, else ``$AIRFLOW_HOME/orchestra_dbt/pictures``) when the
api-server shares that directory with the workers, else from the task's S3 state bucket, where
the operator uploads them when it keeps state there.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response

from airflow_provider_orchestra_dbt.plugins.paths import (
    picture_root,
    remote_picture_key,
    task_picture_stem,
    try_file_name,
)

_TRY_FILE = re.compile(r"\.try(\d+)\.html$")
# Module level: FastAPI resolves the route functions' (string) annotations in this namespace.
MapIndex = Annotated[int, Query(ge=-1)]
TryNumber = Annotated[int, PathParam(ge=1)]


def _task_stem(dag_id: str, run_id: str, task_id: str, map_index: int) -> tuple[PurePosixPath, str]:
    """The directory (relative to a picture root) and file-name stem of this task instance."""
    try:
        return task_picture_stem(dag_id, run_id, task_id, map_index)
    except ValueError:
        # "." and ".." survive the sanitising and would climb out of the root.
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid dag, run or task id") from None


def _inside_root(path: Path) -> Path:
    """``path`` resolved, refused unless it stays under the picture root (symlinks included)."""
    root = picture_root().resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Path outside the picture directory")
    return resolved


# Pictures are served from the UI's origin, where a script could act with the viewer's
# session; they are static HTML and CSS, so sandbox them and allow nothing else.
_PICTURE_HEADERS = {
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-cache",
}


# The reuse pages link to each other inside the UI's iframe: a sandbox would make them an
# opaque origin whose navigations carry no login cookie. Scripts stay forbidden all the same.
_REUSE_HEADERS = _PICTURE_HEADERS | {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
}


def _picture_response(path: Path) -> FileResponse:
    return FileResponse(path, media_type="text/html", headers=_PICTURE_HEADERS)


def _not_found(what: str) -> Exception:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"No dbt run picture for {what}: neither under this api-server's picture directory "
        f"({picture_root()}) nor next to the task's state on S3. Workers on other machines "
        "need an S3 state connection (pictures are uploaded next to the state) or a "
        "directory shared with the api-server as ORCHESTRA_DBT_PICTURE_DIR.",
    )


def _remote_picture(
    dag_id: str, run_id: str, task_id: str, map_index: int, file_name: str | None
) -> Response | None:
    """A picture from the task's S3 state bucket (``file_name`` None: the latest one)."""
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.utils.session import create_session

    from airflow_provider_orchestra_dbt.plugins.task_records import (
        RETURN_VALUE,
        latest_xcom,
        state_store_of,
    )
    from airflow_provider_orchestra_dbt.state import StateError
    from airflow_provider_orchestra_dbt.state.s3 import S3StateStore

    with create_session() as session:
        summary = latest_xcom(
            session, RETURN_VALUE, dag_id, task_id, run_id=run_id, map_index=map_index
        )
    try:
        store = state_store_of(summary)
    except (ValueError, AirflowNotFoundException):  # connection gone or broken: no picture
        return None
    if not isinstance(store, S3StateStore):
        return None
    directory, stem = _task_stem(dag_id, run_id, task_id, map_index)
    if file_name is None:
        latest = summary.get("run", {}).get("try_number") if isinstance(summary, dict) else None
        if not isinstance(latest, int):
            return None
        file_name = try_file_name(stem, latest)
    try:
        body = store.read_object(remote_picture_key(store.key, directory / file_name))
    except StateError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from None
    if body is None:
        return None
    return Response(body, media_type="text/html", headers=_PICTURE_HEADERS)


def create_app() -> FastAPI:
    """The plugin's app; Airflow mounts it at ``paths.URL_PREFIX``."""
    # Imported here: the security module pulls in the api-server's app and DB models.
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import get_user, requires_access_dag

    app = FastAPI(
        title="orchestra-dbt",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # The same check as the UI's own task instance pages: a valid session cookie or bearer
    # token, and read access to this DAG's task instances.
    can_read = [Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))]

    @app.get(
        "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}",
        dependencies=can_read,
        response_class=Response,
    )
    def run_picture(
        dag_id: str,
        run_id: str,
        task_id: str,
        try_number: TryNumber,
        map_index: MapIndex = -1,
    ) -> Response:
        directory, stem = _task_stem(dag_id, run_id, task_id, map_index)
        name = try_file_name(stem, try_number)
        path = _inside_root(picture_root() / directory / name)
        if path.is_file():
            return _picture_response(path)
        remote = _remote_picture(dag_id, run_id, task_id, map_index, name)
        if remote is None:
            raise _not_found(f"{dag_id} / {run_id} / {task_id} try {try_number}")
        return remote

    @app.get(
        "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/latest",
        dependencies=can_read,
        response_class=Response,
    )
    def latest_run_picture(
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: str = "-1",
    ) -> Response:
        # The UI may leave "{MAP_INDEX}" unfilled for an unmapped task; that means -1.
        index = int(map_index) if map_index.lstrip("-").isdigit() else -1
        map_index_ = max(index, -1)
        relative, stem = _task_stem(dag_id, run_id, task_id, map_index_)
        directory = _inside_root(picture_root() / relative)
        tries: dict[int, Path] = {}
        if directory.is_dir():
            for candidate in directory.iterdir():
                match = _TRY_FILE.search(candidate.name)
                # Compare the stem exactly: "t" must not pick up "t.0"'s (mapped) pictures.
                if match and candidate.name[: match.start()] == stem:
                    tries[int(match.group(1))] = candidate
        if tries:
            return _picture_response(_inside_root(tries[max(tries)]))
        remote = _remote_picture(dag_id, run_id, task_id, map_index_, None)
        if remote is None:
            raise _not_found(f"{dag_id} / {run_id} / {task_id}")
        return remote

    signed_in = Depends(get_user)

    @app.get("/reuse", response_class=HTMLResponse)
    def reuse(user: Any = signed_in) -> HTMLResponse:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.utils.session import create_session

        from airflow_provider_orchestra_dbt.plugins.reuse import load_rows, render_page

        # Only the DAGs this user may read, as in the UI's own DAG list.
        with create_session() as session:
            dag_ids = get_auth_manager().get_authorized_dag_ids(user=user, session=session)
            rows = load_rows(session, dag_ids)
        return HTMLResponse(render_page(rows), headers=_REUSE_HEADERS)

    @app.get(
        "/reuse/dags/{dag_id}/tasks/{task_id}",
        dependencies=can_read,
        response_class=HTMLResponse,
    )
    def task_reuse(dag_id: str, task_id: str) -> HTMLResponse:
        return HTMLResponse(_task_reuse_page(dag_id, task_id), headers=_REUSE_HEADERS)

    return app


def _task_reuse_page(dag_id: str, task_id: str) -> str:
    """A task's runs, and each model of its latest run with what the state store holds."""
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.utils.session import create_session

    from airflow_provider_orchestra_dbt.plugins.model_state import model_states
    from airflow_provider_orchestra_dbt.plugins.reuse import load_rows, render_task_page
    from airflow_provider_orchestra_dbt.plugins.task_records import (
        NODE_DETAILS,
        RETURN_VALUE,
        latest_xcom,
        state_store_of,
    )
    from airflow_provider_orchestra_dbt.state import StateError

    with create_session() as session:
        rows = load_rows(session, [dag_id], task_id=task_id)
        summary = latest_xcom(session, RETURN_VALUE, dag_id, task_id)
        details = latest_xcom(session, NODE_DETAILS, dag_id, task_id)
    entries: dict[str, Any] = {}
    try:
        store = state_store_of(summary)
        if store is None:
            note = "This task's runs do not say where it keeps state (run it with this version)."
        else:
            entries = dict(store.load().entries)
            note = f"State read from {store.description} just now."
    # The messages name the store or connection, never a secret.
    except (StateError, ValueError, AirflowNotFoundException) as exc:
        note = f"Could not read this task's state: {exc}"
    if not isinstance(details, list):
        details = []
        note += " The latest run pushed no node details (push_node_details=False)."
    return render_task_page(dag_id, task_id, rows, model_states(details, entries), note)
