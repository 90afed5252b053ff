"""State-aware runs of a dbt Cloud job: plan on what the job's dbt sees, build only what changed.

The executor seam (docs/design.md §2) served by dbt Cloud instead of a local process:

1. **Plan run.** The job is triggered with ``steps_override`` = ``dbt docs generate <the
   job's selection>`` and ``dbt source freshness`` (``execution/dbt_cloud_steps.py``). Its
   artifacts give the graph (``manifest.json``), the selection (the compiled nodes), which
   relations exist (``catalog.json``) and the sources' freshness (``sources.json``).
2. **Plan** with the same rules and reasons as a local run, on state keyed per dbt Cloud
   account and environment.
3. **Build run**, only if a node is to be built: ``dbt build --select <exactly those
   nodes>`` steps (``reuse=False``: the job's own steps), with a cause naming the Airflow run.
4. **Outcomes** from each step's ``run_results.json``, recorded in the state store.

Between 3 and 4 the Airflow operator may defer: :class:`PendingBuild` carries what recording
needs (the plan's decisions and the state entries it planned on) as a compact string, and the
graph and probe are read again from the plan run's artifacts. dbt Cloud runs one run of a
job at a time, so the build never meets another build of the same job in the warehouse.
"""

from __future__ import annotations

import base64
import json
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprinter
from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import (
    Action,
    Decision,
    Plan,
    PlanOptions,
    Probe,
    probe_targets,
)
from airflow_provider_orchestra_dbt.decisions.selection import node_selection
from airflow_provider_orchestra_dbt.execution.config import parse_vars
from airflow_provider_orchestra_dbt.execution.dbt_cloud_steps import (
    JobStep,
    build_steps,
    job_step,
    plan_steps,
)
from airflow_provider_orchestra_dbt.execution.executor import RunLogger
from airflow_provider_orchestra_dbt.execution.manifest_graph import ArtifactError, graph_message
from airflow_provider_orchestra_dbt.execution.run_artifacts import node_results, probe_message
from airflow_provider_orchestra_dbt.execution.run_steps import (
    loaded_state,
    logged_plan,
    record_outcomes,
    seconds_saved,
)
from airflow_provider_orchestra_dbt.hooks.dbt_cloud_job import (
    CANCELLED,
    SUCCESS,
    DbtCloudJob,
    DbtCloudJobDefinition,
    DbtCloudJobError,
    DbtCloudRun,
)
from airflow_provider_orchestra_dbt.presentation.report import RunReport
from airflow_provider_orchestra_dbt.state import StateEntries, StateEntry, StateStore

__all__ = ["DbtCloudRunOptions", "DbtCloudStateAwareRun", "PendingBuild", "PlanRun"]

# dbt Cloud numbers its own steps (clone, profile, deps) before the job's: artifacts are
# looked for this many steps past the ones sent.
SYSTEM_STEPS = 5
CAUSE_MAX_CHARS = 255  # dbt Cloud refuses a longer cause


@dataclass(frozen=True)
class DbtCloudRunOptions:
    """What one state-aware run of a job does.

    ``selection``: ``--select``/``--exclude``/``--selector`` words replacing the job's own
    (None: the selection of the job's ``dbt build`` step).
    """

    command: str = "build"
    selection: tuple[str, ...] | None = None
    reuse: bool = True
    full_refresh: bool = False
    cause: str = "Triggered by airflow-provider-orchestra-dbt"
    run_info: Mapping[str, Any] = field(default_factory=dict)
    full_plan_table: bool = False


@dataclass(frozen=True)
class PlanRun:
    """What the plan run measured: the graph, the selection, the sources and the relations."""

    run_id: int
    graph: Graph
    selected: tuple[str, ...]
    sources: Any | None
    catalog: Any | None

    def probe(self) -> Probe:
        sources, schemas = probe_targets(self.graph, self.selected)
        message = probe_message(
            self.sources,
            self.catalog,
            wanted_sources=sources,
            covered_schemas=schemas,
            origin=f"dbt Cloud run {self.run_id}",
        )
        if self.catalog is None:
            # Without a catalog nothing says the relations still exist: build, not reuse.
            unlisted = {"error": f"dbt Cloud run {self.run_id} wrote no catalog.json"}
            message["relations"] = {f"{db}.{schema}": unlisted for db, schema in schemas}
        return Probe.from_message(message)


@dataclass(frozen=True)
class PendingBuild:
    """A build run triggered but not recorded yet, in a form Airflow can keep while deferred."""

    run_id: int
    plan_run_id: int
    steps: int
    record: str  # the decisions and the state planned on: compressed JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "plan_run_id": self.plan_run_id,
            "steps": self.steps,
            "record": self.record,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingBuild:
        return cls(
            int(data["run_id"]), int(data["plan_run_id"]), int(data["steps"]), str(data["record"])
        )


@dataclass(frozen=True)
class Planned:
    """The outcome of planning: a finished report (nothing to build) or a build under way."""

    report: RunReport | None = None
    pending: PendingBuild | None = None


class DbtCloudStateAwareRun:
    """One state-aware run of ``job``, recording into ``store``."""

    def __init__(
        self,
        job: DbtCloudJob,
        store: StateStore | None,
        log: RunLogger,
        options: DbtCloudRunOptions,
        *,
        key_prefix: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.store = store
        self.log = log
        self.options = options
        self._key_prefix = key_prefix
        self.stop = stop or threading.Event()
        self._plan_runs: dict[int, PlanRun] = {}

    # -- the whole run, waiting in this process --------------------------------------------

    def run(self) -> RunReport:
        planned = self.plan()
        if planned.report is not None:
            return planned.report
        assert planned.pending is not None
        finished = self.job.wait(planned.pending.run_id, self.stop)
        return self.complete(planned.pending, finished)

    # -- plan, then trigger ----------------------------------------------------------------

    def plan(self) -> Planned:
        options = self.options
        plan_run = self.plan_run(self._step.selection if options.selection is None else None)
        state = loaded_state(self.store, self.log)
        probe = plan_run.probe()
        for source_id, fresh in probe.freshness.items():
            if fresh.error:
                self.log.warning("Freshness of %s is unknown: %s", source_id, fresh.error)
        the_plan = logged_plan(
            self.log,
            plan_run.graph,
            plan_run.selected,
            state,
            self._fingerprinter(plan_run.graph),
            probe,
            self._plan_options,
            full_table=options.full_plan_table,
        )
        to_execute = the_plan.to_execute()
        if not to_execute:
            self.log.info("Nothing to build: no dbt Cloud build run is triggered.")
            report = self._report(plan_run, the_plan, {}, state, exit_code=0, updates=0)
            self.log.info(report.summary_line())
            return Planned(report=report)
        steps: list[str] | None = None
        if options.reuse:
            chunks = node_selection(plan_run.graph, to_execute).chunks()
            steps = build_steps(
                self._step, options.command, chunks, full_refresh=options.full_refresh
            )
            self.log.info(
                "Building %d of %d planned nodes in dbt Cloud:\n  %s",
                len(to_execute),
                len(the_plan.decisions),
                "\n  ".join(steps),
            )
        else:
            self.log.info("reuse is off: running %s as configured", self.job.where)
        run_id = self.job.trigger(steps, _cause(options.cause))
        self.log.info("%s: build run %d triggered", self.job.where, run_id)
        planned_on = _planned_on(plan_run.graph, the_plan, state)
        record = _encode(
            {
                "decisions": [
                    [d.unique_id, d.action.value, d.reason, d.key is not None]
                    for d in the_plan.decisions
                ],
                "state": {key: entry.to_json() for key, entry in planned_on.items()},
                "saved": seconds_saved(the_plan, state),
            }
        )
        steps_sent = len(steps) if steps is not None else len(self._definition.steps)
        return Planned(pending=PendingBuild(run_id, plan_run.run_id, steps_sent, record))

    def plan_run(self, selection: Sequence[str] | None) -> PlanRun:
        """Trigger the plan run, wait for it, and read what it measured."""
        steps = plan_steps(self._step, self.options.selection or selection)
        self.log.info("%s: plan run with steps %s", self.job.where, steps)
        run_id = self.job.trigger(steps, _cause(f"{self.options.cause} (plan)"))
        finished = self.job.wait(run_id, self.stop)
        return self._read_plan_run(finished)

    # -- after the build run ---------------------------------------------------------------

    def complete(self, pending: PendingBuild, finished: DbtCloudRun) -> RunReport:
        """Read the build run's results and record them; the report says how it went."""
        plan_run = self._plan_runs.get(pending.plan_run_id) or self._read_plan_run(
            self.job.run(pending.plan_run_id)
        )
        graph = plan_run.graph
        record = _decode(pending.record)
        the_plan = self._rebuilt_plan(graph, record["decisions"])
        state = {key: StateEntry.from_json(raw) for key, raw in record["state"].items()}
        results = self._build_results(finished.id, pending.steps)
        probe = plan_run.probe()
        updates = record_outcomes(
            self.store, self.log, graph, the_plan, results, state, probe, self.options.run_info
        )
        exit_code, error = 0, None
        if finished.status == CANCELLED:
            exit_code, error = 130, f"{self.job.where}: run {finished.id} was cancelled"
        elif finished.status != SUCCESS:
            exit_code = 1
            error = f"{self.job.where}: run {finished.id} ended with status {finished.status_name}"
        report = self._report(
            plan_run, the_plan, results, state, exit_code=exit_code, updates=updates,
            saved=float(record["saved"]), error=error,
        )  # fmt: skip
        self.log.info(report.summary_line())
        return report

    def cancel(self, run_id: int) -> None:
        self.job.cancel(run_id)

    # -- reading artifacts -----------------------------------------------------------------

    def _read_plan_run(self, finished: DbtCloudRun) -> PlanRun:
        run_id = finished.id
        generate = freshness = None
        for step, names in self._steps_with_artifacts(run_id, 2):
            if "catalog.json" in names or ("manifest.json" in names and generate is None):
                generate = step
            if "sources.json" in names:
                freshness = step
            if generate is not None and freshness is not None:
                break
        if generate is None:
            raise DbtCloudJobError(
                f"{self.job.where}: plan run {run_id} ({finished.status_name}) left no "
                "manifest.json: the project could not be compiled; see the run's logs in "
                "dbt Cloud"
            )
        origin = f"of dbt Cloud run {run_id}"
        try:
            compiled = node_results(
                self.job.artifact(run_id, "run_results.json", step=generate),
                origin=f"run_results.json {origin}",
            )
            manifest = self.job.artifact(run_id, "manifest.json", step=generate)
            selected = [r.unique_id for r in compiled]
            graph = Graph.from_message(
                graph_message(manifest, origin=f"manifest.json {origin}", selected=selected)
            )
        except ArtifactError as exc:
            raise DbtCloudJobError(f"{self.job.where}: {exc}") from exc
        catalog = None
        if "catalog.json" in self.job.artifact_names(run_id, step=generate):
            catalog = self.job.artifact(run_id, "catalog.json", step=generate)
        else:
            self.log.warning(
                "dbt Cloud run %d wrote no catalog.json: whether relations exist cannot be "
                "checked, so every selected model is built",
                run_id,
            )
        sources = None
        if freshness is not None:
            sources = self.job.artifact(run_id, "sources.json", step=freshness)
        plan_run = PlanRun(
            run_id, graph, tuple(u for u in selected if u in graph.nodes), sources, catalog
        )
        self._plan_runs[run_id] = plan_run
        return plan_run

    def _build_results(self, run_id: int, steps: int) -> dict[str, NodeResult]:
        """Every node result of the run's steps that ran ``command``, later steps winning."""
        results: dict[str, NodeResult] = {}
        read = 0
        for step, names in self._steps_with_artifacts(run_id, steps):
            if read == steps:
                break
            if "run_results.json" not in names:
                continue
            read += 1
            document = self.job.artifact(run_id, "run_results.json", step=step)
            which = (
                (document.get("args") or {}).get("which") if isinstance(document, dict) else None
            )
            if which not in (None, "build", "run", "test", "seed", "snapshot"):
                continue
            try:
                for result in node_results(
                    document, origin=f"run_results.json of dbt Cloud run {run_id} step {step}"
                ):
                    results[result.unique_id] = result
            except ArtifactError as exc:
                raise DbtCloudJobError(f"{self.job.where}: {exc}") from exc
        return results

    def _steps_with_artifacts(self, run_id: int, steps: int) -> Iterable[tuple[int, list[str]]]:
        """Steps that wrote artifacts, in order; callers stop once they have what they need."""
        for step in range(1, steps + SYSTEM_STEPS + 1):
            names = self.job.artifact_names(run_id, step=step)
            if names:
                yield step, names

    # -- planning inputs -------------------------------------------------------------------

    @cached_property
    def _definition(self) -> DbtCloudJobDefinition:
        return self.job.definition()

    @cached_property
    def _step(self) -> JobStep:
        try:
            return job_step(self._definition.steps, self.options.command)
        except ValueError as exc:
            raise DbtCloudJobError(f"{self.job.where}: {exc}") from exc

    @cached_property
    def _plan_options(self) -> PlanOptions:
        definition = self._definition
        account = definition.account_id or self.job.account_id or "default"
        environment = definition.environment_id
        # A dbt Cloud environment's builds are its own: a local run of the same project
        # never reuses them, nor they a local build. So are a target's, where the job names
        # one other than the environment's.
        scope = f"dbt_cloud/{account}/{environment}"
        target = self._step.value("--target", "-t")
        if target:
            scope += f"/{target}"
        prefix = f"{self._key_prefix}.{scope}" if self._key_prefix else scope
        return PlanOptions(
            command=self.options.command,
            reuse=self.options.reuse,
            full_refresh=self.options.full_refresh,
            key_prefix=prefix,
        )

    def _fingerprinter(self, graph: Graph) -> Fingerprinter:
        given = self._step.value("--vars")
        try:
            cli_vars = parse_vars(given) if given else {}
        except ValueError as exc:
            raise DbtCloudJobError(f"{self.job.where}: the job step's --vars: {exc}") from exc
        # The environment is dbt Cloud's: env_var() readers always build (docs/design.md §3).
        return Fingerprinter(graph, cli_vars=cli_vars, env=None)

    def _rebuilt_plan(self, graph: Graph, decisions: Sequence[Sequence[Any]]) -> Plan:
        """The plan as it was made, fingerprints computed again from the same manifest."""
        options = self._plan_options
        fingerprint = self._fingerprinter(graph)
        rebuilt = []
        for uid, action, reason, keyed in decisions:
            node = graph[uid]
            builds = Action(action) is Action.BUILD
            rebuilt.append(
                Decision(
                    uid,
                    node.resource_type,
                    Action(action),
                    reason,
                    key=options.key_for(node) if keyed else None,
                    fingerprint=fingerprint(uid) if keyed and builds else None,
                )
            )
        return Plan(tuple(rebuilt), options)

    def _report(
        self,
        plan_run: PlanRun,
        the_plan: Plan,
        results: Mapping[str, NodeResult],
        state: StateEntries,
        *,
        exit_code: int,
        updates: int,
        saved: float | None = None,
        error: str | None = None,
    ) -> RunReport:
        return RunReport(
            command=self.options.command,
            target=None,
            exit_code=exit_code,
            error=error,
            graph=plan_run.graph,
            plan=the_plan,
            results=dict(results),
            time_saved_seconds=seconds_saved(the_plan, state) if saved is None else saved,
            state_updates=updates,
            run_info=self.options.run_info,
        )


def _planned_on(graph: Graph, the_plan: Plan, state: StateEntries) -> StateEntries:
    """The state entries recording reads: the planned nodes', and their parents'."""
    options = the_plan.options
    keys: set[str] = set()
    for decision in the_plan.decisions:
        ids = [decision.unique_id]
        if graph[decision.unique_id].is_test:
            ids += graph.tested_nodes(decision.unique_id)
        elif decision.builds:
            ids += graph.upstream(decision.unique_id).nodes
        keys.update(options.key_for(graph[uid]) for uid in ids if uid in graph.nodes)
    return {key: state[key] for key in keys if key in state}


def _cause(text: str) -> str:
    return text if len(text) <= CAUSE_MAX_CHARS else text[: CAUSE_MAX_CHARS - 1] + "…"


def _encode(record: Mapping[str, Any]) -> str:
    raw = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def _decode(record: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(zlib.decompress(base64.b64decode(record)))
    return decoded
