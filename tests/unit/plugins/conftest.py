"""Airflow's real auth stack for the plugin's app: SimpleAuthManager, JWTs, a metadata DB."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_provider_orchestra_dbt.plugins.app import create_app
from airflow_provider_orchestra_dbt.plugins.paths import URL_PREFIX


@pytest.fixture(scope="session")
def auth_manager() -> Iterator[Any]:
    from airflow import settings
    from airflow.api_fastapi import app as api_app
    from airflow.models import import_all_models
    from airflow.models.base import Base

    # Token checks read revoked tokens and DAG teams from the metadata DB: give the throwaway
    # test DB its tables without running every migration.
    import_all_models()
    Base.metadata.create_all(settings.engine)
    manager = api_app.create_auth_manager()
    manager.init()
    yield manager
    api_app.purge_cached_app()


@pytest.fixture(params=["registered", "direct"])
def client(request: pytest.FixtureRequest, auth_manager: Any) -> TestClient:
    from airflow_provider_orchestra_dbt.plugins.orchestra_dbt_plugin import OrchestraDbtPlugin

    root = FastAPI()
    if request.param == "registered":
        # Mounted as Airflow's api-server does it, from the plugin's ``fastapi_apps``.
        (entry,) = OrchestraDbtPlugin.fastapi_apps
        root.mount(entry["url_prefix"], entry["app"])
    else:
        root.mount(URL_PREFIX, create_app())
    return TestClient(root)


@pytest.fixture
def bearer(auth_manager: Any) -> Callable[..., dict[str, str]]:
    """Authorization headers with a JWT as the UI's login would issue it, for a user of a role."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    def headers(role: str | None = "viewer") -> dict[str, str]:
        user = SimpleAuthManagerUser(username="someone", role=role)
        return {"Authorization": f"Bearer {auth_manager.generate_jwt(user)}"}

    return headers
