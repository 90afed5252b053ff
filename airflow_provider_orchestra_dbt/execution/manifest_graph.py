"""A dbt ``manifest.json`` as the graph message the planner reads, without dbt.

The local worker describes the project from dbt's parsed manifest in memory. An executor that
only gets artifacts (a dbt Cloud job's ``manifest.json``, docs/design.md §2.2) builds the same
message from the JSON, field for field, so that ``Graph.from_message`` and everything after it
work unchanged.

Two things a manifest does not carry are marked so that the planner builds rather than guesses
(design §3, "when unsure, build"): the project's var values (``project_vars`` is ``None``:
nodes whose code reads a var get a fingerprint that never matches a recorded one), and the
content of a seed dbt checksummed by path only (files over dbt's size limit): no ``file_hash``,
so the seed is treated like one whose file cannot be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["ArtifactError", "graph_message"]

# Node types the planner and the selection know; analyses, operations and the like are not
# built by `dbt build` and are left out, as the worker leaves them out of its selection.
_NODE_TYPES = frozenset({"model", "seed", "snapshot", "test"})


class ArtifactError(ValueError):
    """A dbt artifact is not what dbt writes: the message names the artifact and the fault."""


def graph_message(
    manifest: Mapping[str, Any],
    *,
    origin: str,
    selected: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``graph`` message for ``manifest``; ``selected`` defaults to every node it lists.

    ``origin`` names the artifact in errors (e.g. ``"manifest.json of dbt Cloud run 42"``).
    """
    if not isinstance(manifest, Mapping):
        raise ArtifactError(f"{origin} is not a dbt manifest: not a JSON object")
    try:
        metadata = manifest["metadata"]
        raw_nodes: Mapping[str, Any] = manifest["nodes"]
        raw_sources: Mapping[str, Any] = manifest.get("sources") or {}
        raw_unit_tests: Mapping[str, Any] = manifest.get("unit_tests") or {}
        raw_macros: Mapping[str, Any] = manifest.get("macros") or {}
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{origin} is not a dbt manifest: no {exc}") from None
    nodes: list[dict[str, Any]] = []
    try:
        nodes += [_node_facts(n) for n in raw_nodes.values() if n["resource_type"] in _NODE_TYPES]
        nodes += [_source_facts(s) for s in raw_sources.values()]
        nodes += [_unit_test_facts(u) for u in raw_unit_tests.values()]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{origin}: a node lacks a field dbt always writes ({exc})") from None
    return {
        "type": "graph",
        "adapter_type": metadata.get("adapter_type"),
        "project_name": metadata.get("project_name"),
        "project_vars": None,
        "nodes": nodes,
        "macros": _macros(raw_macros, nodes),
        "selected": list(selected) if selected is not None else [n["unique_id"] for n in nodes],
    }


def _node_facts(node: Mapping[str, Any]) -> dict[str, Any]:
    config: Mapping[str, Any] = node.get("config") or {}
    facts: dict[str, Any] = {
        "unique_id": node["unique_id"],
        "resource_type": node["resource_type"],
        "name": node["name"],
        "package_name": node["package_name"],
        "original_file_path": node.get("original_file_path"),
        "database": node.get("database"),
        "schema": node.get("schema"),
        "alias": node.get("alias") or node["name"],
        "relation_name": node.get("relation_name"),
        "materialized": config.get("materialized"),
        "depends_on": list(node["depends_on"].get("nodes", [])),
        "macros": list(node["depends_on"].get("macros", [])),
        "raw_code": node.get("raw_code") or "",
        "config": {k: v for k, v in config.items() if v is not None},
        "build_after": _build_after(config),
    }
    if node["resource_type"] == "seed":
        checksum = node.get("checksum") or {}
        # dbt hashes a seed's content up to a size limit and only its path beyond it.
        if checksum.get("name") == "sha256":
            facts["file_hash"] = checksum.get("checksum")
    if node["resource_type"] == "test":
        facts["severity"] = str(config.get("severity", "ERROR")).lower()
        facts["attached_node"] = node.get("attached_node")
    return facts


def _build_after(config: Mapping[str, Any]) -> dict[str, Any] | None:
    freshness = config.get("freshness") or {}
    build_after = freshness.get("build_after") if isinstance(freshness, Mapping) else None
    if not isinstance(build_after, Mapping):
        return None
    if build_after.get("count") is None or build_after.get("period") is None:
        return None
    return {
        "count": build_after["count"],
        "period": build_after["period"],
        "updates_on": build_after.get("updates_on") or "any",
    }


def _source_facts(source: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "unique_id": source["unique_id"],
        "resource_type": "source",
        "name": source["name"],
        "source_name": source.get("source_name"),
        "package_name": source["package_name"],
        "database": source.get("database"),
        "schema": source.get("schema"),
        "alias": source.get("identifier") or source["name"],
        "relation_name": source.get("relation_name"),
        "depends_on": [],
        "macros": [],
        "has_loaded_at": bool(source.get("loaded_at_field") or source.get("loaded_at_query")),
    }


def _unit_test_facts(unit_test: Mapping[str, Any]) -> dict[str, Any]:
    depends_on = unit_test.get("depends_on") or {}
    return {
        "unique_id": unit_test["unique_id"],
        "resource_type": "unit_test",
        "name": unit_test["name"],
        "package_name": unit_test["package_name"],
        "depends_on": list(depends_on.get("nodes", [])),
        "macros": list(depends_on.get("macros", [])),
        "raw_code": "",
        "config": {},
        "severity": "error",
    }


def _macros(
    raw_macros: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The macros the nodes call, transitively: their SQL is part of the fingerprints."""
    wanted: dict[str, dict[str, Any]] = {}
    stack = [m for n in nodes for m in n.get("macros", [])]
    while stack:
        uid = stack.pop()
        macro = raw_macros.get(uid)
        if uid in wanted or not isinstance(macro, Mapping):
            continue
        depends_on = list((macro.get("depends_on") or {}).get("macros", []))
        wanted[uid] = {"sql": macro.get("macro_sql", ""), "depends_on": depends_on}
        stack.extend(depends_on)
    return wanted
