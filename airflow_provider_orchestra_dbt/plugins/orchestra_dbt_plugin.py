"""Registers the run-picture app and its task instance view with Airflow (3.1+)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_orchestra_dbt.plugins.paths import URL_PREFIX, api_root_path

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyPictureApp:
    """ASGI app that builds the real one on its first request.

    Every Airflow process loads plugins (workers and the scheduler too), and the app's auth
    dependencies import the whole api-server; only the api-server ever calls this.
    """

    def __init__(self) -> None:
        self._app: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            from airflow_provider_orchestra_dbt.plugins.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class OrchestraDbtPlugin(AirflowPlugin):
    """Serves each try's dbt run picture from the api-server, behind Airflow's login."""

    name = "orchestra_dbt"
    fastapi_apps: list[Any] = [
        {"app": LazyPictureApp(), "url_prefix": URL_PREFIX, "name": "orchestra-dbt run pictures"}
    ]
    # The UI fills in the placeholders (URL-encoded); it knows no try number, so the tab shows
    # the latest try's picture. It is offered on every task instance: non-dbt ones get a 404.
    external_views: list[Any] = [
        {
            "name": "dbt run picture",
            "href": (
                f"{api_root_path()}{URL_PREFIX.lstrip('/')}/dags/{{DAG_ID}}/runs/{{RUN_ID}}"
                "/tasks/{TASK_ID}/latest?map_index={MAP_INDEX}"
            ),
            "destination": "task_instance",
            "url_route": "orchestra-dbt-run-picture",
        },
        {
            "name": "dbt reuse",
            "href": f"{api_root_path()}{URL_PREFIX.lstrip('/')}/reuse",
            "destination": "nav",
            "url_route": "orchestra-dbt-reuse",
        },
    ]
