"""OrchestraDbtOperator: run dbt from an Airflow task, rebuilding only what needs rebuilding.

The operator is thin: it renders arguments, picks the state store, and hands the run to the
engine's ``DbtSession`` (dbt itself runs in a subprocess). Results go to the task log, XCom and
the state store.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.sdk.exceptions import AirflowException

from airflow_provider_orchestra_dbt.assets import NodeRefs
from airflow_provider_orchestra_dbt.execution.config import RunOption, operator_options
from airflow_provider_orchestra_dbt.operators.base import (
    NODE_DETAILS_XCOM_KEY,
    PICTURE_XCOM_KEY,
    OrchestraDbtBaseOperator,
    OrchestraDbtRunPictureLink,
    is_templated,
    task_run_info,
)
from airflow_provider_orchestra_dbt.operators.options import DbtExecutionOptions, DbtTaskOutputs

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_orchestra_dbt.execution.session import DbtSession

__all__ = [
    "NODE_DETAILS_XCOM_KEY",
    "PICTURE_XCOM_KEY",
    "DbtExecutionOptions",
    "DbtTaskOutputs",
    "OrchestraDbtOperator",
    "OrchestraDbtRunPictureLink",
]

_PARAMS = operator_options("param")
_EXECUTION = operator_options("execution")
_OUTPUTS = tuple(f.name for f in fields(DbtTaskOutputs))


def _attribute(option: RunOption) -> str:
    """Where the operator keeps a run option given as a parameter.

    Under its parameter name, except ``dry_run``: BaseOperator.dry_run is a method (a
    render-only dry run), so it is kept as ``plan_only``.
    """
    name = option.parameter
    return "plan_only" if name == "dry_run" else name


class OrchestraDbtOperator(OrchestraDbtBaseOperator):
    """Run a dbt command; ``build``, ``run`` and ``test`` reuse nodes that need no rebuild."""

    __doc__ = (
        (__doc__ or "")
        + "\n\n"
        + "\n".join(
            [
                *(f"    :param {o.parameter}: {o.doc}" for o in _PARAMS),
                "    :param state_conn_id: an ``orchestra_dbt`` connection for state; without",
                "        one, a local file (``$ORCHESTRA_DBT_STATE_FILE`` or",
                "        ``$AIRFLOW_HOME/orchestra_dbt/state.json``).",
                "    :param execution: how dbt runs, a ``DbtExecutionOptions``:",
                *(f"        ``{o.parameter}``: {o.doc}" for o in _EXECUTION),
                "    :param outputs: what the task publishes besides its return value, a",
                f"        ``DbtTaskOutputs`` ({', '.join(_OUTPUTS)}).",
            ]
        )
    )
    template_fields: Sequence[str] = (
        *(_attribute(o) for o in _PARAMS if o.templated),
        *(("execution",) if DbtExecutionOptions.template_fields else ()),
    )
    template_fields_renderers = {_attribute(o): o.renderer for o in _PARAMS if o.renderer}
    ui_color = "#ff694a"
    # __init__ sets every run option given as a parameter; these ones this class reads too.
    project_dir: str
    profiles_dir: str | None
    target: str | None

    def __init__(
        self,
        *,
        project_dir: str | os.PathLike[str],
        profiles_dir: str | os.PathLike[str] | None = None,
        target: str | None = None,
        command: str | None = None,
        select: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool | str | None = None,
        env: Mapping[str, str] | None = None,
        dbt_args: Sequence[str] | None = None,
        state_conn_id: str | None = None,
        reuse: bool | str | None = None,
        dry_run: bool | str | None = None,
        execution: DbtExecutionOptions | None = None,
        outputs: DbtTaskOutputs | None = None,
        **kwargs: Any,
    ) -> None:
        """Run options left None take their declared default (see ``DbtRunConfig``)."""
        given = locals()  # the run options given as parameters, by their declared names
        execution, outputs = _regroup(kwargs, execution, outputs)
        super().__init__(state_conn_id=state_conn_id, outputs=outputs, **kwargs)
        for option in _PARAMS:
            value = given[option.parameter]
            setattr(self, _attribute(option), os.fspath(value) if _is_path(value) else value)
        self.execution = execution
        self._session: DbtSession | None = None
        if outputs.emit_assets:
            self._declare_assets()

    def prepare_for_execution(self) -> Self:
        other = super().prepare_for_execution()
        # Airflow renders a nested object's template fields in place: the copy that runs
        # gets its own, so the DAG's operator keeps its templates.
        other.execution = copy.copy(self.execution)
        return other

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_orchestra_dbt.execution.config import ConfigError, DbtRunConfig
        from airflow_provider_orchestra_dbt.execution.session import DbtRunError, DbtSession
        from airflow_provider_orchestra_dbt.state import StateError

        try:
            store, key_prefix = self._state_store()
        except ValueError as exc:  # a misconfigured connection; the message names it
            raise AirflowException(f"{self.task_id}: {exc}") from exc
        try:
            config = DbtRunConfig.create(
                **{o.name: getattr(self, _attribute(o)) for o in _PARAMS},
                **self.execution.run_options(),
                key_prefix=key_prefix,
                run_info=task_run_info(context),
            )
        except ConfigError as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from exc
        self._session = DbtSession(config, store, self.log)
        try:
            report = self._session.run()
        except (DbtRunError, StateError) as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from exc
        finally:
            self._session = None
        return self._publish(context, report, store)

    def _manifest_path(self) -> Path | None:
        manifest_path = self.outputs.manifest_path
        if is_templated(self.project_dir, self.profiles_dir, self.target, manifest_path):
            return None
        return Path(manifest_path or Path(self.project_dir) / "target" / "manifest.json")

    def _node_refs(self, adapter_type: str | None) -> NodeRefs:
        return NodeRefs(
            adapter_type,
            project_dir=self.project_dir,
            profiles_dir=self.profiles_dir,
            target=self.target,
        )

    def on_kill(self) -> None:
        session = self._session
        if session is not None:
            session.stop()


def _is_path(value: Any) -> bool:
    return isinstance(value, os.PathLike)


def _regroup(
    kwargs: dict[str, Any], execution: DbtExecutionOptions | None, outputs: DbtTaskOutputs | None
) -> tuple[DbtExecutionOptions, DbtTaskOutputs]:
    """This operator's own copies of the option groups, with deprecated flat arguments moved in.

    Flat ``threads=4`` and the like (before 0.x) are taken from ``kwargs`` for one more
    release, with a warning naming the new spelling.
    """
    execution = copy.copy(execution) if execution is not None else DbtExecutionOptions()
    outputs = dataclasses.replace(outputs) if outputs is not None else DbtTaskOutputs()
    groups: list[tuple[str, object, tuple[str, ...]]] = [
        ("execution", execution, tuple(o.parameter for o in _EXECUTION)),
        ("outputs", outputs, _OUTPUTS),
    ]
    for group, target, names in groups:
        for name in [n for n in names if n in kwargs]:
            warnings.warn(
                f"OrchestraDbtOperator({name}=...) is deprecated: pass "
                f"{group}={type(target).__name__}({name}=...) instead",
                AirflowProviderDeprecationWarning,
                stacklevel=4,
            )
            setattr(target, name, kwargs.pop(name))
    return execution, outputs
