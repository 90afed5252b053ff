"""Inputs a run cannot see (var values missing from a manifest artifact, an environment dbt
runs in elsewhere, a seed file never read) make the node build, with the reason naming them."""

from __future__ import annotations

from dataclasses import replace

from support.synthetic_graph import (
    EPH,
    M1,
    M2,
    SEED,
    STG,
    base_graph,
    clean_state,
    fresh_probe,
    model,
)

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprint, Fingerprinter
from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.planner import Action, PlanOptions, plan
from airflow_provider_orchestra_dbt.state.model import StateEntry

READS_VAR_AND_ENV = "select '{{ var(\"start\") }}', '{{ env_var(\"REGION\") }}' from x"


def graph_with_reader(**graph_kwargs: object) -> Graph:
    nodes = dict(base_graph().nodes)
    nodes[M1] = replace(model(M1, STG, EPH), raw_code=READS_VAR_AND_ENV)
    return Graph(nodes.values(), **graph_kwargs)  # type: ignore[arg-type]


def test_known_vars_and_environment_leave_nothing_unknown() -> None:
    graph = graph_with_reader(project_vars={"start": "2026-01-01"})
    assert Fingerprinter(graph, cli_vars={}, env={"REGION": "eu"})(M1).unknown == ()


def test_vars_of_a_manifest_without_values_are_unknown_unless_given_on_the_command_line() -> None:
    graph = graph_with_reader(project_vars=None)
    assert Fingerprinter(graph, cli_vars={}, env={})(M1).unknown == ("var 'start'",)
    assert Fingerprinter(graph, cli_vars={"start": "x"}, env={})(M1).unknown == ()
    assert Graph.from_message({"nodes": [], "project_vars": None}).project_vars is None
    assert Graph.from_message({"nodes": []}).project_vars == {}


def test_an_environment_this_process_cannot_see_makes_env_vars_unknown() -> None:
    graph = graph_with_reader()
    assert Fingerprinter(graph, cli_vars={}, env=None)(M1).unknown == ("env var 'REGION'",)
    # A node reading no env var has nothing unknown.
    assert Fingerprinter(graph, cli_vars={}, env=None)(M2).unknown == ()


def test_a_seed_whose_file_was_not_read_is_unknown() -> None:
    nodes = dict(base_graph().nodes)
    nodes[SEED] = replace(nodes[SEED], file_hash=None)
    fingerprint = Fingerprinter(Graph(nodes.values()), cli_vars={}, env={})(SEED)
    assert fingerprint.unknown == ("the seed file's content",)


def test_the_planner_builds_a_node_with_unknown_inputs_and_says_which() -> None:
    graph = base_graph()
    state = {k: StateEntry.from_json(e) for k, e in clean_state(graph).items()}

    def fingerprints(uid: str) -> Fingerprint:
        unknown = ("var 'start'",) if uid == M1 else ()
        return Fingerprint(f"c-{uid}", {"code": f"code-{uid}", "config": "cfg"}, unknown)

    result = plan(graph, [STG, M1, M2], state, fingerprints, fresh_probe(), PlanOptions())
    decision = result.by_id[M1]
    assert decision.action is Action.BUILD
    assert decision.reason == "cannot tell whether it changed: var 'start' not known"
    assert result.by_id[STG].action is Action.REUSE
