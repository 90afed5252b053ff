"""One state-aware dbt run: load state, ask the worker for facts, plan, execute, record.

Shared by the CLI and the Airflow operator; it knows nothing about Airflow. ``stop()`` may be
called from another thread or a signal handler (the operator's ``on_kill``): it interrupts dbt,
and whatever finished before the interruption is still recorded.

Runs of the same project and target on one machine take turns (``execution/run_lock.py``): a
run holds the lock from before it reads the state until its worker has exited, so the next
run plans on what this one built and never meets it in the warehouse. The worker shares the
lock's descriptor, so even a run killed outright keeps it until its worker has died too.
Runs on different machines take turns on a lease in the state store for the same span, when
the store can keep one (S3, the local file store; see ``state/lease.py``). On PostgreSQL the
worker also takes an advisory lock in the warehouse (``execution/warehouse_lock.py``), which
relates runs that share neither machine nor state location: right after the flock and the
lease, before the state is read, and held until the worker exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprinter
from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import (
    KNOWN_STATUSES,
    NodeResult,
    state_updates,
)
from airflow_provider_orchestra_dbt.decisions.planner import (
    Plan,
    PlanOptions,
    Probe,
    plan,
    probe_targets,
)
from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.run_lock import (
    LOCK_FILE_NAME,
    Holder,
    RunLock,
    RunLockError,
    RunLockStopped,
)
from airflow_provider_orchestra_dbt.execution.warehouse_lock import (
    LOCKING_ADAPTERS,
    LockAttempt,
    WarehouseLockUnavailable,
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
from airflow_provider_orchestra_dbt.state.lease import DEFAULT_LEASE_TTL, Lease, lease_file_name
from airflow_provider_orchestra_dbt.state.store import LeaseStore
from airflow_provider_orchestra_dbt.worker.client import WorkerError, WorkerProcess
from airflow_provider_orchestra_dbt.worker.compat import (
    IncompatibleWorker,
    WorkerHello,
    check_worker,
)
from airflow_provider_orchestra_dbt.worker.dbt_worker import PROTOCOL_VERSION

CACHE_DIR_ENV = "ORCHESTRA_DBT_CACHE_DIR"
LEASE_TTL_ENV = "ORCHESTRA_DBT_LEASE_TTL"
# Exit codes of a worker that was stopped (SIGINT) rather than one that crashed; None: no code
# yet because it is still shutting down.
_INTERRUPTED = frozenset({None, 130, -2})


class RunLogger(Protocol):
    """What a run logs through: a ``logging.Logger`` or Airflow's task logger."""

    def info(self, msg: str, /, *args: Any) -> Any: ...

    def warning(self, msg: str, /, *args: Any) -> Any: ...


class DbtRunError(RuntimeError):
    """dbt could not run at all (bad project, profile, selection, crash): nothing was recorded."""


class DbtSession:
    def __init__(
        self,
        config: DbtRunConfig,
        store: StateStore | None,
        logger: RunLogger,
    ) -> None:
        self.config = config
        self.store = store
        self.log = logger
        self._worker: WorkerProcess | None = None
        self._results: dict[str, NodeResult] = {}
        self._unmatched: list[str] = []
        # Names dbt set from a .env file, with digests of their values.
        self._dotenv: dict[str, str] = {}
        self._stopped = threading.Event()
        self._run_lock: RunLock | None = None
        self._lease_lost: str | None = None
        self._worker_capabilities: frozenset[str] = frozenset()
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
        except WorkerError as exc:
            raise DbtRunError(_explain(exc, config)) from exc
        except DbtRunError as exc:
            if self._lease_lost is None:
                raise
            raise DbtRunError(f"{exc}: stopped because this run lost its lease") from exc
        finally:
            worker_gone = False
            try:
                if self._worker is not None:
                    self._worker.close()
                worker_gone = True
            finally:
                # Only now: DuckDB's file lock is the worker's until that process has exited.
                # (Should close() fail, the worker's copy keeps the run lock until it is gone,
                # and the lease is left to expire rather than given back.)
                if self._run_lock is not None:
                    self._run_lock.release(give_back_lease=worker_gone)
                    self._run_lock = None
                shutil.rmtree(run_dir, ignore_errors=True)

    def stop(self) -> None:
        """Interrupt dbt (SIGINT to its process group, then escalation)."""
        self._stopped.set()
        if self._worker is not None:
            self.log.warning("Stopping the dbt worker (pid %s)", self._worker.pid)
            self._worker.stop()

    # -- the two kinds of run ------------------------------------------------------------------

    def _passthrough(self, run_dir: Path, target_path: Path) -> RunReport:
        self._lock_run()  # dbt touches the warehouse as soon as it starts
        worker = self._start_worker(run_dir, target_path, state_aware=False)
        result = worker.receive("execute_result", self._on_event)
        return RunReport(
            command=self.config.command,
            target=self.config.target,
            exit_code=int(result["exit_code"]),
            error=result.get("error"),
            results={r["unique_id"]: NodeResult.from_message(r) for r in result["results"]},
            artifacts_dir=str(self.config.target_path) if self.config.target_path else None,
            run_info=self.config.run_info,
            unmatched_selection=tuple(self._unmatched),
        )

    def _stateful(self, run_dir: Path, target_path: Path) -> RunReport:
        config = self.config
        # Opened before the worker starts, so that it shares the lock taken below.
        self._open_run_lock()
        # Parsing and selection touch neither the warehouse nor the state (dbt-duckdb does not
        # open its file to parse), so the worker does them while this run may still wait.
        worker = self._start_worker(run_dir, target_path, state_aware=True)
        graph_message = worker.receive("graph", self._on_event)
        if config.selector and not graph_message["selected"]:
            # dbt warns per --select/--exclude criterion only, never for a YAML selector.
            self._unmatched_criterion(f"selector:{config.selector}")
        # The state is read under the locks, so a run that waited plans on the previous run's
        # results and reuses what it built. The warehouse's lock comes last: the adapter is
        # known only once the worker has parsed, and it is the one lock a run with another
        # state location or on another machine may hold.
        waited = self._lock_run()
        self._lock_warehouse(worker, graph_message.get("adapter_type"), waited)
        state = self._load_state()
        graph = Graph.from_message(graph_message)
        selected = graph_message["selected"]
        sources, schemas = probe_targets(graph, selected)
        worker.send(
            {
                "type": "probe",
                "sources": sources,
                "schemas": schemas if config.reuse and not config.full_refresh else [],
            }
        )
        probe = Probe.from_message(worker.receive("probe_result"))
        for source_id, fresh in probe.freshness.items():
            if fresh.error:
                self.log.warning("Freshness of %s is unknown: %s", source_id, fresh.error)

        options = PlanOptions(
            command=config.command,
            reuse=config.reuse,
            full_refresh=config.full_refresh,
            key_prefix=config.key_prefix,
        )
        # Variables dbt took from a .env arrive as digests: as good as values for a fingerprint.
        env = {**self._worker_env(), **self._dotenv}
        fingerprint = Fingerprinter(graph, cli_vars=config.vars, env=env)
        the_plan = plan(graph, selected, state, fingerprint, probe, options)
        self.log.info(
            "Plan (%d nodes, %d to build):\n%s",
            len(the_plan.decisions),
            len(the_plan.to_execute()),
            _plan_report(graph, the_plan).plan_table(full=wants_full_plan(self._worker_env())),
        )

        if self._stopped.is_set():
            raise DbtRunError(f"dbt {config.command} was stopped while planning; nothing ran")
        to_execute = the_plan.to_execute()
        if config.dry_run or not to_execute:
            worker.send({"type": "finish"})
            worker.close()
            report = self._report(graph, the_plan, state, exit_code=0, updates=0)
            if config.dry_run:
                self.log.info("Dry run: nothing executed, state unchanged.")
            self.log.info(report.summary_line())
            return report

        self.log.info("Executing %d of %d planned nodes", len(to_execute), len(the_plan.decisions))
        self._progress = ExecutionProgress.start(
            to_execute, recorded_execution_times(the_plan.decisions, state)
        )
        try:
            worker.send({"type": "execute", "nodes": to_execute})
            result = worker.receive("execute_result", self._on_event)
        except BaseException as exc:
            # Stopped or crashed mid-build: keep what finished, then let the failure through.
            worker.stop()
            worker.drain_events(self._on_event)
            if isinstance(exc, WorkerError) and exc.exit_code not in _INTERRUPTED:
                # An unhandled crash: its results cannot be trusted, so nothing is recorded.
                raise DbtRunError(_explain(exc, config)) from exc
            recorded = self._record(graph, the_plan, state, probe)
            if isinstance(exc, WorkerError):
                raise DbtRunError(
                    f"dbt {config.command} was interrupted; {recorded} finished nodes recorded"
                ) from exc
            raise
        for item in result["results"]:
            self._results[item["unique_id"]] = NodeResult.from_message(item)
        exit_code = int(result["exit_code"])
        if exit_code == 2:
            # An unhandled dbt error: its results cannot be trusted, so nothing is recorded.
            raise DbtRunError(f"dbt {config.command} crashed: {result.get('error')}")
        updates = self._record(graph, the_plan, state, probe)
        report = self._report(graph, the_plan, state, exit_code=exit_code, updates=updates)
        report = replace(
            report, error=result.get("error"), invocation_id=result.get("invocation_id")
        )
        self.log.info(report.summary_line())
        return report

    # -- pieces --------------------------------------------------------------------------------

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
            raise DbtRunError(str(exc)) from None
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
        self, worker: WorkerProcess, adapter_type: object, waited_before: float
    ) -> None:
        """Have the worker take the warehouse's run lock, if the adapter has one.

        Held by the worker's own connection until it exits. A lock that cannot be tried at
        all (no connection, permission denied) fails the run: dbt would run unguarded against
        runs that only this lock keeps apart.
        """
        config = self.config
        if adapter_type not in LOCKING_ADAPTERS:
            return  # DuckDB locks its file itself; other warehouses have no session lock
        if "warehouse_lock" not in self._worker_capabilities:
            self.log.warning(
                "Runs of %s with other state locations are not kept apart: this dbt worker "
                "cannot take the PostgreSQL advisory lock",
                _where(config),
            )
            return
        request = {
            "type": "warehouse_lock",
            "key": advisory_lock_key(lease_name(config)),
            "application_name": application_name(self._label(), os.getpid()),
        }

        def attempt() -> LockAttempt:
            try:
                worker.send(request)
                return LockAttempt.from_message(worker.receive("warehouse_lock_result"))
            except WorkerError as exc:
                if self._stopped.is_set():  # stop() interrupted the worker mid-try
                    raise RunLockStopped(str(exc)) from None
                if exc.stage == "warehouse_lock":
                    target = config.target or "the profile's default"
                    raise WarehouseLockUnavailable(
                        f"on a connection made as dbt makes it, from target {target!r}: "
                        f"{exc.message}"
                    ) from None
                raise

        with self._lock_errors():
            wait_for_warehouse_lock(
                attempt,
                what=_where(config),
                timeout=config.lock_timeout,
                log=self.log,
                stop=self._stopped,
                waited_before=waited_before,
            )

    @contextlib.contextmanager
    def _lock_errors(self) -> Iterator[None]:
        """A lock not taken ends the run as a :class:`DbtRunError`, before anything ran."""
        try:
            yield
        except RunLockStopped:
            raise DbtRunError(
                f"dbt {self.config.command} was stopped while waiting for another run of "
                f"{_where(self.config)} to finish; nothing ran"
            ) from None
        except RunLockError as exc:
            raise DbtRunError(str(exc)) from None

    def _load_state(self) -> StateEntries:
        if self.store is None:
            return {}
        document = self.store.load()
        self.log.info(
            "Loaded %d state entries from %s", len(document.entries), self.store.description
        )
        return document.entries

    def _record(self, graph: Graph, the_plan: Plan, state: StateEntries, probe: Probe) -> int:
        outcome = state_updates(
            graph, the_plan, self._results, state, probe, run_info=self.config.run_info
        )
        if self.store is None or not outcome.updates:
            return 0
        self.store.save(outcome.updates)
        self.log.info("Saved %d state entries to %s", len(outcome.updates), self.store.description)
        return len(outcome.updates)

    def _report(
        self, graph: Graph, the_plan: Plan, state: StateEntries, *, exit_code: int, updates: int
    ) -> RunReport:
        saved = 0.0
        for decision in the_plan.reused():
            entry = state.get(decision.key or "") if decision.key else None
            if entry and isinstance(entry.get("execution_time"), (int, float)):
                saved += float(entry["execution_time"])
        return RunReport(
            command=self.config.command,
            target=self.config.target,
            exit_code=exit_code,
            dry_run=self.config.dry_run,
            graph=graph,
            plan=the_plan,
            results=dict(self._results),
            time_saved_seconds=saved,
            state_updates=updates,
            artifacts_dir=str(self.config.target_path) if self.config.target_path else None,
            run_info=self.config.run_info,
            unmatched_selection=tuple(self._unmatched),
        )

    def _on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("type") == "node_start" and self._progress is not None:
            self._progress.node_started(time.monotonic())
        elif event.get("type") == "node_finished":
            result = NodeResult.from_message(event)
            self._results[result.unique_id] = result
            progress = None
            if self._progress is not None:
                progress = self._progress.node_finished(
                    result.unique_id, result.execution_time, time.monotonic()
                )
            self.log.info(finished_node_line(event, progress))
            if result.status not in KNOWN_STATUSES:
                self.log.warning(
                    "dbt reported status %r for %s, which this provider does not know: it "
                    "counts as failed (not recorded, so the node is built again next run)",
                    result.status,
                    result.unique_id,
                )
        elif event.get("type") == "dbt_log":
            self.log.warning("dbt | %s", event.get("message"))
        elif event.get("type") == "selection_unmatched":
            self._unmatched_criterion(str(event.get("criterion")))
        elif event.get("type") == "dotenv_loaded":
            self._dotenv = dict(event.get("variables") or {})
            self.log.info(
                "dbt loaded %s from %s (dbt 1.12+ reads the nearest .env at or above the "
                "project directory; variables already set win). They count in fingerprints "
                "like any env var. To stop it, set PYTHON_DOTENV_DISABLED=1 for the task.",
                ", ".join(sorted(self._dotenv)),
                event.get("path") or "a .env file",
            )

    def _unmatched_criterion(self, criterion: str) -> None:
        if criterion not in self._unmatched:
            self._unmatched.append(criterion)
            self.log.warning(unmatched_message(criterion))

    def _start_worker(
        self, run_dir: Path, target_path: Path, *, state_aware: bool
    ) -> WorkerProcess:
        config = self.config
        if self._stopped.is_set():
            raise DbtRunError(f"dbt {config.command} was stopped before it started; nothing ran")
        worker = WorkerProcess(
            python=config.python,
            env=self._worker_env(),
            on_output=lambda line: self.log.info("dbt | %s", line),
            lock_fd=self._run_lock.open() if self._run_lock is not None else None,
        )
        self._worker = worker
        try:
            worker.start()
            self._greet(worker)
        except WorkerError as exc:
            raise DbtRunError(exc.message) from None
        worker.send(
            {
                "type": "start",
                "protocol": PROTOCOL_VERSION,
                "state_aware": state_aware,
                "command": config.command,
                "project_dir": str(config.project_dir.resolve()),
                "profiles_dir": str(config.profiles_dir.resolve()) if config.profiles_dir else None,
                "target": config.target,
                "vars": dict(config.vars),
                "select": list(config.select),
                "exclude": list(config.exclude),
                "selector": config.selector,
                "full_refresh": config.full_refresh,
                "threads": config.threads,
                "dbt_args": list(config.dbt_args),
                "run_dir": str(run_dir),
                "target_path": str(target_path.resolve()),
                "write_json": config.target_path is not None,
                "cache_dir": str(cache_dir(config)),
            }
        )
        return worker

    def _greet(self, worker: WorkerProcess) -> None:
        """Turn away a worker whose dbt or protocol we cannot drive, before any dbt runs."""
        hello = WorkerHello.from_message(worker.receive("hello"))
        try:
            warning = check_worker(hello)
        except IncompatibleWorker as exc:
            worker.stop()
            worker.close()
            raise DbtRunError(str(exc)) from None
        if warning:
            self.log.warning(warning)
        self._worker_capabilities = hello.capabilities
        self.log.info(
            "%s %s, worker python %s", hello.dbt_distribution, hello.dbt_version, hello.python
        )

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # dbt would otherwise write a .user.yml (an anonymous id) next to the profiles.
        env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        # dbt 1.12's hints would write ~/.dbt/hint_ts.json on workers, for a console no one reads.
        env.setdefault("DBT_ENGINE_HINTS_ENABLED", "false")
        env.update(self.config.env)
        env["PYTHONUNBUFFERED"] = "1"
        return env


def cache_dir(config: DbtRunConfig) -> Path:
    """Our files for one project+target on this machine: dbt's partial-parse cache, the lock."""
    root = Path(
        os.environ.get(CACHE_DIR_ENV)
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "airflow-provider-orchestra-dbt"
    )
    profiles_dir = config.profiles_dir.resolve() if config.profiles_dir else ""
    identity = "|".join([str(config.project_dir.resolve()), str(profiles_dir), str(config.target)])
    return root / hashlib.sha256(identity.encode()).hexdigest()[:16]


def lease_name(config: DbtRunConfig) -> str:
    """The lease's file name: the same on every machine for one project, profile and target.

    From ``dbt_project.yml``'s ``name`` and ``profile`` rather than the project's path, which
    may differ between workers; the target as given (``default``: the profile's default).
    """
    name = profile = None
    try:
        import yaml

        project = yaml.safe_load((config.project_dir / "dbt_project.yml").read_text()) or {}
        if isinstance(project, Mapping):
            name, profile = project.get("name"), project.get("profile")
    except Exception:  # dbt reports a broken project itself, with a better message
        pass
    return lease_file_name(
        config.key_prefix or None,
        str(name) if name else config.project_dir.resolve().name,
        str(profile) if profile else None,
        config.target or "default",
    )


def _lease_ttl() -> float:
    try:
        ttl = float(os.environ.get(LEASE_TTL_ENV) or DEFAULT_LEASE_TTL)
    except ValueError:
        return DEFAULT_LEASE_TTL
    return ttl if ttl > 0 else DEFAULT_LEASE_TTL


def run_lock_path(config: DbtRunConfig) -> Path:
    """The file runs of this project and target on this machine take turns on."""
    return cache_dir(config) / LOCK_FILE_NAME


def _plan_report(graph: Graph, the_plan: Plan) -> RunReport:
    return RunReport(
        command=the_plan.options.command, target=None, exit_code=0, graph=graph, plan=the_plan
    )


def _where(config: DbtRunConfig) -> str:
    where = f"dbt project {config.project_dir}"
    if config.target:
        where += f" (target {config.target!r})"
    return where


def _explain(exc: WorkerError, config: DbtRunConfig) -> str:
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
