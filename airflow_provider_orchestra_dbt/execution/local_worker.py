"""The local executor: dbt in a worker subprocess on this machine (``worker/dbt_worker.py``).

It speaks the worker protocol (``docs/worker-protocol.md``) and turns its messages into the
executor seam's typed values, each parsed here and nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import Probe
from airflow_provider_orchestra_dbt.execution.executor import (
    DbtLogLine,
    DotenvLoaded,
    EventSink,
    ExecutionEvent,
    ExecutionResult,
    ExecutorContext,
    ExecutorError,
    ExecutorUnavailable,
    NodeFinished,
    NodeStarted,
    ProjectFacts,
    SelectionUnmatched,
)
from airflow_provider_orchestra_dbt.execution.locations import cache_dir
from airflow_provider_orchestra_dbt.execution.run_lock import RunLockStopped
from airflow_provider_orchestra_dbt.execution.warehouse_lock import (
    LOCKING_ADAPTERS,
    LockAttempt,
    WarehouseLockUnavailable,
)
from airflow_provider_orchestra_dbt.worker.client import WorkerError, WorkerProcess
from airflow_provider_orchestra_dbt.worker.compat import (
    IncompatibleWorker,
    WorkerHello,
    check_worker,
)
from airflow_provider_orchestra_dbt.worker.dbt_worker import PROTOCOL_VERSION

# Exit codes of a worker that was stopped (SIGINT) rather than one that crashed; None: no code
# yet because it is still shutting down.
_INTERRUPTED = frozenset({None, 130, -2})


class LocalWorkerExecutor:
    """Runs dbt in a subprocess of this one, which dies with it (see ``WorkerProcess``)."""

    def __init__(self, context: ExecutorContext) -> None:
        self.context = context
        self._stopping = False
        self._worker = WorkerProcess(
            python=context.config.python,
            env=context.env,
            on_output=self._relay_output,
            lock_fd=context.lock_fd,
        )

    def _relay_output(self, line: str) -> None:
        self.context.log.info("dbt | %s", line)

    def start(self) -> None:
        worker = self._worker
        try:
            worker.start()
            self._greet()
        except WorkerError as exc:
            raise ExecutorUnavailable(exc.message) from exc
        config, context = self.context.config, self.context
        with self._translated():
            worker.send(
                {
                    "type": "start",
                    "protocol": PROTOCOL_VERSION,
                    "state_aware": context.state_aware,
                    "command": config.command,
                    "project_dir": str(config.project_dir.resolve()),
                    "profiles_dir": (
                        str(config.profiles_dir.resolve()) if config.profiles_dir else None
                    ),
                    "target": config.target,
                    "vars": dict(config.vars),
                    "select": list(config.select),
                    "exclude": list(config.exclude),
                    "selector": config.selector,
                    "full_refresh": config.full_refresh,
                    "threads": config.threads,
                    "dbt_args": list(config.dbt_args),
                    "run_dir": str(context.run_dir),
                    "target_path": str(context.target_path.resolve()),
                    "write_json": config.target_path is not None,
                    "cache_dir": str(cache_dir(config)),
                }
            )

    def _greet(self) -> None:
        """Turn away a worker whose dbt or protocol we cannot drive, before any dbt runs."""
        worker, log = self._worker, self.context.log
        hello = WorkerHello.from_message(worker.receive("hello"))
        try:
            warning = check_worker(hello)
        except IncompatibleWorker as exc:
            worker.stop()
            worker.close()
            raise ExecutorUnavailable(str(exc)) from exc
        if warning:
            log.warning(warning)
        log.info("%s %s, worker python %s", hello.dbt_distribution, hello.dbt_version, hello.python)

    def project(self, on_event: EventSink) -> ProjectFacts:
        with self._translated():
            message = self._worker.receive("graph", _events_to(on_event))
        adapter_type = message.get("adapter_type")
        return ProjectFacts(
            graph=Graph.from_message(message),
            selected=tuple(message["selected"]),
            adapter_type=str(adapter_type) if adapter_type else None,
        )

    def has_warehouse_lock(self, adapter_type: str | None) -> bool:
        # DuckDB locks its file itself; other warehouses have no session-level lock.
        return adapter_type in LOCKING_ADAPTERS

    def try_warehouse_lock(self, key: int, application_name: str) -> LockAttempt:
        request = {"type": "warehouse_lock", "key": key, "application_name": application_name}
        try:
            self._worker.send(request)
            return LockAttempt.from_message(self._worker.receive("warehouse_lock_result"))
        except WorkerError as exc:
            if self._stopping:  # stop() interrupted the worker mid-try
                raise RunLockStopped(str(exc)) from exc
            if exc.stage == "warehouse_lock":
                target = self.context.config.target or "the profile's default"
                raise WarehouseLockUnavailable(
                    f"on a connection made as dbt makes it, from target {target!r}: {exc.message}"
                ) from exc
            raise _executor_error(exc) from exc

    def probe(self, sources: Sequence[str], schemas: Sequence[Sequence[str]]) -> Probe:
        request = {"type": "probe", "sources": list(sources), "schemas": list(map(list, schemas))}
        with self._translated():
            self._worker.send(request)
            return Probe.from_message(self._worker.receive("probe_result"))

    def execute(self, nodes: Sequence[str], on_event: EventSink) -> ExecutionResult:
        sink = _events_to(on_event)
        try:
            self._worker.send({"type": "execute", "nodes": list(nodes)})
            message = self._worker.receive("execute_result", sink)
        except BaseException as exc:
            # Stopped or crashed mid-build: hand over what finished, then let the failure through.
            self._worker.stop()
            self._worker.drain_events(sink)
            if isinstance(exc, WorkerError):
                raise _executor_error(exc) from exc
            raise
        return _execution_result(message)

    def run_as_given(self, on_event: EventSink) -> ExecutionResult:
        with self._translated():
            return _execution_result(self._worker.receive("execute_result", _events_to(on_event)))

    def finish(self) -> None:
        with self._translated():
            self._worker.send({"type": "finish"})
        self._worker.close()

    def stop(self) -> None:
        self._stopping = True
        self.context.log.warning("Stopping the dbt worker (pid %s)", self._worker.pid)
        self._worker.stop()

    def close(self) -> None:
        self._worker.close()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except WorkerError as exc:
            raise _executor_error(exc) from exc


def _executor_error(exc: WorkerError) -> ExecutorError:
    return ExecutorError(exc.stage, exc.message, interrupted=exc.exit_code in _INTERRUPTED)


def _execution_result(message: Mapping[str, Any]) -> ExecutionResult:
    results = (NodeResult.from_message(item) for item in message["results"])
    return ExecutionResult(
        exit_code=int(message["exit_code"]),
        results={result.unique_id: result for result in results},
        error=message.get("error"),
        invocation_id=message.get("invocation_id"),
    )


def _events_to(on_event: EventSink) -> Callable[[Mapping[str, Any]], None]:
    """The worker's event messages, as the seam's typed events."""

    def sink(message: Mapping[str, Any]) -> None:
        event = _event(message)
        if event is not None:
            on_event(event)

    return sink


def _event(message: Mapping[str, Any]) -> ExecutionEvent | None:
    kind = message.get("type")
    if kind == "node_start":
        return NodeStarted(str(message.get("unique_id")))
    if kind == "node_finished":
        return NodeFinished(NodeResult.from_message(message))
    if kind == "dbt_log":
        return DbtLogLine(str(message.get("message")))
    if kind == "selection_unmatched":
        return SelectionUnmatched(str(message.get("criterion")))
    if kind == "dotenv_loaded":
        return DotenvLoaded(message.get("path"), dict(message.get("variables") or {}))
    return None
