"""What an OrchestraDbtOperator task recorded, as the api-server reads it back.

The task's ``return_value`` XCom says where it keeps state (its ``state`` field: a connection
id, or the local file it used); the plugin opens the same store to read model state and, for
state on S3, the pictures uploaded next to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_provider_orchestra_dbt.state import StateStore

RETURN_VALUE = "return_value"
NODE_DETAILS = "orchestra_dbt_nodes"


def as_json(value: Any) -> Any:
    """An XCom value as stored (JSON text in Airflow 3's table) or already decoded."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def latest_xcom(
    session: Session,
    key: str,
    dag_id: str,
    task_id: str,
    *,
    run_id: str | None = None,
    map_index: int = -1,
) -> Any:
    """The newest value of one XCom of a task (in one run, or in its latest run)."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    query = select(XComModel.value).where(
        XComModel.key == key,
        XComModel.dag_id == dag_id,
        XComModel.task_id == task_id,
        XComModel.map_index == map_index,
    )
    if run_id is not None:
        query = query.where(XComModel.run_id == run_id)
    value = session.execute(query.order_by(XComModel.timestamp.desc()).limit(1)).scalar()
    return as_json(value)


def state_store_of(summary: Mapping[str, Any] | None) -> StateStore | None:
    """The store a task's summary names, or None when it names none (older versions)."""
    where = summary.get("state") if isinstance(summary, Mapping) else None
    if not isinstance(where, Mapping):
        return None
    conn_id, local_file = where.get("conn_id"), where.get("local_file")
    if isinstance(conn_id, str) and conn_id:
        from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import OrchestraDbtHook

        return OrchestraDbtHook(orchestra_dbt_conn_id=conn_id).get_state_store()
    if isinstance(local_file, str) and local_file:
        from airflow_provider_orchestra_dbt.state import LocalFileStateStore

        return LocalFileStateStore(Path(local_file))
    return None
