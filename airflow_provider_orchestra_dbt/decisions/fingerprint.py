"""Code fingerprints: a node is 'unchanged' only if everything that shapes its SQL is unchanged.

A fingerprint covers the node's code (whitespace- and comment-insensitive), its config, every
macro it calls (transitively), the values of the vars and env vars its code or macros read,
the code of ephemeral models it inlines, and for seeds the CSV's bytes. A node whose code reads
dbt's ``graph`` sees every node of the project, so its fingerprint covers all of their code
(the ``graph`` part). It is stored as
``checksum`` with a digest per part in ``checksum_parts`` so a rebuild can say what changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_orchestra_dbt.decisions.graph import Graph, Node
from airflow_provider_orchestra_dbt.decisions.jinja_sql import (
    JINJA_COMMENT,
    QUOTED_OR_COMMENT,
    QUOTES,
)
from airflow_provider_orchestra_dbt.decisions.volatility import CodeScanner

_VAR_CALL = re.compile(r"\bvar\(\s*['\"]([^'\"]+)['\"]")
_ENV_VAR_CALL = re.compile(r"\benv_var\(\s*['\"]([^'\"]+)['\"]")
_UNSET = "<unset>"
GRAPH_PART = "graph"
# How a part is named in a rebuild's reason, where its key alone would not say enough.
_PART_LABELS = {GRAPH_PART: "project graph"}


@dataclass(frozen=True)
class Fingerprint:
    checksum: str
    parts: Mapping[str, str]
    unknown: tuple[str, ...] = ()
    """Inputs of the node's SQL this run cannot see (e.g. ``var 'x'`` where the project's var
    values are unknown, a seed file's content): the checksum cannot vouch for them."""

    def changed_parts(self, recorded: Mapping[str, Any] | None) -> list[str]:
        if not recorded:
            return []
        return [
            _PART_LABELS.get(name, name)
            for name, digest in self.parts.items()
            if recorded.get(name) != digest
        ]


def _digest(value: Any) -> str:
    if not value and isinstance(value, dict):
        return _EMPTY_DICT_DIGEST  # most nodes read no vars or env vars
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


_EMPTY_DICT_DIGEST = hashlib.sha256(b"{}").hexdigest()
# A private-use character: never whitespace, and next to never in SQL (skipped if it is).
_PARKED = "\ue000"


def normalize_sql(text: str) -> str:
    """Drop comments and collapse whitespace outside quoted strings.

    Quoted text is kept verbatim, so an edit inside a string literal always counts.
    """
    text = JINJA_COMMENT.sub(" ", text)
    # Park quoted text behind a marker that is not whitespace, so one C-speed split/join
    # collapses the whitespace of all the code at once; then put the quoted text back.
    marker = _PARKED
    while marker in text:
        marker = chr(ord(marker) + 1)
    quoted: list[str] = []

    def park(match: re.Match[str]) -> str:
        found = match.group()
        if found[0] not in QUOTES:
            return " "  # a comment separates like whitespace
        quoted.append(found)
        return marker

    code = " ".join(QUOTED_OR_COMMENT.sub(park, text).split())
    if not quoted:
        return code
    pieces = code.split(marker)
    out = [pieces[0]]
    for literal, after in zip(quoted, pieces[1:], strict=True):
        out += (literal, after)
    return "".join(out)


def names_read(text: str) -> tuple[set[str], set[str]]:
    """The var and env_var names a piece of Jinja/SQL reads by literal name."""
    if "var(" not in text:  # most models read none; skip both scans
        return set(), set()
    return set(_VAR_CALL.findall(text)), set(_ENV_VAR_CALL.findall(text))


def resolve_var(
    name: str, package: str, cli_vars: Mapping[str, Any], project_vars: Mapping[str, Any]
) -> Any:
    """dbt's precedence: --vars, then the node's package scope, then project-global vars."""
    if name in cli_vars:
        return cli_vars[name]
    scoped = project_vars.get(package)
    if isinstance(scoped, Mapping) and name in scoped:
        return scoped[name]
    if name in project_vars and not isinstance(project_vars[name], Mapping):
        return project_vars[name]
    return _UNSET


class Fingerprinter:
    """Computes fingerprints for one run (memoised: ephemeral parents are shared)."""

    def __init__(
        self,
        graph: Graph,
        *,
        cli_vars: Mapping[str, Any],
        env: Mapping[str, str] | None,
    ) -> None:
        """``env`` is None where dbt runs in an environment this process cannot see."""
        self._graph = graph
        # What each node's code reads: the planner asks too, so it is public (one scan a run).
        self.reads = CodeScanner(graph)
        self._project_digest: str | None = None
        self._cli_vars = cli_vars
        self._env = env
        self._cache: dict[str, Fingerprint] = {}
        self._macro_text: dict[str, str] = {}
        self._macro_digest: dict[str, str] = {}
        self._macro_names: dict[str, tuple[set[str], set[str]]] = {}
        self._closure: dict[tuple[str, ...], list[str]] = {}
        self._closure_digest: dict[tuple[str, ...], str] = {}

    def __call__(self, unique_id: str) -> Fingerprint:
        cached = self._cache.get(unique_id)
        if cached is None:
            cached = self._compute(self._graph[unique_id])
            self._cache[unique_id] = cached
        return cached

    def _compute(self, node: Node) -> Fingerprint:
        graph = self._graph
        closure_key = tuple(sorted(node.macros))
        macro_ids = self._macro_closure(closure_key)
        var_names, env_names = names_read(node.raw_code)
        for macro_id in macro_ids:
            v, e = self._names_in_macro(macro_id)
            var_names |= v
            env_names |= e
        code: dict[str, Any] = {
            "sql": normalize_sql(node.raw_code),
            "depends_on": sorted(node.depends_on),
            # Ephemeral parents are compiled into this node's SQL.
            "ephemeral": {
                p: self(p).checksum
                for p in sorted(node.depends_on)
                if p in graph and graph[p].is_ephemeral
            },
        }
        unknown: list[str] = []
        if node.resource_type == "seed":
            code["file"] = node.file_hash
            if node.file_hash is None:
                unknown.append("the seed file's content")
        if graph.project_vars is None:
            unknown += [f"var {name!r}" for name in sorted(var_names) if name not in self._cli_vars]
        env = self._env
        if env is None:
            unknown += [f"env var {name!r}" for name in sorted(env_names)]
            env = {}
        config = {k: v for k, v in node.config.items() if k not in _CONFIG_IGNORED}
        parts = {
            "code": _digest(code),
            "config": _digest(config),
            "macros": self._macros_digest(closure_key),
            "vars": _digest(
                {
                    name: resolve_var(
                        name, node.package_name, self._cli_vars, graph.project_vars or {}
                    )
                    for name in sorted(var_names)
                }
            ),
            "env_vars": _digest({name: env.get(name, _UNSET) for name in sorted(env_names)}),
        }
        if self.reads(node.unique_id).project:
            parts[GRAPH_PART] = self._project()
        return Fingerprint(checksum=_digest(parts), parts=parts, unknown=tuple(unknown))

    def _project(self) -> str:
        """What ``graph`` shows of every node that decides a reader's result, once per run.

        Raw code, not normalised: a reader may count its lines or characters. Adding or
        removing a node changes it too.
        """
        if self._project_digest is None:
            digest = hashlib.sha256()
            for uid in sorted(self._graph.nodes):
                n = self._graph.nodes[uid]
                # repr is stable: the worker sends configs with sorted keys (json, sort_keys).
                seen = (uid, n.raw_code, n.config, n.depends_on, n.file_hash, n.relation)
                digest.update(repr(seen).encode("utf-8"))
            self._project_digest = digest.hexdigest()
        return self._project_digest

    # Macros are shared by many nodes: work on each is done once per run.

    def _macro_closure(self, key: tuple[str, ...]) -> list[str]:
        if key not in self._closure:
            self._closure[key] = self._graph.macro_closure(key)
        return self._closure[key]

    def _macros_digest(self, key: tuple[str, ...]) -> str:
        if key not in self._closure_digest:
            self._closure_digest[key] = _digest(
                {m: self._macro_sql_digest(m) for m in self._macro_closure(key)}
            )
        return self._closure_digest[key]

    def _macro_sql_digest(self, macro_id: str) -> str:
        if macro_id not in self._macro_digest:
            self._macro_digest[macro_id] = _digest(self._macro_sql(macro_id))
        return self._macro_digest[macro_id]

    def _names_in_macro(self, macro_id: str) -> tuple[set[str], set[str]]:
        if macro_id not in self._macro_names:
            self._macro_names[macro_id] = names_read(self._macro_sql(macro_id))
        return self._macro_names[macro_id]

    def _macro_sql(self, macro_id: str) -> str:
        text = self._macro_text.get(macro_id)
        if text is None:
            macro = self._graph.macros.get(macro_id)
            text = normalize_sql(macro.sql) if macro else ""
            self._macro_text[macro_id] = text
        return text


# Config keys that describe the node to people and schedulers, not what lands in the warehouse.
_CONFIG_IGNORED = frozenset({"meta", "docs", "tags", "group", "freshness", "access"})
