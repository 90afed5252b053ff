"""Fingerprints change exactly when something that shapes a node's SQL changes."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_orchestra_dbt.decisions.fingerprint import (
    Fingerprinter,
    names_read,
    normalize_sql,
    resolve_var,
)
from airflow_provider_orchestra_dbt.decisions.graph import Graph, Macro, Node


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("select 1 as x", "select   1\n  as x  "),
        ("select 1 -- note\nfrom t", "select 1\nfrom t"),
        ("select /* block\ncomment */ 1", "select 1"),
        ("select {# jinja comment #} 1", "select 1"),
    ],
)
def test_whitespace_and_comment_edits_do_not_count(a: str, b: str) -> None:
    assert normalize_sql(a) == normalize_sql(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("select 'a  b'", "select 'a b'"),
        ("select 'x -- y'", "select 'x -- z'"),
        ("select 1 as x", "select 2 as x"),
        ('select "Col A"', 'select "Col  A"'),
    ],
)
def test_edits_inside_strings_and_code_count(a: str, b: str) -> None:
    assert normalize_sql(a) != normalize_sql(b)


def test_names_read_finds_literal_var_and_env_var_names() -> None:
    text = "{{ var('start') }} {{ var( \"end\", 3) }} {{ env_var('TOKEN') }} {{ my_var('no') }}"
    assert names_read(text) == ({"start", "end"}, {"TOKEN"})


def test_var_precedence_cli_then_package_then_global() -> None:
    project_vars = {"pkg": {"x": "scoped"}, "x": "global", "y": "global-y"}
    assert resolve_var("x", "pkg", {"x": "cli"}, project_vars) == "cli"
    assert resolve_var("x", "pkg", {}, project_vars) == "scoped"
    assert resolve_var("y", "pkg", {}, project_vars) == "global-y"
    assert resolve_var("z", "pkg", {}, project_vars) == "<unset>"


def make_graph(**overrides: Any) -> Graph:
    macros = [
        Macro("macro.p.outer", overrides.get("outer", "{{ inner(x) }} * 2"), ("macro.p.inner",)),
        Macro("macro.p.inner", overrides.get("inner", "({{ x }} + {{ var('step') }})")),
    ]
    nodes = [
        Node(
            "model.p.eph",
            "model",
            "eph",
            "p",
            materialized="ephemeral",
            raw_code=overrides.get("eph", "select 1 as id"),
        ),
        Node(
            "model.p.m",
            "model",
            "m",
            "p",
            "db",
            "main",
            "m",
            "table",
            depends_on=("model.p.eph",),
            macros=("macro.p.outer",),
            raw_code=(
                "select {{ outer('id') }} from {{ ref('eph') }} where k = '{{ env_var('K', '') }}'"
            ),
            config=overrides.get("config", {"materialized": "table"}),
        ),
        Node(
            "seed.p.s",
            "seed",
            "s",
            "p",
            "db",
            "main",
            "s",
            "seed",
            file_hash=overrides.get("seed_hash", "h1"),
        ),
    ]
    return Graph(nodes, macros, project_vars=overrides.get("project_vars", {"step": 1}))


def checksum(
    uid: str,
    *,
    cli_vars: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> tuple[str, list[str]]:
    base = Fingerprinter(make_graph(), cli_vars={}, env={"K": "a"})(uid)
    new = Fingerprinter(make_graph(**overrides), cli_vars=cli_vars or {}, env=env or {"K": "a"})(
        uid
    )
    return ("same" if new.checksum == base.checksum else "changed"), new.changed_parts(base.parts)


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        ({"inner": "({{ x }} + {{ var('step') }} + 0)"}, ["macros"]),  # transitive macro edit
        ({"outer": "{{ inner(x) }} * 3"}, ["macros"]),
        ({"project_vars": {"step": 2}}, ["vars"]),
        ({"cli_vars": {"step": 5}}, ["vars"]),
        ({"env": {"K": "b"}}, ["env_vars"]),
        ({"config": {"materialized": "view"}}, ["config"]),
        ({"eph": "select 2 as id"}, ["code"]),  # the inlined ephemeral parent changed
    ],
)
def test_each_input_changes_the_fingerprint_and_names_its_part(
    change: dict[str, Any], parts: list[str]
) -> None:
    assert checksum("model.p.m", **change) == ("changed", parts)


def test_unrelated_edits_keep_the_fingerprint() -> None:
    assert checksum("model.p.m", config={"materialized": "table", "tags": ["x"], "meta": {}}) == (
        "same",
        [],
    )
    assert checksum("model.p.m", project_vars={"step": 1, "unused": 9}) == ("same", [])


def test_seed_fingerprint_follows_the_csv_content() -> None:
    assert checksum("seed.p.s", seed_hash="h2") == ("changed", ["code"])


def project(reader_code: str, other_code: str, *extra: Node) -> Graph:
    macros = [Macro("macro.p.rows", "{% macro rows() %}{{ graph.nodes | length }}{% endmacro %}")]
    nodes = [
        Node(
            "model.p.reader", "model", "reader", "p", raw_code=reader_code, macros=("macro.p.rows",)
        ),
        Node("model.p.other", "model", "other", "p", raw_code=other_code),
        Node("model.p.plain", "model", "plain", "p", raw_code="select 1"),
        *extra,
    ]
    return Graph(nodes, macros)


def test_a_graph_reader_is_fingerprinted_with_every_nodes_code() -> None:
    reader = "select 1 {{ rows() }}"  # reads graph through a macro
    base = Fingerprinter(project(reader, "select 1"), cli_vars={}, env={})
    assert "graph" in base("model.p.reader").parts
    assert "graph" not in base("model.p.plain").parts
    for changed in (
        project(reader, "select 2"),
        project(reader, "select  1"),  # raw code: a reader may count characters
        project(reader, "select 1", Node("model.p.new", "model", "new", "p")),
    ):
        new = Fingerprinter(changed, cli_vars={}, env={})
        assert new("model.p.reader").changed_parts(base("model.p.reader").parts) == [
            "project graph"
        ]
        assert new("model.p.plain") == base("model.p.plain")
