"""The logged plan: builds one per line, reuses counted per reason, columns aligned."""

from __future__ import annotations

from pathlib import Path

from airflow_provider_orchestra_dbt.cli import build_parser, run_config
from airflow_provider_orchestra_dbt.decisions.planner import Action, Decision, Plan, PlanOptions
from airflow_provider_orchestra_dbt.presentation.report import (
    FULL_PLAN_ENV,
    PLAN_NODE_WIDTH,
    RunReport,
    count_by_type,
    plan_rows,
    shorten_middle,
    table_lines,
    wants_full_plan,
)

UP_TO_DATE = "up to date: code unchanged and no new upstream data"
TESTED = "every node it tests is reused and passed its tests"
LONG_TEST = (
    "test.orchestra_tutorial.relationships_stg_customers_country_code__country_code__ref_"
    "stg_countries_.ffd2ef56b6"
)


def reuse(uid: str, reason: str = UP_TO_DATE) -> Decision:
    return Decision(uid, uid.split(".", 1)[0], Action.REUSE, reason)


def build(uid: str, reason: str = "code changed (sql)") -> Decision:
    return Decision(uid, uid.split(".", 1)[0], Action.BUILD, reason)


def tutorial_like() -> list[Decision]:
    return [
        build("model.p.stg_orders", "new data in source raw.orders"),
        reuse("seed.p.country_codes"),
        *(reuse(f"model.p.m{i}") for i in range(3)),
        build(LONG_TEST, "stg_orders is being built"),
        *(reuse(f"test.p.t{i}", TESTED) for i in range(4)),
        reuse("model.p.waiting", "build_after 2 hours: next build due after 10:00"),
    ]


def report(decisions: list[Decision]) -> RunReport:
    the_plan = Plan(tuple(decisions), PlanOptions())
    return RunReport("build", None, 0, plan=the_plan)


def test_builds_get_a_line_each_and_reuses_one_line_per_reason() -> None:
    assert plan_rows(tutorial_like()) == [
        ("model.p.stg_orders", "build", "new data in source raw.orders"),
        (LONG_TEST, "build", "stg_orders is being built"),
        ("3 models, 1 seed", "reuse", UP_TO_DATE),
        ("4 tests", "reuse", TESTED),
        # A reason no other node shares keeps the node's name.
        ("model.p.waiting", "reuse", "build_after 2 hours: next build due after 10:00"),
    ]


def test_the_full_plan_lists_every_reused_node() -> None:
    rows = plan_rows(tutorial_like(), full=True)
    assert len(rows) == len(tutorial_like())
    assert [r[0] for r in rows[:2]] == ["model.p.stg_orders", LONG_TEST]
    assert ("test.p.t3", "reuse", TESTED) in rows


def test_resource_types_are_counted_in_a_stable_order_with_plurals() -> None:
    decisions = [
        reuse("test.p.a"),
        reuse("unit_test.p.b"),
        reuse("snapshot.p.c"),
        reuse("model.p.d"),
        reuse("model.p.e"),
        reuse("analysis.p.f"),
    ]
    assert count_by_type(decisions) == "2 models, 1 snapshot, 1 test, 1 unit test, 1 analysis"


def test_long_names_are_shortened_in_the_middle_so_columns_stay_aligned() -> None:
    rows = plan_rows(tutorial_like())
    lines = table_lines(rows)
    decision_columns = {
        line.index(action)
        for line in lines[2:]
        for action in ("build", "reuse")
        if f"  {action}  " in line
    }
    assert decision_columns == {PLAN_NODE_WIDTH + 2}
    shortened = lines[3]
    assert shortened.startswith("test.orchestra_tutorial.relatio")
    assert "…" in shortened and "ref_stg_countries_.ffd2ef56b6  build" in shortened
    assert lines[0].startswith("node ") and lines[0].endswith("decision  reason")


def test_short_names_set_a_narrower_node_column() -> None:
    lines = table_lines([("model.p.a", "build", "why"), ("model.p.bb", "reuse", "because")])
    assert lines[2:] == ["model.p.a   build     why", "model.p.bb  reuse     because"]


def test_shorten_middle_keeps_both_ends_at_the_exact_width() -> None:
    assert shorten_middle("abcdef", 6) == "abcdef"
    assert shorten_middle("abcdefghij", 7) == "abc…hij"
    assert shorten_middle("abcdefghij", 6) == "ab…hij"
    assert all(len(shorten_middle(LONG_TEST, w)) == w for w in range(3, len(LONG_TEST)))


def test_plan_table_says_how_to_see_every_node_only_when_it_counted_some() -> None:
    counted = report(tutorial_like()).plan_table()
    assert f"{FULL_PLAN_ENV}=1 lists each one" in counted.splitlines()[-1]
    full = report(tutorial_like()).plan_table(full=True)
    assert FULL_PLAN_ENV not in full and "test.p.t3" in full
    alone = report([reuse("model.p.a"), build("model.p.b")]).plan_table()
    assert FULL_PLAN_ENV not in alone
    assert RunReport("build", None, 0).plan_table() == "plan: nothing selected"


def test_full_plan_is_asked_for_by_env_var_or_cli_flag(tmp_path: Path) -> None:
    assert wants_full_plan({FULL_PLAN_ENV: "1"}) and wants_full_plan({FULL_PLAN_ENV: "True "})
    assert not wants_full_plan({}) and not wants_full_plan({FULL_PLAN_ENV: "0"})
    (tmp_path / "dbt_project.yml").write_text("name: p\n")
    (tmp_path / "profiles.yml").write_text("p: {}\n")
    where = ["--project-dir", str(tmp_path), "--profiles-dir", str(tmp_path)]
    parser = build_parser()
    flagged = run_config(parser.parse_args(["build", *where, "--full-plan"]), [])
    assert wants_full_plan(flagged.env)
    assert not wants_full_plan(run_config(parser.parse_args(["build", *where]), []).env)
