"""Waiting for a dbt Cloud build run in the triggerer, so that no worker slot is held.

The official provider's ``DbtCloudRunJobTrigger`` polls the run; this one adds what a user
expects of a task they kill: marking the deferred task failed or clearing it cancels the run
in dbt Cloud (Airflow 3.3 calls ``on_kill`` for exactly those actions, not on a triggerer
restart). A timeout is the trigger's own event, after which the operator cancels the run.

The run's pending record (what the operator needs to record the outcome) travels with the
trigger and comes back in its event: ``airflow dags test`` resumes a task with the event
alone, dropping the keyword arguments given to ``defer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.dbt.cloud.triggers.dbt import DbtCloudRunJobTrigger
from airflow.triggers.base import TriggerEvent

__all__ = ["OrchestraDbtCloudRunTrigger"]


class OrchestraDbtCloudRunTrigger(DbtCloudRunJobTrigger):
    """Polls dbt Cloud run ``run_id`` until it ends; cancels it when the task is killed.

    ``pending``: returned in the event as ``event["pending"]``.
    """

    def __init__(self, *, pending: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending = pending

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{__name__}.{type(self).__name__}", {**kwargs, "pending": self.pending}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in super().run():
            yield TriggerEvent({**event.payload, "pending": self.pending})  # type: ignore[no-untyped-call]

    async def on_kill(self) -> None:
        from airflow.providers.dbt.cloud.hooks.dbt import DbtCloudHook

        hook = DbtCloudHook(self.conn_id, **self.hook_params)
        # The provider's async hook has no cancel call; its sync one runs off the event loop.
        await asyncio.to_thread(hook.cancel_job_run, run_id=self.run_id, account_id=self.account_id)
        self.log.info("dbt Cloud run %s cancelled: the task was killed", self.run_id)
