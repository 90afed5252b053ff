"""The dbt Cloud run trigger serializes as itself, so that the triggerer runs our on_kill."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from airflow.providers.dbt.cloud.triggers.dbt import DbtCloudRunJobTrigger
from airflow.triggers.base import TriggerEvent

from airflow_provider_orchestra_dbt.triggers.dbt_cloud import OrchestraDbtCloudRunTrigger

CLASSPATH = "airflow_provider_orchestra_dbt.triggers.dbt_cloud.OrchestraDbtCloudRunTrigger"
KWARGS: dict[str, Any] = {
    "conn_id": "dbt_cloud_default",
    "run_id": 42,
    "end_time": 1_800_000_000.0,
    "poll_interval": 10.0,
    "account_id": 7,
    "execution_deadline": 1_790_000_000.0,
}


def _import(classpath: str) -> type:
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


PENDING = {"run_id": 42, "plan_run_id": 41, "steps": 2, "record": "eJyrVkrLz1eyUkpKLFKqBQAdegQ0"}


def test_serializes_with_its_own_classpath_and_the_parents_kwargs() -> None:
    classpath, kwargs = OrchestraDbtCloudRunTrigger(**KWARGS).serialize()
    parent_path, parent_kwargs = DbtCloudRunJobTrigger(**KWARGS).serialize()
    assert classpath == CLASSPATH
    assert parent_path != CLASSPATH
    # the parent's kwargs, and the pending build the operator resumes with
    assert kwargs == {**parent_kwargs, "pending": None}
    assert {k: kwargs[k] for k in KWARGS} == KWARGS


def test_the_classpath_rebuilds_an_equal_trigger() -> None:
    trigger = OrchestraDbtCloudRunTrigger(**KWARGS, hook_params={"retry_limit": 3}, pending=PENDING)
    classpath, kwargs = trigger.serialize()
    assert kwargs["pending"] == PENDING
    assert kwargs["hook_params"] == {"retry_limit": 3}
    assert json.loads(json.dumps(kwargs)) == kwargs
    cls = _import(classpath)
    assert cls is OrchestraDbtCloudRunTrigger
    rebuilt = cls(**kwargs)
    assert isinstance(rebuilt, OrchestraDbtCloudRunTrigger)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_events_carry_the_pending_build(monkeypatch: pytest.MonkeyPatch) -> None:
    async def parent_run(self: DbtCloudRunJobTrigger) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({"status": "success", "run_id": self.run_id, "message": "done"})  # type: ignore[no-untyped-call]

    monkeypatch.setattr(DbtCloudRunJobTrigger, "run", parent_run)

    async def events() -> list[TriggerEvent]:
        trigger = OrchestraDbtCloudRunTrigger(**KWARGS, pending=PENDING)
        return [event async for event in trigger.run()]

    (event,) = asyncio.run(events())
    assert event.payload == {
        "status": "success",
        "run_id": 42,
        "message": "done",
        "pending": PENDING,
    }


def test_on_kill_cancels_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.dbt.cloud.hooks import dbt as hooks

    calls: list[tuple[Any, ...]] = []

    class FakeHook:
        def __init__(self, conn_id: str, **params: Any) -> None:
            calls.append(("init", conn_id, params))

        def cancel_job_run(self, *, run_id: int, account_id: int | None) -> None:
            calls.append(("cancel", run_id, account_id))

    monkeypatch.setattr(hooks, "DbtCloudHook", FakeHook)
    asyncio.run(OrchestraDbtCloudRunTrigger(**KWARGS).on_kill())
    assert calls == [("init", "dbt_cloud_default", {}), ("cancel", 42, 7)]
