"""What a node's code reads besides its inputs: the clock, the run, the project graph.

A node whose code reads the current date or time (``current_date``, ``now()``,
``run_started_at``, ``dbt_date.today()`` ...) or the invocation itself (``invocation_id``,
``selected_resources``) gives another result on another run although its code and inputs are
unchanged: it is *volatile*, and is built on every run unless its ``volatile`` option bounds
it. A node whose code reads ``graph`` sees every node of the project: its fingerprint covers
their code (decisions/fingerprint.py).

The scan is textual, over every piece of code dbt renders into the node's SQL: the raw code,
the hooks, ``sql_header`` and each macro they call, transitively (dbt records the macros hooks
call in ``depends_on.macros`` too), and the same of each ephemeral model it inlines. Comments
and SQL string literals do not count. Jinja string literals do: macros paste them into the SQL
(``dbt.dateadd('day', 1, 'current_date')``). The scan errs towards finding: a finding costs a
rebuild, a miss leaves stale data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_orchestra_dbt.decisions.graph import Graph, Node
from airflow_provider_orchestra_dbt.decisions.jinja_sql import (
    JINJA_BLOCK,
    JINJA_COMMENT,
    QUOTED_OR_COMMENT,
)

# The key of this provider's options in a node's dbt ``meta``. The worker (which imports nothing
# of this package) spells it out too; a unit test keeps the two equal.
META_NAMESPACE = "orchestra_dbt"

# meta: {orchestra_dbt: {volatile: ...}} on a model, seed or snapshot.
VOLATILE_OPTION = "volatile"
# Bounded volatility: rebuilt once per UTC calendar period -> (period name, label format).
VOLATILE_PERIODS = {"daily": ("day", "%Y-%m-%d"), "hourly": ("hour", "%Y-%m-%d %H:00")}
VOLATILE_VALUES = "true, false, daily or hourly"
CLOCK = "the current date/time"
PER_RUN = "per-run context"

# SQL functions (and the macros of dbt, dbt_utils and dbt_date that wrap them) returning the
# current date or time. Bare words are keywords in most dialects; the rest only count as calls.
_CLOCK_SQL = re.compile(
    r"\b(?:\w+\.)?(?:(?:current_(?:date|time|datetime)|localtime(?:stamp)?"
    r"|current_timestamp(?:_in_utc)?(?:_backcompat)?"  # the last two: dbt's and dbt_utils' macros
    r"|sys(?:date|timestamp|datetime|utcdatetime|datetimeoffset)|get(?:utc)?date"
    r"|(?:transaction|statement|clock)_timestamp|timeofday|get_current_time(?:stamp)?)\b"
    r"|(?:now|today|utcnow)\s*\(|unix_timestamp\s*\(\s*\))",
    re.IGNORECASE,
)
# Jinja context the result depends on: names that only mean something inside a Jinja block.
_JINJA_CLOCK = re.compile(r"\brun_started_at\b|\bmodules\s*\.\s*time\s*\.\s*time\s*\(")
_JINJA_PER_RUN = re.compile(r"\b(?:invocation_id|selected_resources)\b")
_JINJA_PROJECT = re.compile(r"(?<!\.)\bgraph\b")
# Text holding none of these (lower-cased) cannot match any pattern above. Most code holds
# none, and a substring test is ten times cheaper than lexing it.
_HINTS = (
    "current_", "localtime", "sys", "getdate", "getutcdate", "_timestamp", "timeofday",
    "now", "today", "run_started_at", "modules", "invocation_id", "selected_resources", "graph",
)  # fmt: skip


@dataclass(frozen=True)
class Reads:
    """What some code reads that its fingerprint cannot see; each field names the first find."""

    clock: str | None = None
    per_run: str | None = None
    project: str | None = None

    def __or__(self, other: Reads) -> Reads:
        return Reads(
            self.clock or other.clock,
            self.per_run or other.per_run,
            self.project or other.project,
        )

    def located(self, where: str) -> Reads:
        def at(found: str | None) -> str | None:
            return f"{found} in {where}" if found else None

        return Reads(at(self.clock), at(self.per_run), at(self.project))

    @property
    def volatile(self) -> str | None:
        """What makes the result differ from run to run, for a reason, or None."""
        if self.clock:
            return f"{CLOCK} ({self.clock})"
        if self.per_run:
            return f"{PER_RUN} ({self.per_run})"
        return None


NOTHING = Reads()


def scan(text: str) -> Reads:
    """What one piece of dbt Jinja-SQL reads (pure; the unit of memoisation is the caller's)."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return NOTHING
    text = JINJA_COMMENT.sub(" ", text)
    jinja = " ".join(JINJA_BLOCK.findall(text))
    sql = QUOTED_OR_COMMENT.sub(" ", JINJA_BLOCK.sub(" ", text))
    jinja_code = QUOTED_OR_COMMENT.sub(" ", jinja)
    clock = _CLOCK_SQL.search(sql) or _CLOCK_SQL.search(jinja) or _JINJA_CLOCK.search(jinja_code)
    per_run = _JINJA_PER_RUN.search(jinja_code)
    project = _JINJA_PROJECT.search(jinja_code)
    return Reads(_label(clock), _label(per_run), _label(project))


def _label(match: re.Match[str] | None) -> str | None:
    if match is None:
        return None
    found = re.sub(r"\s+", "", match.group().lower())
    return f"{found})" if found.endswith("(") else found


class CodeScanner:
    """``scan`` over each node's code, macro closure and ephemeral parents, every macro and
    node scanned once per run."""

    def __init__(self, graph: Graph) -> None:
        self._graph = graph
        self._nodes: dict[str, Reads] = {}
        self._macros: dict[str, Reads] = {}
        self._closures: dict[tuple[str, ...], Reads] = {}

    def __call__(self, unique_id: str) -> Reads:
        reads = self._nodes.get(unique_id)
        if reads is None:
            node = self._graph[unique_id]
            reads = NOTHING
            for where, text in _code_pieces(node):
                reads |= scan(text).located(where) if where else scan(text)
            reads |= self._closure(tuple(sorted(node.macros)))
            for parent_id in node.depends_on:  # ephemeral parents are compiled into its SQL
                parent = self._graph.nodes.get(parent_id)
                if parent is not None and parent.is_ephemeral:
                    reads |= self(parent_id).located(f"ephemeral {parent.name}")
            self._nodes[unique_id] = reads
        return reads

    def _closure(self, key: tuple[str, ...]) -> Reads:
        reads = self._closures.get(key)
        if reads is None:
            reads = NOTHING
            # The macros the node calls first: the reason then names what its code calls.
            for macro_id in (*key, *self._graph.macro_closure(key)):
                reads |= self._macro(macro_id)
            self._closures[key] = reads
        return reads

    def _macro(self, macro_id: str) -> Reads:
        reads = self._macros.get(macro_id)
        if reads is None:
            macro = self._graph.macros.get(macro_id)
            where = f"macro {macro_id.removeprefix('macro.')}"
            reads = scan(macro.sql).located(where) if macro else NOTHING
            self._macros[macro_id] = reads
        return reads


def _code_pieces(node: Node) -> Iterator[tuple[str, str]]:
    """(where, text) of the code dbt renders for the node; '' for its own SQL."""
    yield "", node.raw_code
    for hook_type in ("pre-hook", "post-hook"):
        for hook in node.config.get(hook_type) or ():
            text = hook.get("sql") if isinstance(hook, Mapping) else hook
            if isinstance(text, str):
                yield f"its {hook_type}", text
    header = node.config.get("sql_header")
    if isinstance(header, str):
        yield "its sql_header", header


@dataclass(frozen=True)
class Volatility:
    """A volatile node's standing: ``due`` says why it is built now; ``note`` why not yet."""

    due: str | None = None
    note: str | None = None


def volatility(node: Node, reads: Reads, last_built: datetime | None, now: datetime) -> Volatility:
    """Whether ``node`` must be rebuilt because time passed since ``last_built``."""
    setting, error = volatile_setting(node)
    if error:
        return Volatility(due=f"volatile: {error}; treated as volatile")
    found = reads.volatile
    if setting is False or (setting is None and found is None):
        return Volatility()
    if not isinstance(setting, str):
        if found:
            return Volatility(due=f"volatile: its SQL reads {found}")
        return Volatility(due=f"volatile: declared by meta {_FIELD}: true")
    period, fmt = VOLATILE_PERIODS[setting]
    if last_built is None:
        return Volatility(due=f"volatile {setting}: no build time recorded")
    built = last_built.astimezone(UTC).strftime(fmt)
    current = now.astimezone(UTC).strftime(fmt)
    if built != current:
        return Volatility(due=f"volatile {setting}: last built {built} (UTC), a new {period} began")
    return Volatility(note=f"volatile {setting}: already built this {period} ({current} UTC)")


_FIELD = f"{META_NAMESPACE}.{VOLATILE_OPTION}"


def volatile_setting(node: Node) -> tuple[bool | str | None, str | None]:
    """The node's ``volatile`` option (None when unset), or an error naming node and field."""
    meta: Any = node.config.get("meta") or {}
    options = meta.get(META_NAMESPACE) if isinstance(meta, Mapping) else None
    if options is None:
        return None, None
    if not isinstance(options, Mapping):
        return None, (
            f"bad meta {META_NAMESPACE} on {node.unique_id}: expected a mapping, got {options!r}"
        )
    value = options.get(VOLATILE_OPTION)
    if (
        value is None
        or isinstance(value, bool)
        or (isinstance(value, str) and value in VOLATILE_PERIODS)
    ):
        return value, None
    return None, (f"bad meta {_FIELD} on {node.unique_id}: {value!r} (expected {VOLATILE_VALUES})")
