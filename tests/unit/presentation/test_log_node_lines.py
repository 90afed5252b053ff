"""One line per finished node: its place among the nodes to execute and the time left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.log_lines import Lines

from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import Action, Decision
from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.executor import NodeFinished, NodeStarted
from airflow_provider_orchestra_dbt.execution.session import DbtSession
from airflow_provider_orchestra_dbt.presentation.report import (
    ExecutionProgress,
    NodeProgress,
    duration_text,
    finished_node_line,
    recorded_execution_times,
)
from airflow_provider_orchestra_dbt.state.model import StateEntry


def event(uid: str = "model.p.a", status: str = "success", **extra: Any) -> NodeResult:
    return NodeResult(unique_id=uid, status=status, **extra)


def test_a_line_starts_with_the_place_and_ends_with_the_time_left() -> None:
    line = finished_node_line(
        event(execution_time=0.234, rows_affected=60), NodeProgress(12, 64, 65.4)
    )
    assert line == "[12/64] SUCCESS  model.p.a in 0.23s, 60 rows (~1m05s left)"


def test_the_place_is_padded_so_statuses_line_up() -> None:
    assert finished_node_line(event(), NodeProgress(3, 120, 2)).startswith("[  3/120] SUCCESS ")


def test_the_last_node_and_unknown_estimates_show_no_time_left() -> None:
    assert finished_node_line(event(), NodeProgress(64, 64, 0.0)) == "[64/64] SUCCESS  model.p.a"
    assert finished_node_line(event(), NodeProgress(2, 64, None)) == "[ 2/64] SUCCESS  model.p.a"
    assert finished_node_line(event(), NodeProgress(2, 64, 0.2)).endswith(" (<1s left)")


def test_a_failure_keeps_its_message_after_the_time_left() -> None:
    line = finished_node_line(
        event(status="error", execution_time=1.0, message="Database Error: boom"),
        NodeProgress(5, 9, 12),
    )
    assert line == "[5/9] ERROR    model.p.a in 1.00s (~12s left): Database Error: boom"


def test_without_a_plan_the_line_is_as_before() -> None:
    # A command run as written (no plan) has no nodes to count.
    line = finished_node_line(event(status="pass", execution_time=0.5, rows_affected=None))
    assert line == "PASS     model.p.a in 0.50s"
    assert finished_node_line(event(rows_affected=-1)) == "SUCCESS  model.p.a"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "<1s"), (0.49, "<1s"), (0.5, "<1s"), (1.4, "1s"), (59.4, "59s"), (59.6, "1m00s"),
     (185, "3m05s"), (3599.4, "59m59s"), (3600, "1h00m"), (7625, "2h07m")],
)  # fmt: skip
def test_durations_are_short(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_time_left_sums_recorded_times_of_the_nodes_still_to_run() -> None:
    progress = ExecutionProgress.start(["a", "b", "c"], {"a": 10.0, "b": 20.0, "c": 30.0})
    progress.node_started(100.0)
    first = progress.node_finished("a", 10.0, now=110.0)
    assert (first.index, first.total, first.seconds_left) == (1, 3, 50.0)
    assert progress.node_finished("c", 30.0, now=140.0).seconds_left == 20.0
    assert progress.node_finished("b", 20.0, now=160.0) == NodeProgress(3, 3, 0.0)


def test_nodes_without_a_recorded_time_count_as_the_average_of_those_with_one() -> None:
    progress = ExecutionProgress.start(["a", "b", "t1", "t2"], {"a": 2.0, "b": 4.0, "x": 99.0})
    progress.node_started(0.0)
    # b (4) + t1 and t2 at the average of a and b (3 each); x is not to be executed.
    assert progress.node_finished("a", 2.0, now=2.0).seconds_left == 10.0


def test_with_nothing_recorded_this_runs_finished_nodes_set_the_pace() -> None:
    progress = ExecutionProgress.start(["a", "b", "c"], {})
    assert progress.seconds_left(0.0) is None
    progress.node_started(0.0)
    assert progress.node_finished("a", 3.0, now=3.0).seconds_left == 6.0


def test_nodes_run_side_by_side_shorten_the_time_left() -> None:
    # Four nodes of 10s each finished 10s after the first started: dbt runs four at once.
    ids = [f"n{i}" for i in range(8)]
    progress = ExecutionProgress.start(ids, dict.fromkeys(ids, 10.0))
    progress.node_started(50.0)
    for uid in ids[:3]:
        progress.node_finished(uid, 10.0, now=60.0)
    assert progress.node_finished(ids[3], 10.0, now=60.0).seconds_left == 10.0


def test_no_more_nodes_count_as_running_at_once_than_have_finished() -> None:
    # A start event that arrived late makes 10s of work look done in 1ms.
    progress = ExecutionProgress.start(["a", "b", "c"], dict.fromkeys("abc", 10.0))
    progress.node_started(0.0)
    assert progress.node_finished("a", 10.0, now=0.001).seconds_left == 20.0
    assert progress.node_finished("b", 10.0, now=0.002).seconds_left == 5.0


def test_a_node_finishing_before_any_start_event_counts_without_pace() -> None:
    progress = ExecutionProgress.start(["a", "b"], {"a": 1.0, "b": 5.0})
    assert progress.node_finished("a", None, now=7.0) == NodeProgress(1, 2, 5.0)


def test_recorded_times_come_from_each_nodes_state_entry() -> None:
    decisions = [
        Decision("model.p.a", "model", Action.BUILD, "why", key="db.s.a"),
        Decision("model.p.b", "model", Action.BUILD, "why", key="db.s.b"),
        Decision("model.p.c", "model", Action.BUILD, "why", key="db.s.c"),
        Decision("test.p.t", "test", Action.BUILD, "why"),
    ]
    state = {
        "db.s.a": StateEntry("x", execution_time=1.5),
        "db.s.b": StateEntry("x"),
        "db.s.c": StateEntry("x", execution_time=-1.0),
    }
    assert recorded_execution_times(decisions, state) == {"model.p.a": 1.5}


def test_the_session_logs_each_finished_node_with_its_place(tmp_path: Path) -> None:
    (tmp_path / "dbt_project.yml").write_text("name: p\n")
    (tmp_path / "profiles.yml").write_text("p: {}\n")
    config = DbtRunConfig.create(project_dir=tmp_path, profiles_dir=tmp_path)
    log = Lines()
    session = DbtSession(config, None, log)
    session._progress = ExecutionProgress.start(["model.p.a", "model.p.b"], {"model.p.b": 60.0})
    session._on_event(NodeStarted("model.p.a"))
    session._on_event(NodeFinished(event("model.p.a", execution_time=0.5)))
    session._on_event(NodeFinished(event("model.p.b", execution_time=0.5)))
    assert log.lines[0].startswith("[1/2] SUCCESS  model.p.a in 0.50s (~")
    assert log.lines[1] == "[2/2] SUCCESS  model.p.b in 0.50s"
