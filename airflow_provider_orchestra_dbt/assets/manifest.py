"""Read a dbt ``manifest.json`` without dbt, for DAG-parse-time declarations (Assets).

Importing dbt costs seconds, far too much for every DAG parse, so this reads the JSON file
(cached by path and mtime) and evaluates the common part of dbt's selection syntax itself:
names and wildcards, ``tag:``, ``path:``, ``package:``, ``fqn:``, ``resource_type:``,
``config.materialized:``, ``source:``, graph operators (``+x``, ``x+``, ``2+x``, ``@x``),
unions (spaces) and intersections (commas). Anything else returns ``None``: the caller then
declares every model, which is a superset and therefore safe.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CACHE: dict[Path, tuple[float, ManifestIndex]] = {}
_ATOM = re.compile(r"^(?P<at>@)?(?:(?P<up>\d*)\+)?(?P<body>[^+@]+?)(?:\+(?P<down>\d*))?$")
_METHODS = frozenset(
    {"tag", "path", "package", "fqn", "resource_type", "config.materialized", "source"}
)


@dataclass(frozen=True)
class ManifestNode:
    unique_id: str
    resource_type: str
    name: str
    package_name: str
    database: str | None
    schema: str | None
    identifier: str | None
    materialized: str | None
    tags: tuple[str, ...]
    fqn: tuple[str, ...]
    path: str
    depends_on: tuple[str, ...]
    source_name: str | None = None

    @property
    def is_asset(self) -> bool:
        """A warehouse object a model, seed or snapshot builds (ephemerals build nothing)."""
        kinds = ("model", "seed", "snapshot")
        return self.resource_type in kinds and self.materialized != "ephemeral"


class ManifestIndex:
    def __init__(self, nodes: Iterable[ManifestNode], adapter_type: str | None) -> None:
        self.nodes = {n.unique_id: n for n in nodes}
        self.adapter_type = adapter_type
        self.children: dict[str, list[str]] = {}
        for node in self.nodes.values():
            for parent in node.depends_on:
                self.children.setdefault(parent, []).append(node.unique_id)

    def models(self) -> list[ManifestNode]:
        return [n for n in self.nodes.values() if n.is_asset and n.resource_type == "model"]

    def select(self, select: Sequence[str] = (), exclude: Sequence[str] = ()) -> set[str] | None:
        """dbt's selection over this manifest, or None when the syntax is beyond this subset."""
        chosen = self._union(select) if select else set(self.nodes)
        if chosen is None:
            return None
        if exclude:
            excluded = self._union(exclude)
            if excluded is None:
                return None
            chosen -= excluded
        return chosen

    def _union(self, specs: Sequence[str]) -> set[str] | None:
        result: set[str] = set()
        for spec in (part for s in specs for part in s.split()):
            found = self._intersection(spec)
            if found is None:
                return None
            result |= found
        return result

    def _intersection(self, spec: str) -> set[str] | None:
        result: set[str] | None = None
        for atom in spec.split(","):
            found = self._atom(atom)
            if found is None:
                return None
            result = found if result is None else result & found
        return result or set()

    def _atom(self, atom: str) -> set[str] | None:
        match = _ATOM.match(atom)
        if not match:
            return None
        body = match["body"]
        method, _, value = body.rpartition(":") if ":" in body else ("", "", body)
        if method and method not in _METHODS:
            return None
        base = {uid for uid, node in self.nodes.items() if _matches(node, method, value)}
        result = set(base)
        if match["at"]:
            descendants = base | self._walk(base, self.children, None)
            return descendants | self._walk(descendants, self._parents(), None)
        if match["up"] is not None:
            result |= self._walk(base, self._parents(), _depth(match["up"]))
        if match["down"] is not None:
            result |= self._walk(base, self.children, _depth(match["down"]))
        return result

    def _parents(self) -> Mapping[str, Sequence[str]]:
        return {uid: node.depends_on for uid, node in self.nodes.items()}

    @staticmethod
    def _walk(start: set[str], edges: Mapping[str, Sequence[str]], depth: int | None) -> set[str]:
        seen: set[str] = set()
        frontier = set(start)
        level = 0
        while frontier and (depth is None or level < depth):
            frontier = {n for uid in frontier for n in edges.get(uid, ())} - seen - start
            seen |= frontier
            level += 1
        return seen


def _depth(text: str) -> int | None:
    return int(text) if text else None


def _matches(node: ManifestNode, method: str, value: str) -> bool:
    if method == "":
        # A bare selector is a name, a dotted fqn, or a path, as in dbt.
        return (
            fnmatch.fnmatchcase(node.name, value)
            or fnmatch.fnmatchcase(".".join(node.fqn), value)
            or _path_matches(node.path, value)
        )
    if method == "tag":
        return any(fnmatch.fnmatchcase(t, value) for t in node.tags)
    if method == "path":
        return _path_matches(node.path, value)
    if method == "package":
        return fnmatch.fnmatchcase(node.package_name, value)
    if method == "fqn":
        return fnmatch.fnmatchcase(".".join(node.fqn), value)
    if method == "resource_type":
        return node.resource_type == value
    if method == "config.materialized":
        return node.materialized == value
    if method == "source":
        if node.resource_type != "source":
            return False
        parts = value.split(".")
        names = [node.package_name, node.source_name or "", node.name][-len(parts) :]
        return all(fnmatch.fnmatchcase(n, p) for n, p in zip(names, parts, strict=True))
    return False


def _path_matches(path: str, value: str) -> bool:
    value = value.rstrip("/")
    return path == value or path.startswith(value + "/") or fnmatch.fnmatchcase(path, value)


def load_manifest(path: str | Path) -> ManifestIndex:
    """Parse ``manifest.json`` once per file version (DAG files are parsed again and again)."""
    resolved = Path(path).resolve()
    mtime = resolved.stat().st_mtime
    cached = _CACHE.get(resolved)
    if cached and cached[0] == mtime:
        return cached[1]
    data = json.loads(resolved.read_bytes())
    nodes = [_node(n) for n in data.get("nodes", {}).values()]
    nodes += [_node(s) for s in data.get("sources", {}).values()]
    index = ManifestIndex(nodes, data.get("metadata", {}).get("adapter_type"))
    _CACHE[resolved] = (mtime, index)
    return index


def _node(raw: Mapping[str, Any]) -> ManifestNode:
    config = raw.get("config") or {}
    return ManifestNode(
        unique_id=raw["unique_id"],
        resource_type=raw["resource_type"],
        name=raw["name"],
        package_name=raw.get("package_name", ""),
        database=raw.get("database"),
        schema=raw.get("schema"),
        identifier=raw.get("identifier") or raw.get("alias") or raw["name"],
        materialized=config.get("materialized"),
        tags=tuple(raw.get("tags") or config.get("tags") or ()),
        fqn=tuple(raw.get("fqn") or ()),
        path=raw.get("original_file_path") or raw.get("path") or "",
        depends_on=tuple((raw.get("depends_on") or {}).get("nodes") or ()),
        source_name=raw.get("source_name"),
    )
