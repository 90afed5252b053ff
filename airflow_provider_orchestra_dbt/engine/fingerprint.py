"""Code fingerprints: a node is 'unchanged' only if everything that shapes its SQL is unchanged.

A fingerprint covers the node's code (whitespace- and comment-insensitive), its config, every
macro it calls (transitively), the values of the vars and env vars its code or macros read,
the code of ephemeral models it inlines, and for seeds the CSV's bytes. It is stored as
``checksum`` with a digest per part in ``checksum_parts`` so a rebuild can say what changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_orchestra_dbt.engine.graph import Graph, Node

_VAR_CALL = re.compile(r"\bvar\(\s*['\"]([^'\"]+)['\"]")
_ENV_VAR_CALL = re.compile(r"\benv_var\(\s*['\"]([^'\"]+)['\"]")
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_UNSET = "<unset>"


@dataclass(frozen=True)
class Fingerprint:
    checksum: str
    parts: Mapping[str, str]

    def changed_parts(self, recorded: Mapping[str, Any] | None) -> list[str]:
        if not recorded:
            return []
        return [name for name, digest in self.parts.items() if recorded.get(name) != digest]


def _digest(value: Any) -> str:
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def normalize_sql(text: str) -> str:
    """Drop comments and collapse whitespace outside quoted strings.

    Quoted text is kept verbatim, so an edit inside a string literal always counts.
    """
    text = _JINJA_COMMENT.sub(" ", text)
    out: list[str] = []
    i, n = 0, len(text)
    pending_space = False
    while i < n:
        ch = text[i]
        if ch in "'\"`":
            end = i + 1
            while end < n and text[end] != ch:
                end += 2 if text[end] == "\\" else 1
            if pending_space and out:
                out.append(" ")
            pending_space = False
            out.append(text[i : end + 1])
            i = end + 1
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline == -1 else newline
            pending_space = True
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = n if close == -1 else close + 2
            pending_space = True
        elif ch.isspace():
            pending_space = True
            i += 1
        else:
            if pending_space and out:
                out.append(" ")
            pending_space = False
            out.append(ch)
            i += 1
    return "".join(out)


def names_read(text: str) -> tuple[set[str], set[str]]:
    """The var and env_var names a piece of Jinja/SQL reads by literal name."""
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
        env: Mapping[str, str],
    ) -> None:
        self._graph = graph
        self._cli_vars = cli_vars
        self._env = env
        self._cache: dict[str, Fingerprint] = {}
        self._macro_text: dict[str, str] = {}

    def __call__(self, unique_id: str) -> Fingerprint:
        cached = self._cache.get(unique_id)
        if cached is None:
            cached = self._compute(self._graph[unique_id])
            self._cache[unique_id] = cached
        return cached

    def _compute(self, node: Node) -> Fingerprint:
        graph = self._graph
        macro_ids = graph.macro_closure(node.macros)
        texts = [node.raw_code] + [self._macro_sql(m) for m in macro_ids]
        var_names: set[str] = set()
        env_names: set[str] = set()
        for text in texts:
            v, e = names_read(text)
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
        if node.resource_type == "seed":
            code["file"] = node.file_hash
        config = {k: v for k, v in node.config.items() if k not in _CONFIG_IGNORED}
        parts = {
            "code": _digest(code),
            "config": _digest(config),
            "macros": _digest({m: _digest(self._macro_sql(m)) for m in macro_ids}),
            "vars": _digest(
                {
                    name: resolve_var(name, node.package_name, self._cli_vars, graph.project_vars)
                    for name in sorted(var_names)
                }
            ),
            "env_vars": _digest({name: self._env.get(name, _UNSET) for name in sorted(env_names)}),
        }
        return Fingerprint(checksum=_digest(parts), parts=parts)

    def _macro_sql(self, macro_id: str) -> str:
        text = self._macro_text.get(macro_id)
        if text is None:
            macro = self._graph.macros.get(macro_id)
            text = normalize_sql(macro.sql) if macro else ""
            self._macro_text[macro_id] = text
        return text


# Config keys that describe the node to people and schedulers, not what lands in the warehouse.
_CONFIG_IGNORED = frozenset({"meta", "docs", "tags", "group", "freshness", "access"})
