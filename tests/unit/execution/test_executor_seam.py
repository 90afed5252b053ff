"""The session drives any executor: a scripted one plans, executes and records in milliseconds.

A dbt Cloud executor will sit where this scripted one does; the local dbt worker behind the
same seam is tested with real dbt in the integration tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from support.log_lines import Lines
from support.synthetic_graph import M1, M2, SEED, STG, T_M1, T_SPAN, T_SRC, base_graph, fresh_probe

from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import Probe
from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.executor import (
    DbtLogLine,
    EventSink,
    ExecutionResult,
    ExecutorContext,
    ExecutorError,
    NodeFinished,
    NodeStarted,
    ProjectFacts,
)
from airflow_provider_orchestra_dbt.execution.session import DbtRunError, DbtSession
from airflow_provider_orchestra_dbt.execution.warehouse_lock import LockAttempt
from airflow_provider_orchestra_dbt.state import LocalFileStateStore

STATEFUL = {STG, M1, M2, SEED}
TESTS = {T_M1, T_SRC, T_SPAN}


class ScriptedExecutor:
    """Plays dbt: every node succeeds unless ``failing`` says otherwise."""

    def __init__(
        self,
        context: ExecutorContext,
        *,
        failing: dict[str, str] | None = None,
        cut_after: int | None = None,
        interrupted: bool = True,
    ) -> None:
        self.context = context
        self.failing = failing or {}
        self.cut_after = cut_after
        self.interrupted = interrupted
        self.calls: list[str] = []
        self.executed: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def project(self, on_event: EventSink) -> ProjectFacts:
        self.calls.append("project")
        on_event(DbtLogLine("parsed"))
        graph = base_graph()
        return ProjectFacts(graph, tuple(graph.nodes), "duckdb")

    def has_warehouse_lock(self, adapter_type: str | None) -> bool:
        return False

    def try_warehouse_lock(self, key: int, application_name: str) -> LockAttempt:
        raise AssertionError("no warehouse lock on DuckDB")

    def probe(self, sources: Sequence[str], schemas: Sequence[Sequence[str]]) -> Probe:
        self.calls.append("probe")
        return fresh_probe()

    def execute(self, nodes: Sequence[str], on_event: EventSink) -> ExecutionResult:
        self.calls.append("execute")
        results: dict[str, NodeResult] = {}
        for uid in nodes:
            if self.cut_after is not None and len(results) == self.cut_after:
                raise ExecutorError("execute", "stopped", interrupted=self.interrupted)
            on_event(NodeStarted(uid))
            ok = "pass" if uid.startswith("test.") else "success"
            result = NodeResult(uid, self.failing.get(uid, ok), 0.1, "2026-06-01T12:00:00+00:00")
            results[uid] = result
            self.executed.append(uid)
            on_event(NodeFinished(result))
        return ExecutionResult(exit_code=1 if self.failing else 0, results=results)

    def run_as_given(self, on_event: EventSink) -> ExecutionResult:
        raise AssertionError("build is state-aware")

    def finish(self) -> None:
        self.calls.append("finish")

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def config(tmp_path: Path) -> DbtRunConfig:
    project = tmp_path / "project"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: p\nprofile: p\n")
    (project / "profiles.yml").write_text("p: {}\n")
    return DbtRunConfig.create(project_dir=project, profiles_dir=project)


def run(
    config: DbtRunConfig, store: LocalFileStateStore, **script: object
) -> tuple[ScriptedExecutor, DbtSession]:
    made: list[ScriptedExecutor] = []

    def factory(context: ExecutorContext) -> ScriptedExecutor:
        made.append(ScriptedExecutor(context, **script))  # type: ignore[arg-type]
        return made[0]

    session = DbtSession(config, store, Lines(), executor=factory)
    try:
        session.run()
    finally:
        assert made[0].calls[-1] == "close", "the session closes its executor, whatever happened"
    return made[0], session


def test_the_session_executes_the_plan_then_a_second_run_executes_nothing(
    config: DbtRunConfig, tmp_path: Path
) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    first, _ = run(config, store)
    assert set(first.executed) == STATEFUL | TESTS
    assert first.calls[:4] == ["start", "project", "probe", "execute"]

    second, _ = run(config, store)
    assert second.executed == []
    assert "execute" not in second.calls and "finish" in second.calls


def test_a_failed_test_is_recorded_so_the_next_run_rebuilds_its_model(
    config: DbtRunConfig, tmp_path: Path
) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    run(config, store, failing={T_M1: "fail"})
    again, _ = run(config, store)
    assert M1 in again.executed and T_M1 in again.executed
    assert STG not in again.executed


def test_an_interrupted_execution_records_what_finished(
    config: DbtRunConfig, tmp_path: Path
) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    with pytest.raises(DbtRunError, match="interrupted; 1 finished nodes recorded"):
        run(config, store, cut_after=1)
    assert len(store.load().entries) == 1


def test_a_crashed_execution_records_nothing(config: DbtRunConfig, tmp_path: Path) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    with pytest.raises(DbtRunError, match="dbt failed during execute"):
        run(config, store, cut_after=1, interrupted=False)
    assert store.load().entries == {}
