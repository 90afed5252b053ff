"""What both operators do around a dbt run: Assets, lineage, the picture, XCom and state.

``OrchestraDbtOperator`` (dbt in a local worker) and ``OrchestraDbtCloudOperator`` (a dbt Cloud
job) differ in how dbt runs and agree on everything a run publishes: Assets declared at parse
time from a manifest and events only for models rebuilt, OpenLineage inputs and outputs, the
run picture and its extra link, the summary and node details in XCom, and where state lives.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException

from airflow_provider_orchestra_dbt.assets import DbtNodeRef, NodeRefs
from airflow_provider_orchestra_dbt.operators.options import DbtTaskOutputs

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

    from airflow_provider_orchestra_dbt.presentation.report import RunReport
    from airflow_provider_orchestra_dbt.state import StateStore

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


class OrchestraDbtBaseOperator(BaseOperator):
    """The publishing half of a state-aware dbt operator; subclasses run dbt.

    Subclasses set ``select`` and ``exclude`` and call :meth:`_declare_assets` at the end
    of ``__init__``, and :meth:`_publish` with the run's report.
    """

    operator_extra_links = (OrchestraDbtRunPictureLink(),)
    select: str | Sequence[str] | None
    exclude: str | Sequence[str] | None

    def __init__(
        self, *, state_conn_id: str | None, outputs: DbtTaskOutputs, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.state_conn_id = state_conn_id
        self.outputs = outputs
        self.asset_alias = AssetAlias(name=f"orchestra_dbt/{self.dag_id}/{self.task_id}")
        self._report: RunReport | None = None

    def _publish(self, context: Context, report: RunReport, store: StateStore) -> dict[str, Any]:
        """Assets, picture and XCom for a finished run; raises when dbt reported failures."""
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

        path = self._manifest_path()
        if path is None:
            return []
        try:
            index = load_manifest(path)
        except (OSError, ValueError, KeyError) as exc:
            self.log.debug("No Assets declared for %s: %s", self.task_id, exc)
            return []
        select, exclude = self._asset_selection()
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

    def _manifest_path(self) -> Path | None:
        """The manifest.json Assets are declared from at parse time (None: declare none)."""
        raise NotImplementedError

    def _asset_selection(self) -> tuple[str | Sequence[str] | None, str | Sequence[str] | None]:
        """``select`` and ``exclude`` as known at parse time (templated ones: everything)."""
        select = None if is_templated(self.select, self.exclude) else self.select
        return select, None if select is None else self.exclude

    def _node_refs(self, adapter_type: str | None) -> NodeRefs:
        raise NotImplementedError

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


def is_templated(*values: Any) -> bool:
    return any("{{" in str(v) or "{%" in str(v) for v in values if v)


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def task_run_info(context: Context) -> dict[str, Any]:
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
