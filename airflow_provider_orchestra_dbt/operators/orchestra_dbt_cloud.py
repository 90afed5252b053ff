"""OrchestraDbtCloudOperator: a dbt Cloud job that rebuilds only what needs rebuilding.

A short plan run of the job measures the project as dbt Cloud sees it; the planner decides
per node with the same rules and reasons as ``OrchestraDbtOperator``; one build run builds
exactly the nodes to build and their tests, or no build run is triggered at all. While dbt
Cloud builds, the task defers to the triggerer (``deferrable=True``, the default) and holds
no worker slot. See ``hooks/dbt_cloud_executor.py`` and docs/design.md §2.2.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException

from airflow_provider_orchestra_dbt.assets import NodeRefs
from airflow_provider_orchestra_dbt.operators.base import (
    OrchestraDbtBaseOperator,
    is_templated,
    task_run_info,
)
from airflow_provider_orchestra_dbt.operators.options import DbtTaskOutputs

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_orchestra_dbt.hooks.dbt_cloud_executor import DbtCloudStateAwareRun
    from airflow_provider_orchestra_dbt.state import StateStore

__all__ = ["OrchestraDbtCloudOperator"]

DEFAULT_TIMEOUT = 7 * 24 * 3600.0


class OrchestraDbtCloudOperator(OrchestraDbtBaseOperator):
    """Run dbt Cloud job ``job_id`` state-aware: only the nodes that need it are built.

    :param job_id: the dbt Cloud job. Its first ``dbt build`` (or ``run``/``test``) step
        gives the selection and flags (``--vars``, ``--threads``, ...); the job's steps are
        replaced by a plan run and a build run of exactly the nodes to build.
    :param dbt_cloud_conn_id: a ``dbt_cloud`` connection (Account ID, API Token, Tenant).
    :param account_id: the dbt Cloud account (default: the connection's Account ID).
    :param command: ``build`` (default), ``run`` or ``test``.
    :param select: replaces the job step's ``--select``.
    :param exclude: replaces the job step's ``--exclude``.
    :param selector: replaces the job step's ``--selector``.
    :param full_refresh: build with ``--full-refresh`` (everything selected is rebuilt).
    :param reuse: False runs the job exactly as configured (its own steps), recording the
        outcome so that the next state-aware run builds on it.
    :param state_conn_id: an ``orchestra_dbt`` connection for state; without one, a local
        file (``$ORCHESTRA_DBT_STATE_FILE`` or ``$AIRFLOW_HOME/orchestra_dbt/state.json``).
    :param deferrable: wait for the build run in the triggerer (default True).
    :param poll_interval: seconds between polls of a dbt Cloud run.
    :param timeout: seconds a dbt Cloud run may take before it is cancelled and the task
        fails (``execution_timeout`` cancels it too).
    :param outputs: what the task publishes, a ``DbtTaskOutputs``; Assets are declared
        from ``manifest_path`` (a ``manifest.json`` deployed with the DAGs), never by calling
        dbt Cloud while DAGs are parsed.
    """

    template_fields: Sequence[str] = (
        "job_id",
        "account_id",
        "dbt_cloud_conn_id",
        "select",
        "exclude",
        "selector",
        "state_conn_id",
    )
    ui_color = "#ff694a"

    def __init__(
        self,
        *,
        job_id: int | str,
        dbt_cloud_conn_id: str = "dbt_cloud_default",
        account_id: int | str | None = None,
        command: str = "build",
        select: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        full_refresh: bool = False,
        reuse: bool = True,
        state_conn_id: str | None = None,
        deferrable: bool = True,
        poll_interval: float = 10.0,
        timeout: float = DEFAULT_TIMEOUT,
        outputs: DbtTaskOutputs | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(state_conn_id=state_conn_id, outputs=outputs or DbtTaskOutputs(), **kwargs)
        if command not in ("build", "run", "test"):
            raise ValueError(
                f"{self.task_id}: command {command!r} is not state-aware; use build, run or test"
            )
        self.job_id = job_id
        self.dbt_cloud_conn_id = dbt_cloud_conn_id
        self.account_id = account_id
        self.command = command
        self.select = select
        self.exclude = exclude
        self.selector = selector
        self.full_refresh = full_refresh
        self.reuse = reuse
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._stop = threading.Event()
        if self.outputs.emit_assets:
            self._declare_assets()

    # -- the run -------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any] | None:
        from airflow_provider_orchestra_dbt.hooks.dbt_cloud_job import DbtCloudJobError
        from airflow_provider_orchestra_dbt.state import StateError

        store, run = self._cloud_run(context)
        try:
            if not self.deferrable:
                return self._publish(context, run.run(), store)
            planned = run.plan()
        except (DbtCloudJobError, StateError) as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from exc
        if planned.report is not None:
            return self._publish(context, planned.report, store)
        assert planned.pending is not None
        self._defer_to_trigger(planned.pending.run_id, planned.pending.to_json())
        return None  # not reached: defer() raises

    def execute_complete(self, context: Context, event: Mapping[str, Any]) -> dict[str, Any]:
        """Resumed once the build run ended (or timed out): record it and publish."""
        from airflow_provider_orchestra_dbt.hooks.dbt_cloud_executor import PendingBuild
        from airflow_provider_orchestra_dbt.hooks.dbt_cloud_job import DbtCloudJobError
        from airflow_provider_orchestra_dbt.state import StateError

        build = PendingBuild.from_json(event["pending"])
        store, run = self._cloud_run(context)
        try:
            finished = run.job.run(build.run_id)
            if not finished.finished:
                # The trigger gave up (timeout, execution_timeout, an error of its own):
                # the run must not go on building unwatched (apache/airflow#61467).
                self.log.warning(
                    "dbt Cloud run %d has not finished (%s): cancelling it",
                    build.run_id,
                    event.get("message") or event.get("status"),
                )
                run.cancel(build.run_id)
                finished = run.job.run(build.run_id)
            report = run.complete(build, finished)
        except (DbtCloudJobError, StateError) as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from exc
        return self._publish(context, report, store)

    def on_kill(self) -> None:
        # A run waited for in this process is cancelled by DbtCloudJob.wait once it sees this.
        self._stop.set()

    def _cloud_run(self, context: Context) -> tuple[StateStore, DbtCloudStateAwareRun]:
        from airflow_provider_orchestra_dbt.hooks.dbt_cloud_executor import (
            DbtCloudRunOptions,
            DbtCloudStateAwareRun,
        )
        from airflow_provider_orchestra_dbt.hooks.dbt_cloud_job import DbtCloudJob

        try:
            store, key_prefix = self._state_store()
        except ValueError as exc:  # a misconfigured connection; the message names it
            raise AirflowException(f"{self.task_id}: {exc}") from exc
        run_info = task_run_info(context)
        job = DbtCloudJob(
            self.dbt_cloud_conn_id,
            int(self.job_id),
            account_id=self._account(),
            poll_interval=self.poll_interval,
            timeout=self.timeout,
        )
        options = DbtCloudRunOptions(
            command=self.command,
            selection=self._selection(),
            reuse=self.reuse,
            full_refresh=self.full_refresh,
            cause=(
                f"Airflow {run_info['dag_id']} / {run_info['run_id']} / {run_info['task_id']} "
                f"try {run_info['try_number']} (airflow-provider-orchestra-dbt)"
            ),
            run_info=run_info,
        )
        run = DbtCloudStateAwareRun(
            job, store, self.log, options, key_prefix=key_prefix, stop=self._stop
        )
        return store, run

    def _account(self) -> int | None:
        account = self.account_id
        return int(account) if account is not None and account != "" else None

    def _selection(self) -> tuple[str, ...] | None:
        words: list[str] = []
        for flag, value in (("--select", self.select), ("--exclude", self.exclude)):
            if value:
                words += [flag, *([value] if isinstance(value, str) else value)]
        if self.selector:
            words += ["--selector", self.selector]
        return tuple(words) or None

    def _defer_to_trigger(self, run_id: int, pending: dict[str, Any]) -> None:
        from airflow_provider_orchestra_dbt.triggers.dbt_cloud import (
            OrchestraDbtCloudRunTrigger,
        )

        now = time.time()
        deadline = None
        if self.execution_timeout is not None:
            # The trigger reports the deadline itself, so that execute_complete can cancel
            # the run; Airflow's own deferral timeout would fail the task and leave it running.
            deadline = now + self.execution_timeout.total_seconds()
        self.log.info("Deferring until dbt Cloud run %d ends", run_id)
        self.defer(
            trigger=OrchestraDbtCloudRunTrigger(
                conn_id=self.dbt_cloud_conn_id,
                run_id=run_id,
                end_time=now + self.timeout,
                poll_interval=self.poll_interval,
                account_id=self._account(),
                execution_deadline=deadline,
                pending=pending,
            ),
            method_name="execute_complete",
            timeout=None,
        )

    # -- Assets ----------------------------------------------------------------------------

    def _manifest_path(self) -> Path | None:
        manifest_path = self.outputs.manifest_path
        if not manifest_path or is_templated(manifest_path):
            return None
        return Path(manifest_path)

    def _node_refs(self, adapter_type: str | None) -> NodeRefs:
        # dbt Cloud's profile is not readable here: namespaces come from the adapter and
        # database, the same at parse time and at run time.
        return NodeRefs(adapter_type, project_dir=None, profiles_dir=None, target=None)
