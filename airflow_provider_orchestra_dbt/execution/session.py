"""One state-aware dbt run: load state, ask the executor for facts, plan, execute, record.

Shared by the CLI and the Airflow operator; it knows nothing about Airflow, nor how dbt runs:
that is the executor's (``execution/executor.py``; the local dbt worker by default).
``stop()`` may be called from another thread or a signal handler (the operator's
``on_kill``): it interrupts dbt, and whatever finished before the interruption is still
recorded.

Runs of the same project and target on one machine take turns (``execution/run_lock.py``): a
run holds the lock from before it reads the state until its executor has closed, so the next
run plans on what this one built and never meets it in the warehouse. The local worker shares
the lock's descriptor, so even a run killed outright keeps it until its worker has died too.
Runs on different machines take turns on a lease in the state store for the same span, when
the store can keep one (S3, the local file store; see ``state/lease.py``). On PostgreSQL the
executor also takes an advisory lock in the warehouse (``execution/warehouse_lock.py``), which
relates runs that share neither machine nor state location: right after the flock and the
lease, before the state is read, and held until the executor closes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprinter
from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import KNOWN_STATUSES, NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import Plan, PlanOptions, Probe, probe_targets
from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.executor import (
    DbtLogLine,
    DotenvLoaded,
    ExecutionEvent,
    Executor,
    ExecutorContext,
    ExecutorError,
    ExecutorFactory,
    ExecutorUnavailable,
    NodeFinished,
    NodeStarted,
    ProjectFacts,
    RunLogger,
    SelectionUnmatched,
)
from airflow_provider_orchestra_dbt.execution.local_worker import LocalWorkerExecutor
from airflow_provider_orchestra_dbt.execution.locations import lease_name, run_lock_path
from airflow_provider_orchestra_dbt.execution.run_lock import (
    Holder,
    RunLock,
    RunLockError,
    RunLockStopped,
)
from airflow_provider_orchestra_dbt.execution.run_steps import (
    loaded_state,
    logged_plan,
    record_outcomes,
    seconds_saved,
)
from airflow_provider_orchestra_dbt.execution.warehouse_lock import (
    advisory_lock_key,
    application_name,
    wait_for_warehouse_lock,
)
from airflow_provider_orchestra_dbt.presentation.report import (
    ExecutionProgress,
    RunReport,
    finished_node_line,
    recorded_execution_times,
    unmatched_message,
    wants_full_plan,
)
from airflow_provider_orchestra_dbt.state import StateEntries, StateStore
from airflow_provider_orchestra_dbt.state.lease import DEFAULT_LEASE_TTL, Lease
from airflow_provider_orchestra_dbt.state.store import LeaseStore

LEASE_TTL_ENV = "ORCHESTRA_DBT_LEASE_TTL"


class DbtRunError(RuntimeError):
    """dbt could not run at all (bad project, profile, selection, crash): nothing was recorded."""


class DbtSession:
    """One run of one dbt command, from the locks to the recorded outcome.

    ``executor`` makes what runs dbt for the run (default: a local dbt worker process).
    """

    def __init__(
        self,
        config: DbtRunConfig,
        store: StateStore | None,
        logger: RunLogger,
        executor: ExecutorFactory = LocalWorkerExecutor,
    ) -> None:
        self.config = config
        self.store = store
        self.log = logger
        self._make_executor = executor
        self._executor: Executor | None = None
        self._results: dict[str, NodeResult] = {}
        self._unmatched: list[str] = []
        # Names dbt set from a .env file, with digests of their values.
        self._dotenv: dict[str, str] = {}
        self._stopped = threading.Event()
        self._run_lock: RunLock | None = None
        self._lease_lost: str | None = None
        # Only for a state-aware execution: its node lines count up to the nodes to execute.
        self._progress: ExecutionProgress | None = None

    # -- public --------------------------------------------------------------------------------

    def run(self) -> RunReport:
        config = self.config
        run_dir = Path(tempfile.mkdtemp(prefix="orchestra-dbt-"))
        target_path = config.target_path or run_dir / "target"
        try:
            if not config.state_aware:
                return self._passthrough(run_dir, target_path)
            return self._stateful(run_dir, target_path)
        except ExecutorUnavailable as exc:
            raise DbtRunError(exc.message) from exc
        except ExecutorError as exc:
            raise DbtRunError(_explain(exc, config)) from exc
        except DbtRunError as exc:
            if self._lease_lost is None:
                raise
            raise DbtRunError(f"{exc}: stopped because this run lost its lease") from exc
        finally:
            self._close(run_dir)

    def stop(self) -> None:
        """Interrupt dbt (SIGINT to its process group, then escalation)."""
        self._stopped.set()
        if self._executor is not None:
            self._executor.stop()

    # -- the two kinds of run ------------------------------------------------------------------

    def _passthrough(self, run_dir: Path, target_path: Path) -> RunReport:
        self._lock_run()  # dbt touches the warehouse as soon as it starts
        executor = self._start_executor(run_dir, target_path, state_aware=False)
        result = executor.run_as_given(self._on_event)
        return RunReport(
            command=self.config.command,
            target=self.config.target,
            exit_code=result.exit_code,
            error=result.error,
            results=dict(result.results),
            run_info=self.config.run_info,
            unmatched_selection=tuple(self._unmatched),
        )

    def _stateful(self, run_dir: Path, target_path: Path) -> RunReport:
        config = self.config
        # Opened before the executor starts, so that its worker shares the lock taken below.
        self._open_run_lock()
        # Parsing and selection touch neither the warehouse nor the state (dbt-duckdb does not
        # open its file to parse), so the executor does them while this run may still wait.
        executor = self._start_executor(run_dir, target_path, state_aware=True)
        facts = executor.project(self._on_event)
        if config.selector and not facts.selected:
            # dbt warns per --select/--exclude criterion only, never for a YAML selector.
            self._unmatched_criterion(f"selector:{config.selector}")
        # The state is read under the locks, so a run that waited plans on the previous run's
        # results and reuses what it built. The warehouse's lock comes last: the adapter is
        # known only once the project is parsed, and it is the one lock a run with another
        # state location or on another machine may hold.
        waited = self._lock_run()
        self._lock_warehouse(executor, facts.adapter_type, waited)
        state = loaded_state(self.store, self.log)
        probe = self._probe(executor, facts)
        the_plan = self._plan(facts, state, probe)

        if self._stopped.is_set():
            raise DbtRunError(f"dbt {config.command} was stopped while planning; nothing ran")
        if config.dry_run or not the_plan.to_execute():
            executor.finish()
            report = self._report(facts.graph, the_plan, state, exit_code=0, updates=0)
            if config.dry_run:
                self.log.info("Dry run: nothing executed, state unchanged.")
            self.log.info(report.summary_line())
            return report
        return self._execute(executor, facts.graph, the_plan, state, probe)

    # -- the steps of a state-aware run --------------------------------------------------------

    def _probe(self, executor: Executor, facts: ProjectFacts) -> Probe:
        """Freshness of the selection's sources, and which of its relations exist."""
        config = self.config
        sources, schemas = probe_targets(facts.graph, list(facts.selected))
        # Without reuse nothing is skipped, so whether a relation exists does not matter.
        wanted = schemas if config.reuse and not config.full_refresh else []
        probe = executor.probe(sources, wanted)
        for source_id, fresh in probe.freshness.items():
            if fresh.error:
                self.log.warning("Freshness of %s is unknown: %s", source_id, fresh.error)
        return probe

    def _plan(self, facts: ProjectFacts, state: StateEntries, probe: Probe) -> Plan:
        config = self.config
        options = PlanOptions(
            command=config.command,
            reuse=config.reuse,
            full_refresh=config.full_refresh,
            key_prefix=config.key_prefix,
        )
        # Variables dbt took from a .env arrive as digests: as good as values for a fingerprint.
        env = {**self._executor_env(), **self._dotenv}
        return logged_plan(
            self.log,
            facts.graph,
            facts.selected,
            state,
            Fingerprinter(facts.graph, cli_vars=config.vars, env=env),
            probe,
            options,
            full_table=wants_full_plan(self._executor_env()),
        )

    def _execute(
        self, executor: Executor, graph: Graph, the_plan: Plan, state: StateEntries, probe: Probe
    ) -> RunReport:
        """Run the plan's nodes and record what finished, even when the run is cut short."""
        config = self.config
        to_execute = the_plan.to_execute()
        self.log.info("Executing %d of %d planned nodes", len(to_execute), len(the_plan.decisions))
        self._progress = ExecutionProgress.start(
            to_execute, recorded_execution_times(the_plan.decisions, state)
        )
        try:
            result = executor.execute(to_execute, self._on_event)
        except ExecutorError as exc:
            if not exc.interrupted:
                # An unhandled crash: its results cannot be trusted, so nothing is recorded.
                raise
            recorded = self._record(graph, the_plan, state, probe)
            raise DbtRunError(
                f"dbt {config.command} was interrupted; {recorded} finished nodes recorded"
            ) from exc
        except BaseException:
            self._record(graph, the_plan, state, probe)
            raise
        self._results.update(result.results)
        if result.exit_code == 2:
            # An unhandled dbt error: its results cannot be trusted, so nothing is recorded.
            raise DbtRunError(f"dbt {config.command} crashed: {result.error}")
        updates = self._record(graph, the_plan, state, probe)
        report = self._report(graph, the_plan, state, exit_code=result.exit_code, updates=updates)
        report = replace(report, error=result.error, invocation_id=result.invocation_id)
        self.log.info(report.summary_line())
        return report

    # -- locks -----------------------------------------------------------------------------------

    def _open_run_lock(self) -> RunLock:
        """The run lock, opened but not yet taken; ``run`` closes it when it ends."""
        if self._run_lock is not None:
            return self._run_lock
        config = self.config
        label = self._label()
        lock = RunLock(
            run_lock_path(config),
            what=_where(config),
            timeout=config.lock_timeout,
            log=self.log,
            label=label,
            stop=self._stopped,
            lease=self._lease(label),
            on_lease_lost=self._on_lease_lost,
        )
        try:
            lock.open()
        except RunLockError as exc:
            raise DbtRunError(str(exc)) from exc
        self._run_lock = lock
        return lock

    def _label(self) -> str:
        """Who this run is, for whoever waits for it: the command and the Airflow task."""
        config = self.config
        return " ".join(
            [f"dbt {config.command}", *(f"{k}={v}" for k, v in config.run_info.items())]
        )

    def _lease(self, label: str) -> Lease | None:
        """The lease runs on other machines take turns on, if the state store keeps leases."""
        store = self.store
        if store is None:
            return None
        if not isinstance(store, LeaseStore):
            self.log.info(
                "Runs of %s on other machines are not kept apart: %s keeps no lease, so only "
                "runs on this machine take turns (use S3 or a shared-file-system state for "
                "runs on several workers)",
                _where(self.config),
                store.description,
            )
            return None
        holder = Holder.current(label)
        return Lease(
            store,
            lease_name(self.config),
            holder={"pid": holder.pid, "host": holder.host, "since": holder.since, "label": label},
            ttl=_lease_ttl(),
        )

    def _on_lease_lost(self, reason: str) -> None:
        """Another run may be building our models: stop dbt rather than race it."""
        self._lease_lost = reason
        self.stop()

    def _lock_run(self) -> float:
        """Wait for other runs of this project and target; held until ``run`` ends.

        Returns the seconds waited, which count against ``lock_timeout``.
        """
        lock = self._open_run_lock()
        with self._lock_errors():
            waited = lock.acquire()
        return waited

    def _lock_warehouse(
        self, executor: Executor, adapter_type: str | None, waited_before: float
    ) -> None:
        """Have the executor take the warehouse's run lock, if the warehouse has one.

        Held until the executor closes. A lock that cannot be tried at all (no connection,
        permission denied) fails the run: dbt would run unguarded against runs that only this
        lock keeps apart.
        """
        if not executor.has_warehouse_lock(adapter_type):
            return
        key = advisory_lock_key(lease_name(self.config))
        name = application_name(self._label(), os.getpid())
        with self._lock_errors():
            wait_for_warehouse_lock(
                lambda: executor.try_warehouse_lock(key, name),
                what=_where(self.config),
                timeout=self.config.lock_timeout,
                log=self.log,
                stop=self._stopped,
                waited_before=waited_before,
            )

    @contextlib.contextmanager
    def _lock_errors(self) -> Iterator[None]:
        """A lock not taken ends the run as a :class:`DbtRunError`, before anything ran."""
        try:
            yield
        except RunLockStopped as exc:
            raise DbtRunError(
                f"dbt {self.config.command} was stopped while waiting for another run of "
                f"{_where(self.config)} to finish; nothing ran"
            ) from exc
        except RunLockError as exc:
            raise DbtRunError(str(exc)) from exc

    # -- state and report ------------------------------------------------------------------------

    def _record(self, graph: Graph, the_plan: Plan, state: StateEntries, probe: Probe) -> int:
        results, run_info = self._results, self.config.run_info
        return record_outcomes(
            self.store, self.log, graph, the_plan, results, state, probe, run_info
        )

    def _report(
        self, graph: Graph, the_plan: Plan, state: StateEntries, *, exit_code: int, updates: int
    ) -> RunReport:
        return RunReport(
            command=self.config.command,
            target=self.config.target,
            exit_code=exit_code,
            dry_run=self.config.dry_run,
            graph=graph,
            plan=the_plan,
            results=dict(self._results),
            time_saved_seconds=seconds_saved(the_plan, state),
            state_updates=updates,
            run_info=self.config.run_info,
            unmatched_selection=tuple(self._unmatched),
        )

    # -- the executor --------------------------------------------------------------------------

    def _start_executor(self, run_dir: Path, target_path: Path, *, state_aware: bool) -> Executor:
        config = self.config
        if self._stopped.is_set():
            raise DbtRunError(f"dbt {config.command} was stopped before it started; nothing ran")
        executor = self._make_executor(
            ExecutorContext(
                config=config,
                env=self._executor_env(),
                log=self.log,
                run_dir=run_dir,
                target_path=target_path,
                state_aware=state_aware,
                lock_fd=self._run_lock.open() if self._run_lock is not None else None,
            )
        )
        self._executor = executor
        executor.start()
        return executor

    def _close(self, run_dir: Path) -> None:
        executor_gone = False
        try:
            if self._executor is not None:
                self._executor.close()
            executor_gone = True
        finally:
            # Only now: DuckDB's file lock is the worker's until that process has exited.
            # (Should close() fail, the worker's copy keeps the run lock until it is gone,
            # and the lease is left to expire rather than given back.)
            if self._run_lock is not None:
                self._run_lock.release(give_back_lease=executor_gone)
                self._run_lock = None
            shutil.rmtree(run_dir, ignore_errors=True)

    def _on_event(self, event: ExecutionEvent) -> None:
        match event:
            case NodeStarted():
                if self._progress is not None:
                    self._progress.node_started(time.monotonic())
            case NodeFinished(result=result):
                self._node_finished(result)
            case DbtLogLine(message=message):
                self.log.warning("dbt | %s", message)
            case SelectionUnmatched(criterion=criterion):
                self._unmatched_criterion(criterion)
            case DotenvLoaded(path=path, variables=variables):
                self._dotenv = dict(variables)
                self.log.info(
                    "dbt loaded %s from %s (dbt 1.12+ reads the nearest .env at or above the "
                    "project directory; variables already set win). They count in fingerprints "
                    "like any env var. To stop it, set PYTHON_DOTENV_DISABLED=1 for the task.",
                    ", ".join(sorted(self._dotenv)),
                    path or "a .env file",
                )

    def _node_finished(self, result: NodeResult) -> None:
        self._results[result.unique_id] = result
        progress = None
        if self._progress is not None:
            progress = self._progress.node_finished(
                result.unique_id, result.execution_time, time.monotonic()
            )
        self.log.info(finished_node_line(result, progress))
        if result.status not in KNOWN_STATUSES:
            self.log.warning(
                "dbt reported status %r for %s, which this provider does not know: it "
                "counts as failed (not recorded, so the node is built again next run)",
                result.status,
                result.unique_id,
            )

    def _unmatched_criterion(self, criterion: str) -> None:
        if criterion not in self._unmatched:
            self._unmatched.append(criterion)
            self.log.warning(unmatched_message(criterion))

    def _executor_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # dbt would otherwise write a .user.yml (an anonymous id) next to the profiles.
        env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        # dbt 1.12's hints would write ~/.dbt/hint_ts.json on workers, for a console no one reads.
        env.setdefault("DBT_ENGINE_HINTS_ENABLED", "false")
        env.update(self.config.env)
        env["PYTHONUNBUFFERED"] = "1"
        return env


def _lease_ttl() -> float:
    try:
        ttl = float(os.environ.get(LEASE_TTL_ENV) or DEFAULT_LEASE_TTL)
    except ValueError:
        return DEFAULT_LEASE_TTL
    return ttl if ttl > 0 else DEFAULT_LEASE_TTL


def _where(config: DbtRunConfig) -> str:
    where = f"dbt project {config.project_dir}"
    if config.target:
        where += f" (target {config.target!r})"
    return where


def _explain(exc: ExecutorError, config: DbtRunConfig) -> str:
    where = _where(config)
    stages = {
        "parse": f"dbt could not parse {where}",
        "select": f"dbt rejected the selection for {where}",
        "import": "dbt is not available to the worker",
        "start": "the dbt worker could not start",
        # Checked before dbt writes: another run may hold the lock now, so nothing ran.
        "warehouse_lock": f"dbt did not run: the PostgreSQL advisory lock of {where} is gone",
    }
    return f"{stages.get(exc.stage, f'dbt failed during {exc.stage} for {where}')}: {exc.message}"
