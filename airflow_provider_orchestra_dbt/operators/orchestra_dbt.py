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
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Self

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.sdk import AssetAlias, BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException

from airflow_provider_orchestra_dbt.assets import DbtNodeRef, NodeRefs
from airflow_provider_orchestra_dbt.execution.config import RunOption, operator_options
from airflow_provider_orchestra_dbt.operators.options import DbtExecutionOptions, DbtTaskOutputs

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

    from airflow_provider_orchestra_dbt.execution.session import DbtSession
    from airflow_provider_orchestra_dbt.presentation.report import RunReport
    from airflow_provider_orchestra_dbt.state import StateStore

__all__ = ["DbtExecutionOptions", "DbtTaskOutputs", "OrchestraDbtOperator"]

NODE_DETAILS_XCOM_KEY = "orchestra_dbt_nodes"
PICTURE_XCOM_KEY = "orchestra_dbt_picture"
STATE_FILE_ENV = "ORCHESTRA_DBT_STATE_FILE"
PICTURE_BASE_URL_ENV = "ORCHESTRA_DBT_PICTURE_BASE_URL"


class OrchestraDbtRunPictureLink(BaseOperatorLink):
    """The task's "dbt run picture" button: the HTML graph of what the run built and why."""

    name = "dbt run picture"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        # Airflow 3 serves extra links from the XCom the task pushed under ``xcom_key``.
        # (``Any``: the SDK's XCom wants its own protocol type for the same key.)
        from airflow.sdk.bases.xcom import BaseXCom

        url = str(BaseXCom.get_value(ti_key=ti_key, key=self.xcom_key) or "")
        if url.startswith("file:"):
            # The UI drops file:// links: point at the provider's api-server plugin, which
            # serves the picture from its picture directory or the state's S3 bucket.
            return _plugin_picture_url(ti_key)
        return url


def _plugin_picture_url(ti_key: Any) -> str:
    from airflow.configuration import conf

    from airflow_provider_orchestra_dbt.plugins.paths import picture_url

    relative = picture_url(
        ti_key.dag_id,
        ti_key.run_id,
        ti_key.task_id,
        ti_key.try_number,
        getattr(ti_key, "map_index", -1),
    )
    # Without a base URL a root-relative link still opens: the UI accepts same-origin links.
    base = conf.get("api", "base_url", fallback="") or "/"
    return f"{base.rstrip('/')}/{relative}"


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


class OrchestraDbtOperator(BaseOperator):
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
    operator_extra_links = (OrchestraDbtRunPictureLink(),)
    # __init__ sets every run option given as a parameter; these ones this class reads too.
    project_dir: str
    profiles_dir: str | None
    target: str | None
    select: str | Sequence[str] | None
    exclude: str | Sequence[str] | None

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
        super().__init__(**kwargs)
        for option in _PARAMS:
            value = given[option.parameter]
            setattr(self, _attribute(option), os.fspath(value) if _is_path(value) else value)
        self.state_conn_id = state_conn_id
        self.execution = execution
        self.outputs = outputs
        self.asset_alias = AssetAlias(name=f"orchestra_dbt/{self.dag_id}/{self.task_id}")
        self._session: DbtSession | None = None
        self._report: RunReport | None = None
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
                run_info=_run_info(context),
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
        self._report = report

        if self.outputs.emit_assets:
            self._emit_asset_events(context, report)
        summary = report.summary()
        # Where this task keeps state, for the UI plugin's reuse view and remote pictures.
        summary["state"] = {
            "conn_id": self.state_conn_id,
            "local_file": None if self.state_conn_id else str(default_state_file()),
        }
        ti = context["ti"]
        picture = self._write_picture(context, report, store)
        if picture is not None:
            summary["picture"] = picture
        if self.outputs.push_node_details:
            ti.xcom_push(key=NODE_DETAILS_XCOM_KEY, value=report.node_details())
        if not report.success:
            # State and node details are already saved; the summary must be there too.
            ti.xcom_push(key="return_value", value=summary)
            raise AirflowException(_failure_message(self.task_id, summary))
        return summary

    # -- the run's picture --------------------------------------------------------------------

    def _write_picture(self, context: Context, report: RunReport, store: StateStore) -> str | None:
        """Write the HTML graph of this try; a failure here never fails the run.

        Returns where it is: the S3 URI when the state is on S3 (so an api-server on another
        machine can serve it), else the local path.
        """
        from airflow_provider_orchestra_dbt.plugins.paths import picture_relative_path, picture_root
        from airflow_provider_orchestra_dbt.presentation.picture import write_run_html

        ti = context["ti"]
        picture_dir = self.outputs.picture_dir
        root = Path(picture_dir).expanduser() if picture_dir else picture_root()
        relative = picture_relative_path(
            ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1), ti.try_number
        )
        try:
            path = write_run_html(report, root / relative, title=f"{ti.dag_id} · {ti.task_id}")
        except OSError as exc:
            self.log.warning("Could not write the picture of this run: %s", exc)
            return None
        location = self._upload_picture(store, path, relative) or str(path)
        base = self.outputs.picture_base_url or os.environ.get(PICTURE_BASE_URL_ENV)
        url = f"{base.rstrip('/')}/{relative.as_posix()}" if base else path.as_uri()
        self.log.info("Picture of this run: %s", url)
        ti.xcom_push(key=PICTURE_XCOM_KEY, value=location)
        ti.xcom_push(key=OrchestraDbtRunPictureLink().xcom_key, value=url)
        return location

    def _upload_picture(self, store: StateStore, path: Path, relative: PurePosixPath) -> str | None:
        from airflow_provider_orchestra_dbt.plugins.paths import remote_picture_key
        from airflow_provider_orchestra_dbt.state import StateError
        from airflow_provider_orchestra_dbt.state.s3 import S3StateStore

        if not isinstance(store, S3StateStore):
            return None
        key = remote_picture_key(store.key, relative)
        try:
            store.write_object(key, path.read_bytes(), "text/html; charset=utf-8")
        except (OSError, StateError) as exc:
            self.log.warning("Could not upload the picture of this run: %s", exc)
            return None
        return f"s3://{store.bucket}/{key}"

    # -- Assets and lineage ----------------------------------------------------------------------

    def _declare_assets(self) -> None:
        """Declare Assets from the manifest at parse time; never fails DAG parsing.

        Airflow emits an event for every Asset in ``outlets`` when a task succeeds, so model
        Assets are registered through ``inlets`` (next to the sources they are built from)
        and events go through the AssetAlias outlet, only for models this run rebuilt.
        Registering them up front also avoids Airflow creating them concurrently from two
        tasks' alias events.
        """
        self.outlets = [*self.outlets, self.asset_alias]
        declared = self._manifest_assets()
        if declared:
            self.inlets = [*self.inlets, *declared]

    def _manifest_assets(self) -> list[Asset]:
        from airflow_provider_orchestra_dbt.assets.manifest import load_manifest

        manifest_path = self.outputs.manifest_path
        if _templated(self.project_dir, self.profiles_dir, self.target, manifest_path):
            return []
        path = Path(manifest_path or Path(self.project_dir) / "target" / "manifest.json")
        try:
            index = load_manifest(path)
        except (OSError, ValueError, KeyError) as exc:
            self.log.debug("No Assets declared for %s: %s", self.task_id, exc)
            return []
        select = None if _templated(self.select, self.exclude) else self.select
        exclude = None if select is None else self.exclude
        selected = index.select(_as_list(select), _as_list(exclude))
        models = [n for n in index.models() if selected is None or n.unique_id in selected]
        wanted = {m.unique_id for m in models}
        sources = {
            p for m in models for p in m.depends_on if p.startswith("source.") and p in index.nodes
        }
        refs = self._node_refs(index.adapter_type)
        return [
            self.outputs.asset_translator.asset(refs.from_manifest(index.nodes[uid]))
            for uid in sorted(wanted | sources)
        ]

    def _node_refs(self, adapter_type: str | None) -> NodeRefs:
        return NodeRefs(
            adapter_type,
            project_dir=self.project_dir,
            profiles_dir=self.profiles_dir,
            target=self.target,
        )

    def _refs(self, report: RunReport, unique_ids: list[str]) -> list[DbtNodeRef]:
        graph = report.graph
        if graph is None:
            return []
        refs = self._node_refs(graph.adapter_type)
        return [
            refs.ref(
                uid,
                node.resource_type,
                node.name,
                node.database,
                node.schema,
                node.alias,
                node.package_name,
            )
            for uid in unique_ids
            if (node := graph.nodes.get(uid)) is not None and node.alias
        ]

    def _built_models(self, report: RunReport) -> list[str]:
        graph = report.graph
        return [
            uid
            for uid in report.ids_with("built")
            if graph is not None and graph[uid].resource_type == "model"
        ]

    def _emit_asset_events(self, context: Context, report: RunReport) -> None:
        events = context["outlet_events"][self.asset_alias]
        for ref in self._refs(report, self._built_models(report)):
            result = report.results.get(ref.unique_id)
            events.add(
                self.outputs.asset_translator.asset(ref),
                extra={
                    "unique_id": ref.unique_id,
                    "status": result.status if result else None,
                    "rows_affected": result.rows_affected if result else None,
                    "execution_time": result.execution_time if result else None,
                    "dbt_invocation_id": report.invocation_id,
                },
            )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs and outputs of the nodes this run built (needs the OpenLineage provider)."""
        report = self._report
        if report is None or report.graph is None:
            return None
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        graph = report.graph
        built = [u for u in report.ids_with("built") if graph[u].is_stateful]
        upstream = sorted(
            {p for u in built for p in (*graph.upstream(u).nodes, *graph.upstream(u).sources)}
        )

        def datasets(ids: list[str]) -> list[Any]:
            return [
                Dataset(namespace=r.warehouse.namespace, name=r.dataset_name)
                for r in self._refs(report, ids)
            ]

        return OperatorLineage(inputs=datasets(upstream), outputs=datasets(built))

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


def _templated(*values: Any) -> bool:
    return any("{{" in str(v) or "{%" in str(v) for v in values if v)


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


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
