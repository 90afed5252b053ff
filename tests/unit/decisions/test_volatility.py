"""What code reads besides its inputs (clock, run, project graph) and the volatile option."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_orchestra_dbt.decisions.graph import Graph, Macro, Node
from airflow_provider_orchestra_dbt.decisions.volatility import (
    CodeScanner,
    Reads,
    scan,
    volatile_setting,
    volatility,
)

NOW = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "found"),
    [
        ("select current_date as d", "current_date"),
        ("select CURRENT_TIMESTAMP", "current_timestamp"),
        ("select now ()", "now()"),
        ("select getdate()", "getdate"),
        ("select sysdate from dual", "sysdate"),
        ("select today()", "today()"),
        ("select unix_timestamp()", "unix_timestamp()"),
        ("select {{ dbt.current_timestamp() }}", "dbt.current_timestamp"),
        ("select {{ dbt_utils.current_timestamp_in_utc() }}", "dbt_utils.current_timestamp_in_utc"),
        (
            "{{ dbt_date.get_base_dates(n_dateparts=3) }} where d < {{ dbt_date.today() }}",
            "dbt_date.today()",
        ),
        ("select '{{ run_started_at }}' as loaded_at", "run_started_at"),
        ("{% set t = modules.datetime.datetime.now() %}", "datetime.now()"),
        ("{% set t = modules.datetime.date.today() %}", "date.today()"),
        ("{% set t = modules.time.time() %}", "modules.time.time()"),
        # A Jinja string is pasted into the SQL by the macro it is passed to.
        ("{{ dbt.dateadd('day', -1, 'current_date') }}", "current_date"),
    ],
)
def test_clock_reads_are_found(code: str, found: str) -> None:
    assert scan(code).clock == found


@pytest.mark.parametrize(
    "code",
    [
        "select 'current_date' as label",  # a SQL literal
        'select "current_date" from t',  # a quoted identifier
        "select 1 -- now()\n/* today() */",
        "{# current_timestamp #} select 1",
        "select current_amount, today_flag, nowhere from t",  # other words
        # Columns that start like a clock keyword.
        "select current_date_key, sysdate_created, localtime_zone, timeofday_bucket from d",
        "select run_started_at from dbt_artifacts.runs",  # a column, outside Jinja
    ],
)
def test_comments_literals_and_other_words_are_not_reads(code: str) -> None:
    assert scan(code) == Reads()


def test_run_and_project_context_are_found_in_jinja_only() -> None:
    assert scan("select '{{ invocation_id }}' as run").per_run == "invocation_id"
    assert scan("{% for n in selected_resources %}{% endfor %}").per_run == "selected_resources"
    assert scan("{% for n in graph.nodes.values() %}{% endfor %}").project == "graph"
    assert scan("select graph from t {{ ref('graph') }}").project is None
    assert scan("{{ node.graph }}").project is None


def graph(**node: Any) -> Graph:
    macros = [
        Macro("macro.dbt_date.today", "{% macro today() %}{{ dbt_date.now() }}{% endmacro %}",
              ("macro.dbt_date.now",)),
        Macro("macro.dbt_date.now", "{% macro now() %}{{ dbt.current_timestamp() }}{% endmacro %}"),
        Macro("macro.p.spine", "{% macro spine() %}{{ dbt_date.today() }}{% endmacro %}",
              ("macro.dbt_date.today",)),
        Macro("macro.p.record", "{% macro record() %}{% for n in graph.nodes %}{% endfor %}"
              "{% endmacro %}"),
        Macro("macro.p.plain", "{% macro plain() %}1{% endmacro %}"),
    ]  # fmt: skip
    return Graph([Node("model.p.m", "model", "m", "p", **node)], macros)


def test_macros_are_scanned_transitively_and_named() -> None:
    reads = CodeScanner(graph(raw_code="select {{ spine() }}", macros=("macro.p.spine",)))
    assert reads("model.p.m").clock == "dbt_date.today() in macro p.spine"
    plain = CodeScanner(graph(raw_code="select {{ plain() }}", macros=("macro.p.plain",)))
    assert plain("model.p.m") == Reads()


def test_hooks_and_sql_header_are_scanned() -> None:
    config = {
        "post-hook": [{"sql": "{{ record() }}", "transaction": True}],
        "pre-hook": [{"sql": "insert into log values ({{ dbt.current_timestamp() }})"}],
        "sql_header": "set timezone = 'UTC'",
    }
    reads = CodeScanner(graph(raw_code="select 1", config=config, macros=("macro.p.record",)))
    assert reads("model.p.m") == Reads(
        clock="dbt.current_timestamp in its pre-hook",
        project="graph in macro p.record",
    )


def node(volatile: Any = None, *, meta: Any = None) -> Node:
    if meta is None:
        meta = {} if volatile is None else {"orchestra_dbt": {"volatile": volatile}}
    return Node("model.p.m", "model", "m", "p", config={"meta": meta})


CLOCK = Reads(clock="current_date")


@pytest.mark.parametrize(
    ("setting", "reads", "last", "due", "note"),
    [
        (None, Reads(), NOW, None, None),
        (None, CLOCK, NOW, "volatile: its SQL reads the current date/time (current_date)", None),
        (None, Reads(per_run="invocation_id"), NOW,
         "volatile: its SQL reads per-run context (invocation_id)", None),
        (False, CLOCK, NOW, None, None),
        (True, Reads(), NOW, "volatile: declared by meta orchestra_dbt.volatile: true", None),
        ("daily", Reads(), NOW - timedelta(hours=10),
         "volatile daily: last built 2026-11-29 (UTC), a new day began", None),
        ("daily", CLOCK, NOW - timedelta(hours=9, minutes=29), None,
         "volatile daily: already built this day (2026-11-30 UTC)"),
        ("hourly", CLOCK, NOW - timedelta(minutes=31),
         "volatile hourly: last built 2026-11-30 08:00 (UTC), a new hour began", None),
        ("hourly", CLOCK, NOW - timedelta(minutes=29), None,
         "volatile hourly: already built this hour (2026-11-30 09:00 UTC)"),
        ("daily", CLOCK, None, "volatile daily: no build time recorded", None),
    ],
)  # fmt: skip
def test_volatility(
    setting: Any, reads: Reads, last: datetime | None, due: str | None, note: str | None
) -> None:
    result = volatility(node(setting), reads, last, NOW)
    assert (result.due, result.note) == (due, note)


def test_days_are_utc_days_whatever_the_offsets() -> None:
    plus_one = timezone(timedelta(hours=1))
    built = datetime(2026, 12, 1, 0, 30, tzinfo=plus_one)  # 2026-11-30 23:30 UTC
    same_utc_day = datetime(2026, 11, 30, 23, 50, tzinfo=UTC)
    assert volatility(node("daily"), Reads(), built, same_utc_day).due is None
    next_utc_day = datetime(2026, 12, 1, 1, 10, tzinfo=plus_one)  # 00:10 UTC
    assert volatility(node("daily"), Reads(), built, next_utc_day).due == (
        "volatile daily: last built 2026-11-30 (UTC), a new day began"
    )


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"orchestra_dbt": {"volatile": "weekly"}},
         "bad meta orchestra_dbt.volatile on model.p.m: 'weekly' "
         "(expected true, false, daily or hourly)"),
        ({"orchestra_dbt": {"volatile": ["daily"]}},
         "bad meta orchestra_dbt.volatile on model.p.m: ['daily'] "
         "(expected true, false, daily or hourly)"),
        ({"orchestra_dbt": "daily"},
         "bad meta orchestra_dbt on model.p.m: expected a mapping, got 'daily'"),
    ],
)  # fmt: skip
def test_a_bad_option_names_node_and_field_and_counts_as_volatile(meta: Any, error: str) -> None:
    assert volatile_setting(node(meta=meta)) == (None, error)
    assert volatility(node(meta=meta), Reads(), NOW, NOW).due == (
        f"volatile: {error}; treated as volatile"
    )


def test_other_options_in_the_namespace_are_not_ours_to_judge() -> None:
    assert volatile_setting(node(meta={"orchestra_dbt": {"other": 1}})) == (None, None)


def test_ephemeral_parents_count_as_the_code_they_are_compiled_into() -> None:
    nodes = [
        Node("model.p.eph", "model", "eph", "p", materialized="ephemeral",
             raw_code="select now() as t"),
        Node("model.p.view", "model", "view", "p", materialized="view", raw_code="select 1"),
        Node("model.p.m", "model", "m", "p", depends_on=("model.p.eph", "model.p.view")),
        Node("model.p.n", "model", "n", "p", depends_on=("model.p.view",)),
    ]  # fmt: skip
    reads = CodeScanner(Graph(nodes))
    assert reads("model.p.m").clock == "now() in ephemeral eph"
    assert reads("model.p.n") == Reads()  # a materialized parent is an input, not its code
