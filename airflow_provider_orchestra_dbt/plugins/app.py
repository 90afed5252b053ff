"""FastAPI app mounted in Airflow's api-server: the run pictures, behind Airflow's own auth.

Pictures are read from the layout the operator writes (``<root>/<dag>/<run>/<task>.try<n>.html``
under ``$ORCHESTRA_DBT_PICTURE_DIR``, else ``$AIRFLOW_HOME/orchestra_dbt/pictures``), so the
api-server must see the same directory as the workers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

from airflow_provider_orchestra_dbt.plugins.paths import picture_root

_TRY_FILE = re.compile(r"\.try(\d+)\.html$")
# Module level: FastAPI resolves the route functions' (string) annotations in this namespace.
MapIndex = Annotated[int, Query(ge=-1)]
TryNumber = Annotated[int, PathParam(ge=1)]


def _task_stem(dag_id: str, run_id: str, task_id: str, map_index: int) -> tuple[Path, str]:
    """The directory and file-name stem the operator used for this task instance."""
    from airflow_provider_orchestra_dbt.operators.orchestra_dbt import _safe

    parts = [_safe(dag_id), _safe(run_id)]
    task = _safe(task_id)
    # The operator's sanitising keeps dots, so "." and ".." survive it and would climb out.
    if any(part in {"", ".", ".."} for part in [*parts, task]):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid dag, run or task id")
    mapped = f".{map_index}" if map_index >= 0 else ""
    return picture_root().joinpath(*parts), f"{task}{mapped}"


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


def _picture_response(path: Path) -> FileResponse:
    return FileResponse(path, media_type="text/html", headers=_PICTURE_HEADERS)


def _not_found(what: str) -> Exception:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"No dbt run picture for {what} under this api-server's picture directory; pictures "
        "are written by the worker, so it must share ORCHESTRA_DBT_PICTURE_DIR with the "
        "api-server.",
    )


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
        response_class=FileResponse,
    )
    def run_picture(
        dag_id: str,
        run_id: str,
        task_id: str,
        try_number: TryNumber,
        map_index: MapIndex = -1,
    ) -> FileResponse:
        directory, stem = _task_stem(dag_id, run_id, task_id, map_index)
        path = _inside_root(directory / f"{stem}.try{try_number}.html")
        if not path.is_file():
            raise _not_found(f"{dag_id} / {run_id} / {task_id} try {try_number}")
        return _picture_response(path)

    @app.get(
        "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/latest",
        dependencies=can_read,
        response_class=FileResponse,
    )
    def latest_run_picture(
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: str = "-1",
    ) -> FileResponse:
        # The UI may leave "{MAP_INDEX}" unfilled for an unmapped task; that means -1.
        index = int(map_index) if map_index.lstrip("-").isdigit() else -1
        directory, stem = _task_stem(dag_id, run_id, task_id, max(index, -1))
        directory = _inside_root(directory)
        tries: dict[int, Path] = {}
        if directory.is_dir():
            for candidate in directory.iterdir():
                match = _TRY_FILE.search(candidate.name)
                # Compare the stem exactly: "t" must not pick up "t.0"'s (mapped) pictures.
                if match and candidate.name[: match.start()] == stem:
                    tries[int(match.group(1))] = candidate
        if not tries:
            raise _not_found(f"{dag_id} / {run_id} / {task_id}")
        return _picture_response(_inside_root(tries[max(tries)]))

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
        return HTMLResponse(render_page(rows), headers=_PICTURE_HEADERS)

    return app
