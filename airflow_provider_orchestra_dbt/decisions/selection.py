"""The nodes a plan builds, written as dbt selection arguments: exact, compact, bounded.

Where dbt runs somewhere we only hand a command line to (a dbt Cloud job's
``steps_override``), the plan's nodes must travel as ``--select`` arguments. Naming every node
makes commands of tens of thousands of characters for large projects, so a node whose whole
downstream is built too is written as ``name+`` (dbt's descendants operator) and its
descendants are not named again. The selection stays exact: ``name+`` is used only when every
stateful node downstream of ``name`` is in the set, and a name that more than one node of the
project answers to is qualified (``resource_type:model,package:p,name``) and never extended
with ``+``. Tests come with the nodes they check (``dbt build`` selects them indirectly); a test
to run whose checked nodes are all reused is named itself.

The terms are ordered parents first and cut into selections of at most ``max_chars``
characters, so that running them one after another in that order builds each node after its
parents (docs/design.md §2.2).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from airflow_provider_orchestra_dbt.decisions.graph import Graph, Node

__all__ = ["MAX_SELECTION_CHARS", "NodeSelection", "node_selection"]

MAX_SELECTION_CHARS = 4000
"""The longest ``--select`` value one command carries (dbt Cloud stores each step as text)."""


@dataclass(frozen=True)
class NodeSelection:
    """Selection terms for a set of nodes, parents first, and how many nodes they cover."""

    terms: tuple[str, ...]
    nodes: int

    def chunks(self, max_chars: int = MAX_SELECTION_CHARS) -> list[str]:
        """The terms as space-separated ``--select`` values of at most ``max_chars`` characters
        each (a single longer term stands alone), in order: run them one after another."""
        chunks: list[str] = []
        current: list[str] = []
        length = 0
        for term in self.terms:
            added = len(term) + (1 if current else 0)
            if current and length + added > max_chars:
                chunks.append(" ".join(current))
                current, length = [], 0
                added = len(term)
            current.append(term)
            length += added
        if current:
            chunks.append(" ".join(current))
        return chunks


def node_selection(graph: Graph, unique_ids: Iterable[str]) -> NodeSelection:
    """Selection terms that make ``dbt build`` run exactly ``unique_ids`` and their tests.

    ``unique_ids`` holds stateful nodes (models, seeds, snapshots) and tests; a test is named
    only when none of the nodes it checks is built. Unknown ids raise ``KeyError``.
    """
    wanted = set(unique_ids)
    unknown = sorted(wanted - graph.nodes.keys())
    if unknown:
        raise KeyError(f"not nodes of the project: {', '.join(unknown[:5])}")
    building = {uid for uid in wanted if graph[uid].is_stateful}
    names = Counter(node.name for node in graph.nodes.values())
    whole = _whole_downstream_built(graph, building)
    children = graph.stateful_children

    terms: list[str] = []
    covered: set[str] = set()
    for uid in graph.topological(building):
        if uid in covered:
            continue
        node = graph[uid]
        if names[node.name] == 1 and whole[uid] and children.get(uid):
            terms.append(f"{node.name}+")
            covered |= _downstream(graph, uid)
        else:
            terms.append(_exact(node, names))
        covered.add(uid)
    tests = (uid for uid in wanted - building if graph[uid].is_test)
    for uid in sorted(tests):
        if not any(parent in building for parent in graph.tested_nodes(uid)):
            terms.append(_exact(graph[uid], names))
    return NodeSelection(tuple(terms), len(wanted))


def _exact(node: Node, names: Counter[str]) -> str:
    if names[node.name] == 1:
        return node.name
    # Intersections pick one node among those sharing its name (no graph operator: it would
    # apply to one criterion of the intersection only).
    return f"resource_type:{node.resource_type},package:{node.package_name},{node.name}"


def _whole_downstream_built(graph: Graph, building: set[str]) -> dict[str, bool]:
    """For each node built: whether every stateful node downstream of it is built too."""
    children = graph.stateful_children
    whole: dict[str, bool] = {}
    # Children first, so each answer reuses its children's (no recursion on deep graphs).
    for uid in reversed(graph.topological(graph.nodes)):
        if uid in building:
            whole[uid] = all(c in building and whole.get(c, False) for c in children.get(uid, ()))
    return whole


def _downstream(graph: Graph, uid: str) -> set[str]:
    children = graph.stateful_children
    seen: set[str] = set()
    stack = list(children.get(uid, ()))
    while stack:
        child = stack.pop()
        if child not in seen:
            seen.add(child)
            stack.extend(children.get(child, ()))
    return seen
