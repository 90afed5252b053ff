"""Airflow's real auth stack for the plugin's app: SimpleAuthManager, JWTs, a metadata DB."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
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


START = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def task_runs(auth_manager: Any) -> Iterator[Callable[..., None]]:
    """Adds a DAG run with one task instance and its XComs to the test DB; removes them after."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete, insert, select

    def add(
        dag_id: str,
        run: int,
        xcoms: Mapping[str, Any],
        *,
        task_id: str = "dbt_build",
        operator: str = "OrchestraDbtOperator",
    ) -> None:
        run_id, when = f"scheduled__{run}", START + timedelta(days=run)
        with create_session() as session:
            session.execute(
                insert(DagRun.__table__).values(
                    dag_id=dag_id,
                    run_id=run_id,
                    run_type="scheduled",
                    logical_date=when,
                    run_after=when,
                    state="success",
                    clear_number=0,
                    updated_at=when,
                )
            )
            dag_run_id = session.scalar(
                select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            )
            session.execute(
                insert(TaskInstance.__table__).values(
                    id=uuid.uuid4(),
                    dag_id=dag_id,
                    run_id=run_id,
                    task_id=task_id,
                    map_index=-1,
                    operator=operator,
                    try_number=1,
                    pool="default_pool",
                    pool_slots=1,
                    queue="default",
                    priority_weight=1,
                    max_tries=0,
                    hostname="",
                    unixname="",
                    executor_config=b"",
                    custom_operator_name="",
                    span_status="not_started",
                )
            )
            for key, value in xcoms.items():
                session.execute(
                    insert(XComModel.__table__).values(
                        dag_run_id=dag_run_id,
                        dag_id=dag_id,
                        run_id=run_id,
                        task_id=task_id,
                        map_index=-1,
                        key=key,
                        value=value,
                        timestamp=when,
                    )
                )

    yield add
    with create_session() as session:
        for table in (XComModel, TaskInstance, DagRun):
            session.execute(delete(table.__table__))
