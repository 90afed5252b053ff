"""The executor seam: what a run needs from whatever runs dbt for it.

The session (``execution/session.py``) coordinates a run: locks, state, the plan, and what
gets recorded. Everything that touches dbt goes through an :class:`Executor`: reading the
project, measuring its sources and relations, and running exactly the planned nodes while
streaming what happens. The local dbt worker (``execution/local_worker.py``) is the first
executor; a dbt Cloud job is meant to be the next. See ``docs/design.md`` §2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import Probe
from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.warehouse_lock import LockAttempt


class ExecutorError(RuntimeError):
    """dbt failed at ``stage`` (parse, select, probe, execute, ...); ``message`` says why.

    ``interrupted``: it was stopped (a signal, a kill) rather than crashed, so the results it
    streamed before can be trusted.
    """

    def __init__(self, stage: str, message: str, *, interrupted: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.interrupted = interrupted


class ExecutorUnavailable(ExecutorError):
    """The executor cannot run dbt at all (cannot start, incompatible); the message is whole."""

    def __init__(self, message: str) -> None:
        super().__init__("start", message)


@dataclass(frozen=True)
class ProjectFacts:
    """The parsed project as the executor's dbt sees it: the graph and the selected nodes."""

    graph: Graph
    selected: tuple[str, ...]
    adapter_type: str | None


@dataclass(frozen=True)
class NodeStarted:
    unique_id: str


@dataclass(frozen=True)
class NodeFinished:
    result: NodeResult


@dataclass(frozen=True)
class DbtLogLine:
    """A warning or error dbt logged that no node result carries."""

    message: str


@dataclass(frozen=True)
class SelectionUnmatched:
    criterion: str


@dataclass(frozen=True)
class DotenvLoaded:
    """dbt took variables from a ``.env`` file; values arrive as digests only."""

    path: str | None
    variables: Mapping[str, str]


ExecutionEvent = NodeStarted | NodeFinished | DbtLogLine | SelectionUnmatched | DotenvLoaded
EventSink = Callable[[ExecutionEvent], None]


@dataclass(frozen=True)
class ExecutionResult:
    """How a dbt invocation ended, with dbt's own result for every node it ran."""

    exit_code: int
    results: Mapping[str, NodeResult] = field(default_factory=dict)
    error: str | None = None
    invocation_id: str | None = None


class RunLogger(Protocol):
    """What a run logs through: a ``logging.Logger`` or Airflow's task logger."""

    def info(self, msg: str, /, *args: object) -> object: ...

    def warning(self, msg: str, /, *args: object) -> object: ...


@dataclass(frozen=True)
class ExecutorContext:
    """What the session hands an executor it creates for one run."""

    config: DbtRunConfig
    env: Mapping[str, str]
    log: RunLogger
    run_dir: Path
    target_path: Path
    state_aware: bool
    # The run lock's descriptor: an executor that starts processes keeps it open in them.
    lock_fd: int | None = None


class Executor(Protocol):
    """Runs dbt for one run, one call after another, from one thread (``stop`` excepted)."""

    def start(self) -> None:
        """Get dbt ready; raises :class:`ExecutorUnavailable` when it cannot run at all."""

    def project(self, on_event: EventSink) -> ProjectFacts:
        """Parse the project and resolve the selection (touches no warehouse, no state)."""

    def has_warehouse_lock(self, adapter_type: str | None) -> bool:
        """Whether :meth:`try_warehouse_lock` can relate runs in this warehouse."""

    def try_warehouse_lock(self, key: int, application_name: str) -> LockAttempt:
        """One try at the warehouse's run lock, held until the executor closes."""

    def probe(self, sources: Sequence[str], schemas: Sequence[Sequence[str]]) -> Probe:
        """Source freshness, and which relations exist in these ``[database, schema]``s."""

    def execute(self, nodes: Sequence[str], on_event: EventSink) -> ExecutionResult:
        """Run exactly these nodes of the plan, streaming events as they finish.

        Stopped or failed midway, it streams what finished before raising.
        """

    def run_as_given(self, on_event: EventSink) -> ExecutionResult:
        """Run the configured command unchanged (for commands that are not state-aware)."""

    def finish(self) -> None:
        """Nothing is to run: let dbt go."""

    def stop(self) -> None:
        """Interrupt dbt; safe from another thread or a signal handler, and more than once."""

    def close(self) -> None:
        """Wait until dbt and everything it started are gone."""


ExecutorFactory = Callable[[ExecutorContext], Executor]
