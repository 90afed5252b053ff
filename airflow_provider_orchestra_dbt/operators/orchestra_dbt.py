"""OrchestraDbtOperator: run dbt from an Airflow task, rebuilding only what needs rebuilding.

The operator is thin: it renders arguments, picks the state store, and hands the run to the
engine's ``DbtSession`` (dbt itself runs in a subprocess). Results go to the task log, XCom and
the state store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_orchestra_dbt.engine.session import DbtSession
    from airflow_provider_orchestra_dbt.state import StateStore

NODE_DETAILS_XCOM_KEY = "orchestra_dbt_nodes"
STATE_FILE_ENV = "ORCHESTRA_DBT_STATE_FILE"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class OrchestraDbtOperator(BaseOperator):
    """Run a dbt command; ``build``, ``run`` and ``test`` reuse nodes that need no rebuild.

    :param project_dir: the dbt project directory (holds ``dbt_project.yml``). Never modified.
    :param profiles_dir: directory holding ``profiles.yml`` (default: dbt's own lookup).
    :param target: dbt target. Templated.
    :param command: dbt command; build/run/test are state-aware, others run unchanged.
    :param select: dbt selection (string or list). Templated.
    :param exclude: dbt exclusion (string or list). Templated.
    :param selector: a selector from ``selectors.yml``. Templated.
    :param vars: dbt vars, a mapping (or a YAML/JSON string of one). Templated.
    :param full_refresh: pass ``--full-refresh`` and rebuild everything selected. Templated.
    :param threads: dbt threads.
    :param env: extra environment variables for dbt. Templated.
    :param dbt_args: extra dbt flags as a list, e.g. ``["--fail-fast"]``. Templated.
    :param state_conn_id: an ``orchestra_dbt`` connection for state; without one, a local file
        (``$ORCHESTRA_DBT_STATE_FILE`` or ``$AIRFLOW_HOME/orchestra_dbt/state.json``).
    :param reuse: set False to build everything selected (state is still recorded).
    :param dry_run: only plan: log and return the decisions, run no model, change no state.
    :param dbt_python: interpreter for the dbt worker, e.g. a separate dbt virtualenv's python.
    :param push_node_details: also push per-node decisions and results to XCom
        (key ``orchestra_dbt_nodes``).
    """

    template_fields: Sequence[str] = (
        "project_dir",
        "profiles_dir",
        "target",
        "select",
        "exclude",
        "selector",
        "vars",
        "full_refresh",
        "env",
        "dbt_args",
    )
    template_fields_renderers = {"vars": "json", "env": "json", "dbt_args": "json"}
    ui_color = "#ff694a"

    def __init__(
        self,
        *,
        project_dir: str | os.PathLike[str],
        profiles_dir: str | os.PathLike[str] | None = None,
        target: str | None = None,
        command: str = "build",
        select: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool | str = False,
        threads: int | None = None,
        env: Mapping[str, str] | None = None,
        dbt_args: Sequence[str] | None = None,
        state_conn_id: str | None = None,
        reuse: bool = True,
        dry_run: bool = False,
        dbt_python: str | None = None,
        push_node_details: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.project_dir = str(project_dir)
        self.profiles_dir = str(profiles_dir) if profiles_dir else None
        self.target = target
        self.command = command
        self.select = select
        self.exclude = exclude
        self.selector = selector
        self.vars = vars
        self.full_refresh = full_refresh
        self.threads = threads
        self.env = env
        self.dbt_args = dbt_args
        self.state_conn_id = state_conn_id
        self.reuse = reuse
        # BaseOperator.dry_run is a method (render-only dry run), so keep ours apart.
        self.plan_only = dry_run
        self.dbt_python = dbt_python
        self.push_node_details = push_node_details
        self._session: DbtSession | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_orchestra_dbt.engine.config import ConfigError, DbtRunConfig
        from airflow_provider_orchestra_dbt.engine.session import DbtRunError, DbtSession
        from airflow_provider_orchestra_dbt.state import StateError

        try:
            store, key_prefix = self._state_store()
        except ValueError as exc:  # a misconfigured connection; the message names it
            raise AirflowException(f"{self.task_id}: {exc}") from None
        try:
            config = DbtRunConfig.create(
                project_dir=self.project_dir,
                command=self.command,
                profiles_dir=self.profiles_dir,
                target=self.target,
                select=self.select,
                exclude=self.exclude,
                selector=self.selector,
                vars=self.vars,
                full_refresh=_as_bool("full_refresh", self.full_refresh),
                threads=self.threads,
                env=self.env,
                dbt_args=self.dbt_args,
                reuse=self.reuse,
                dry_run=self.plan_only,
                python=self.dbt_python,
                key_prefix=key_prefix,
                run_info=_run_info(context),
            )
        except ConfigError as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from None
        self._session = DbtSession(config, store, self.log)
        try:
            report = self._session.run()
        except (DbtRunError, StateError) as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from None
        finally:
            self._session = None

        summary = report.summary()
        ti = context["ti"]
        if self.push_node_details:
            ti.xcom_push(key=NODE_DETAILS_XCOM_KEY, value=report.node_details())
        if not report.success:
            # State and node details are already saved; the summary must be there too.
            ti.xcom_push(key="return_value", value=summary)
            raise AirflowException(_failure_message(self.task_id, summary))
        return summary

    def on_kill(self) -> None:
        session = self._session
        if session is not None:
            session.stop()

    def _state_store(self) -> tuple[StateStore, str | None]:
        if self.state_conn_id:
            from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import OrchestraDbtHook

            hook = OrchestraDbtHook(orchestra_dbt_conn_id=self.state_conn_id)
            return hook.get_state_store(), hook.config.integration_account_id
        from airflow_provider_orchestra_dbt.state import LocalFileStateStore

        return LocalFileStateStore(default_state_file()), None


def default_state_file() -> Path:
    explicit = os.environ.get(STATE_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("AIRFLOW_HOME") or "~/airflow"
    return Path(home).expanduser() / "orchestra_dbt" / "state.json"


def _as_bool(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise AirflowException(f"{name} must be true or false, got {value!r}")


def _run_info(context: Context) -> dict[str, Any]:
    ti = context["ti"]
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "map_index": getattr(ti, "map_index", -1),
    }


def _failure_message(task_id: str, summary: Mapping[str, Any]) -> str:
    counts = summary["counts"]
    if summary.get("exit_code") == 130:
        return f"{task_id}: dbt was interrupted; nodes that finished were recorded"
    failed = ", ".join(summary["failed"][:10]) or "none"
    return (
        f"{task_id}: dbt {summary['command']} finished with failures "
        f"({counts['failed']} nodes and {counts['tests_failed']} tests failed: {failed}); "
        "state and XCom were saved, so a retry rebuilds only what failed or is stale"
    )
