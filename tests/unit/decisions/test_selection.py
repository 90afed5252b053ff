"""Plan nodes as dbt selection terms: exact (checked by evaluating them), compact, bounded."""

from __future__ import annotations

import random

import pytest
from support.synthetic_graph import EPH, M1, M2, SEED, STG, T_M1, T_SPAN, base_graph, model

from airflow_provider_orchestra_dbt.decisions.graph import Graph, Node
from airflow_provider_orchestra_dbt.decisions.selection import (
    MAX_SELECTION_CHARS,
    node_selection,
)


def selected_by(graph: Graph, terms: list[str]) -> set[str]:
    """What dbt's selection picks among stateful nodes for these terms (names, ``name+``,
    and ``resource_type:…,package:…,name`` intersections)."""
    by_name: dict[str, list[Node]] = {}
    for node in graph.nodes.values():
        by_name.setdefault(node.name, []).append(node)
    picked: set[str] = set()
    for term in terms:
        descendants = term.endswith("+")
        criteria = term.removesuffix("+").split(",")
        matches = {
            node.unique_id
            for node in by_name.get(criteria[-1], ())
            if all(_matches(node, criterion) for criterion in criteria)
        }
        picked |= matches
        stack = list(matches) if descendants else []
        while stack:
            for child in graph.stateful_children.get(stack.pop(), ()):
                if child not in picked:
                    picked.add(child)
                    stack.append(child)
    return {uid for uid in picked if graph[uid].is_stateful or graph[uid].is_test}


def _matches(node: Node, criterion: str) -> bool:
    method, _, value = criterion.rpartition(":")
    if method == "resource_type":
        return node.resource_type == value
    if method == "package":
        return node.package_name == value
    return node.name == value


def test_a_whole_downstream_is_one_term() -> None:
    graph = base_graph()
    selection = node_selection(graph, {STG, M1, M2})
    assert selection.terms == ("stg_a+",)
    assert selected_by(graph, list(selection.terms)) == {STG, M1, M2}


def test_a_node_whose_child_is_reused_is_named_alone() -> None:
    graph = base_graph()
    assert node_selection(graph, {STG, M1}).terms == ("stg_a", "m1")
    assert node_selection(graph, {SEED, M2}).terms == ("s1+",)
    # m2 is a leaf: ``m2`` is shorter than ``m2+`` and means the same.
    assert node_selection(graph, {M2}).terms == ("m2",)


def test_tests_come_with_their_nodes_unless_every_checked_node_is_reused() -> None:
    graph = base_graph()
    assert node_selection(graph, {M1, M2, T_M1, T_SPAN}).terms == ("m1+",)
    assert node_selection(graph, {T_M1}).terms == ("not_null_m1",)


def test_names_several_nodes_answer_to_are_qualified_and_never_extended() -> None:
    twin = Node("model.other.m1", "model", "m1", "other", "db", "main", "m1_other", "table")
    graph = Graph([*base_graph().nodes.values(), twin])
    selection = node_selection(graph, {M1, M2})
    assert selection.terms == ("resource_type:model,package:p,m1", "m2")
    assert selected_by(graph, list(selection.terms)) == {M1, M2}


def test_unknown_nodes_are_refused() -> None:
    with pytest.raises(KeyError, match=r"model\.p\.nope"):
        node_selection(base_graph(), {"model.p.nope", EPH})


def big_graph(models: int = 6000, lanes: int = 40, seed: int = 7) -> Graph:
    """Models in 40 lanes, one per source: each reads one to three earlier models of its lane
    (the first, the source), and one in twenty also an earlier model of another lane."""
    rng = random.Random(seed)
    nodes: list[Node] = []
    lane_ids: list[list[str]] = []
    for lane in range(lanes):
        source = Node(f"source.big.raw.s{lane}", "source", f"s{lane}", "big", "db", "raw", "s")
        nodes.append(source)
        lane_ids.append([source.unique_id])
    for i in range(models):
        own = lane_ids[i % lanes]
        parents = rng.sample(own[-10:], k=min(len(own), rng.randint(1, 3)))
        if rng.random() < 0.05:
            parents.append(rng.choice(lane_ids[rng.randrange(lanes)][-10:]))
        node = model(f"model.big.m{i:05d}", *dict.fromkeys(parents))
        nodes.append(node)
        own.append(node.unique_id)
    return Graph(nodes)


def downstream_of(graph: Graph, roots: list[str]) -> set[str]:
    found: set[str] = set()
    stack = list(roots)
    while stack:
        for child in graph.stateful_children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def test_two_thousand_nodes_downstream_of_new_data_take_a_few_terms() -> None:
    graph = big_graph()
    sources = [f"source.big.raw.s{i}" for i in range(40)]
    dirty: set[str] = set()
    for source_id in sources:
        if len(dirty) >= 2000:
            break
        dirty |= downstream_of(graph, [source_id])
    assert 2000 <= len(dirty) < 3000
    selection = node_selection(graph, dirty)
    assert selected_by(graph, list(selection.terms)) == dirty
    chunks = selection.chunks()
    assert len(selection.terms) < len(dirty) / 10, selection.terms[:20]
    assert all(len(chunk) <= MAX_SELECTION_CHARS for chunk in chunks)


def test_two_thousand_scattered_nodes_stay_exact_and_bounded_per_command() -> None:
    graph = big_graph()
    models = sorted(uid for uid in graph.nodes if uid.startswith("model."))
    dirty = set(random.Random(3).sample(models, 2000))
    selection = node_selection(graph, dirty)
    chunks = selection.chunks()
    assert selected_by(graph, " ".join(chunks).split()) == dirty
    assert all(len(chunk) <= MAX_SELECTION_CHARS for chunk in chunks)
    assert len(chunks) == -(-sum(len(t) + 1 for t in selection.terms) // MAX_SELECTION_CHARS)
    # Parents first across commands: no node is in an earlier command than a parent of it.
    command_of = {
        uid: index
        for index, chunk in enumerate(chunks)
        for uid in selected_by(graph, chunk.split())
    }
    for uid, index in command_of.items():
        for parent in graph.upstream(uid).nodes:
            assert command_of.get(parent, -1) <= index
