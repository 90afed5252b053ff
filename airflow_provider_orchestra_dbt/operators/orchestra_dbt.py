"""OrchestraDbtOperator: run dbt from an Airflow task, rebuilding only what needs rebuilding.

The operator is thin: it renders arguments, picks the state store, and hands the run to the
engine's ``DbtSession`` (dbt itself runs in a subprocess). Results go to the task log, XCom and
the state store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException

from airflow_provider_orchestra_dbt.assets import DbtAssetTranslator, DbtNodeRef, NodeRefs

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

    from airflow_provider_orchestra_dbt.execution.session import DbtSession
    from airflow_provider_orchestra_dbt.presentation.report import RunReport
    from airflow_provider_orchestra_dbt.state import StateStore

NODE_DETAILS_XCOM_KEY = "orchestra_dbt_nodes"
PICTURE_XCOM_KEY = "orchestra_dbt_picture"
STATE_FILE_ENV = "ORCHESTRA_DBT_STATE_FILE"
PICTURE_BASE_URL_ENV = "ORCHESTRA_DBT_PICTURE_BASE_URL"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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
    :param target_path: keep dbt's artifacts (``manifest.json``, ``run_results.json``) in this
        directory (default: a per-run temp dir, removed afterwards). Runs of one project and
        target take turns, so a fixed path holds the latest run's artifacts; template it, e.g.
        ``"/data/dbt-artifacts/{{ run_id }}"``, to keep each run's. Templated.
    :param lock_timeout: seconds to wait for another run of the same project and target (on
        this machine, or any sharing the state store) to finish before failing (default 3600;
        0 fails at once).
    :param push_node_details: also push per-node decisions and results to XCom
        (key ``orchestra_dbt_nodes``).
    :param manifest_path: the project's ``manifest.json``, read when the DAG is parsed to
        declare one Asset per selected model and one per source (default
        ``<project_dir>/target/manifest.json``; produce it with ``dbt parse`` when deploying).
    :param asset_translator: maps dbt nodes to Asset names/URIs/groups.
    :param emit_assets: declare Assets and emit events for rebuilt models (default True).
    :param picture_dir: where each try writes its picture, an HTML graph of the run (default
        ``$ORCHESTRA_DBT_PICTURE_DIR``, else ``$AIRFLOW_HOME/orchestra_dbt/pictures``); with
        state on S3 it is also uploaded next to the state object, for the UI plugin.
    :param picture_base_url: URL under which ``picture_dir`` is served, for the task's
        "dbt run picture" link (default ``$ORCHESTRA_DBT_PICTURE_BASE_URL``; else the
        provider's UI plugin serves it).
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
        "target_path",
    )
    template_fields_renderers = {"vars": "json", "env": "json", "dbt_args": "json"}
    ui_color = "#ff694a"
    operator_extra_links = (OrchestraDbtRunPictureLink(),)

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
        target_path: str | os.PathLike[str] | None = None,
        lock_timeout: float | None = None,
        push_node_details: bool = True,
        manifest_path: str | os.PathLike[str] | None = None,
        asset_translator: DbtAssetTranslator | None = None,
        emit_assets: bool = True,
        picture_dir: str | os.PathLike[str] | None = None,
        picture_base_url: str | None = None,
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
        self.target_path = str(target_path) if target_path else None
        self.lock_timeout = lock_timeout
        self.push_node_details = push_node_details
        self.manifest_path = str(manifest_path) if manifest_path else None
        self.asset_translator = asset_translator or DbtAssetTranslator()
        self.emit_assets = emit_assets
        self.picture_dir = str(picture_dir) if picture_dir else None
        self.picture_base_url = picture_base_url
        self.asset_alias = AssetAlias(name=f"orchestra_dbt/{self.dag_id}/{self.task_id}")
        self._session: DbtSession | None = None
        self._report: RunReport | None = None
        if emit_assets:
            self._declare_assets()

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_orchestra_dbt.execution.config import ConfigError, DbtRunConfig
        from airflow_provider_orchestra_dbt.execution.session import DbtRunError, DbtSession
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
                target_path=self.target_path,
                lock_timeout=self.lock_timeout,
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
        self._report = report

        if self.emit_assets:
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
        if self.push_node_details:
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
        root = Path(self.picture_dir).expanduser() if self.picture_dir else picture_root()
        relative = picture_relative_path(
            ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1), ti.try_number
        )
        try:
            path = write_run_html(report, root / relative, title=f"{ti.dag_id} · {ti.task_id}")
        except OSError as exc:
            self.log.warning("Could not write the picture of this run: %s", exc)
            return None
        location = self._upload_picture(store, path, relative) or str(path)
        base = self.picture_base_url or os.environ.get(PICTURE_BASE_URL_ENV)
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

        if _templated(self.project_dir, self.profiles_dir, self.target, self.manifest_path):
            return []
        path = Path(self.manifest_path or Path(self.project_dir) / "target" / "manifest.json")
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
            self.asset_translator.asset(refs.from_manifest(index.nodes[uid]))
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
                self.asset_translator.asset(ref),
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
