"""Code the fingerprint alone cannot vouch for, and selections that match nothing, on real dbt.

The project is tests/projects/graph_and_clock: a seed, two models over it, ``graph_nodes`` (its
post-hook macro inserts one row per model from ``graph.nodes``, as dbt-project-evaluator
does), ``today_spine`` (``current_date``), ``today_daily`` (``dbt.current_timestamp()``,
bounded with ``volatile: daily``) and ``clock_words`` (clock words only in literals and
comments); its selectors.yml has a selector matching nothing. Every run goes through
``Workspace.run`` (the project must come out byte-identical).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.tutorial import (
    REPO,
    TARGETS,
    ProjectBaselines,
    Workspace,
    built,
    day_ago,
    decisions,
    plain_dbt_build,
)

pytestmark = pytest.mark.integration

PROJECT = REPO / "tests" / "projects" / "graph_and_clock"
GRAPH_READER = "model.graph_and_clock.graph_nodes"
STG = "model.graph_and_clock.stg_items"
EDIT = ("select id, name, amount", "select id, name, amount, amount * 2 as doubled")


def land(ws: Workspace) -> None:
    """Everything comes from the project's seed."""


@pytest.fixture
def ws(project_baselines: ProjectBaselines, target: str) -> Workspace:
    return project_baselines.workspace(target)


def code_lengths(ws: Workspace) -> dict[str, int]:
    rows = ws.sql(f"select unique_id, code_length from {ws.schema}.graph_nodes")
    return {uid: int(length) for uid, length in rows}


@pytest.mark.parametrize("target", TARGETS)
def test_graph_readers_follow_the_project_and_clock_readers_the_clock(
    ws: Workspace, tmp_path: Path
) -> None:
    # The baseline's builds are a day old: the daily model is due, the unbounded one always.
    first = ws.run("build")
    assert built(first) == {"today_spine", "today_daily"}
    why = decisions(first)
    assert why["today_spine"] == "volatile: its SQL reads the current date/time (current_date)"
    assert why["today_daily"].startswith("volatile daily: last built ")
    assert why["today_daily"].endswith(" (UTC), a new day began")
    # Clock words in literals and comments, and a graph reader with nothing changed: reused.
    reused = decisions(first, "reuse")
    assert {"clock_words", "graph_nodes", "stg_items", "item_totals", "raw_items"} == set(reused)

    second = ws.run("build")
    assert built(second) == {"today_spine"}
    assert "volatile daily: already built this day (" in decisions(second, "reuse")["today_daily"]

    # Another model's SQL changes: the post-hook's rows describe the new code, as plain dbt's.
    before = code_lengths(ws)
    ws.edit("models/stg_items.sql", *EDIT)
    edited = ws.run("build")
    assert decisions(edited)["graph_nodes"] == "code changed (project graph)"
    assert decisions(edited)["stg_items"] == "code changed (code)"
    assert code_lengths(ws) == before | {STG: before[STG] + len(EDIT[1]) - len(EDIT[0])}
    if ws.target == "duckdb":
        assert ws.tables() == plain_dbt_build(ws, tmp_path / "plain.duckdb", tmp_path / "plain")
    assert "graph_nodes" not in built(ws.run("build"))

    # A new day for the daily model.
    ws.set_built_at(day_ago(), "today_daily")
    assert built(ws.run("build")) == {"today_spine", "today_daily"}


@pytest.mark.parametrize("target", ["duckdb"])  # dbt's selection: the same on every adapter
def test_selection_criteria_matching_nothing_are_reported(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestra_dbt"):
        typo = ws.run("build", "--select", "stg_itemz+")
    assert typo["unmatched_selection"] == ["stg_itemz+"]
    assert typo["nodes"] == []
    assert "The selection criterion 'stg_itemz+' does not match any enabled nodes" in caplog.text

    union = ws.run("build", "--select", "stg_items", "stg_itemz", "--exclude", "nothing_here")
    assert union["unmatched_selection"] == ["stg_itemz", "nothing_here"]
    assert [n["unique_id"] for n in union["nodes"]] == [STG]
    # dbt judges a selectors.yml definition as a whole: one selecting nothing is reported.
    assert ws.run("build", "--selector", "untagged")["unmatched_selection"] == ["selector:untagged"]

    # With the user's --warn-error, dbt's warning is an error: nothing runs, as in dbt.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="orchestra_dbt"):
        failed = ws.run("build", "--select", "stg_itemz+", "--", "--warn-error", expect_exit=2)
    assert "unmatched_selection" not in failed
    assert "The selection criterion 'stg_itemz+' does not match any enabled nodes" in caplog.text
