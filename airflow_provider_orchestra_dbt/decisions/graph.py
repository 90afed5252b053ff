"""The dbt graph as the planner sees it, built from the worker's ``graph`` message."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from graphlib import TopologicalSorter
from types import MappingProxyType
from typing import Any

STATEFUL_TYPES = frozenset({"model", "seed", "snapshot"})
TEST_TYPES = frozenset({"test", "unit_test"})
_PERIODS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True)
class BuildAfter:
    """dbt's ``freshness.build_after`` model config."""

    count: int
    period: str
    updates_on: str = "any"

    @property
    def window(self) -> timedelta:
        return self.count * _PERIODS.get(self.period, timedelta(days=1))

    def describe(self) -> str:
        unit = self.period if self.count == 1 else f"{self.period}s"
        return f"{self.count} {unit}"


@dataclass(frozen=True)
class Node:
    """One node of the dbt project (model, seed, snapshot, source, test, ...), as the worker
    described it (``from_facts``): what the planner and the fingerprint need, nothing more.

    ``relation`` is the warehouse object and the base of the node's state key.
    """

    unique_id: str
    resource_type: str
    name: str
    package_name: str = ""
    database: str | None = None
    schema: str | None = None
    alias: str | None = None
    materialized: str | None = None
    depends_on: tuple[str, ...] = ()
    macros: tuple[str, ...] = ()
    raw_code: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    build_after: BuildAfter | None = None
    file_hash: str | None = None
    severity: str = "error"
    # dbt's rendered relation (quoted as the adapter quotes it): dbt-orchestra keys state by it.
    relation_name: str | None = None

    @property
    def is_ephemeral(self) -> bool:
        return self.resource_type == "model" and self.materialized == "ephemeral"

    @property
    def is_stateful(self) -> bool:
        return self.resource_type in STATEFUL_TYPES and not self.is_ephemeral

    @property
    def is_test(self) -> bool:
        return self.resource_type in TEST_TYPES

    @cached_property  # the planner looks up each node's state key several times
    def relation(self) -> str | None:
        """``database.schema.alias`` unquoted: the warehouse object, and the state key."""
        if self.is_ephemeral or not self.schema or not self.alias:
            return None
        parts = [p for p in (self.database, self.schema, self.alias) if p]
        return ".".join(parts)

    @property
    def schema_key(self) -> str:
        return f"{self.database}.{self.schema}"

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> Node:
        build_after = facts.get("build_after")
        return cls(
            unique_id=facts["unique_id"],
            resource_type=facts["resource_type"],
            name=facts.get("name", facts["unique_id"]),
            package_name=facts.get("package_name", ""),
            database=facts.get("database"),
            schema=facts.get("schema"),
            alias=facts.get("alias"),
            materialized=facts.get("materialized"),
            depends_on=tuple(facts.get("depends_on", ())),
            macros=tuple(facts.get("macros", ())),
            raw_code=facts.get("raw_code", "") or "",
            config=facts.get("config") or {},
            build_after=BuildAfter(**build_after) if build_after else None,
            file_hash=facts.get("file_hash"),
            severity=str(facts.get("severity", "error")).lower(),
            relation_name=facts.get("relation_name"),
        )


@dataclass(frozen=True)
class Macro:
    unique_id: str
    sql: str
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Upstream:
    """What a node reads directly, looking through ephemeral models."""

    nodes: tuple[str, ...]
    sources: tuple[str, ...]


class Graph:
    """Nodes, macros and the parent/child structure the reuse rules need.

    Built once per run from the worker's project facts and not changed afterwards; ``graph[uid]``
    is a node, ``upstream`` what a node reads (through ephemeral models), ``tested_nodes`` what a
    test checks and ``topological`` an order parents-first.
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        macros: Iterable[Macro] = (),
        *,
        project_name: str | None = None,
        adapter_type: str | None = None,
        project_vars: Mapping[str, Any] | None = MappingProxyType({}),
    ) -> None:
        self.nodes: dict[str, Node] = {n.unique_id: n for n in nodes}
        self.macros: dict[str, Macro] = {m.unique_id: m for m in macros}
        self.project_name = project_name
        self.adapter_type = adapter_type
        # None: the project's var values are unknown (a manifest artifact does not carry them).
        self.project_vars = project_vars
        self._upstream: dict[str, Upstream] = {}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Graph:
        macros = (
            Macro(uid, m.get("sql", ""), tuple(m.get("depends_on", ())))
            for uid, m in message.get("macros", {}).items()
        )
        return cls(
            (Node.from_facts(f) for f in message["nodes"]),
            macros,
            project_name=message.get("project_name"),
            adapter_type=message.get("adapter_type"),
            project_vars=message.get("project_vars", {}),
        )

    def __getitem__(self, unique_id: str) -> Node:
        return self.nodes[unique_id]

    def __contains__(self, unique_id: object) -> bool:
        return unique_id in self.nodes

    def upstream(self, unique_id: str) -> Upstream:
        """Direct stateful parents and sources; ephemeral parents are looked through."""
        cached = self._upstream.get(unique_id)
        if cached is not None:
            return cached
        nodes: dict[str, None] = {}
        sources: dict[str, None] = {}
        for parent_id in self.nodes[unique_id].depends_on:
            parent = self.nodes.get(parent_id)
            if parent is None:
                continue
            if parent.resource_type == "source":
                sources[parent_id] = None
            elif parent.is_ephemeral:
                through = self.upstream(parent_id)
                nodes.update(dict.fromkeys(through.nodes))
                sources.update(dict.fromkeys(through.sources))
            elif parent.is_stateful:
                nodes[parent_id] = None
        result = Upstream(tuple(nodes), tuple(sources))
        self._upstream[unique_id] = result
        return result

    @cached_property
    def stateful_children(self) -> dict[str, tuple[str, ...]]:
        """For each node or source: the stateful nodes reading it directly (through ephemerals)."""
        children: dict[str, list[str]] = {}
        for node in self.nodes.values():
            if not node.is_stateful:
                continue
            up = self.upstream(node.unique_id)
            for parent in (*up.nodes, *up.sources):
                children.setdefault(parent, []).append(node.unique_id)
        return {k: tuple(v) for k, v in children.items()}

    def tested_nodes(self, test_id: str) -> tuple[str, ...]:
        """The stateful nodes and sources a test checks."""
        tested: list[str] = []
        for parent_id in self.nodes[test_id].depends_on:
            parent = self.nodes.get(parent_id)
            if parent is not None and (parent.is_stateful or parent.resource_type == "source"):
                tested.append(parent_id)
        return tuple(tested)

    def topological(self, unique_ids: Iterable[str]) -> list[str]:
        """``unique_ids`` ordered parents first (by the full graph), ties by unique_id."""
        position = self._topological_position
        return sorted(set(unique_ids) & position.keys(), key=position.__getitem__)

    @cached_property
    def _topological_position(self) -> dict[str, int]:
        # Sorted once per run: a run orders several subsets, and large graphs take ~50 ms each.
        sorter: TopologicalSorter[str] = TopologicalSorter()
        for uid in sorted(self.nodes):
            sorter.add(uid, *sorted(p for p in self.nodes[uid].depends_on if p in self.nodes))
        sorter.prepare()
        order: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready())
            order.extend(ready)
            sorter.done(*ready)
        return {uid: i for i, uid in enumerate(order)}

    def macro_closure(self, macro_ids: Iterable[str]) -> list[str]:
        seen: set[str] = set()
        stack = list(macro_ids)
        while stack:
            uid = stack.pop()
            if uid in seen:
                continue
            seen.add(uid)
            macro = self.macros.get(uid)
            if macro is not None:
                stack.extend(macro.depends_on)
        return sorted(seen)
