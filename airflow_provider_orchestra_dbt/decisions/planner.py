"""Reuse or build, per node, with the reason: the rules of docs/design.md §3 as one pure function.

Nothing here runs dbt or touches a store: ``plan()`` gets the graph, the selection, the stored
state, fingerprints and what the worker measured (freshness, existing relations), and returns
a ``Plan``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprint, Fingerprinter
from airflow_provider_orchestra_dbt.decisions.graph import BuildAfter, Graph, Node
from airflow_provider_orchestra_dbt.decisions.volatility import CodeScanner, Reads, volatility
from airflow_provider_orchestra_dbt.state.model import EntryStatus, StateEntry, parse_timestamp

STATE_AWARE_COMMANDS = frozenset({"build", "run", "test"})

# The checksum of a node whose error-severity test failed starts with this, so it matches no
# fingerprint: the node is rebuilt even after another tool rewrote its entry without `status`.
TEST_FAILED_CHECKSUM = "test_failed:"

# Fields every entry we write carries. Other tools' entries lack them, and so do ours once
# dbt-orchestra has rewritten a shared file; without them a reuse decision would be a guess.
OWN_FIELDS = ("unique_id", "status", "upstream", "checksum_parts")

# The recorded statuses a stateful node may be reused on.
REUSABLE_STATUSES = frozenset({EntryStatus.SUCCESS, EntryStatus.UNTESTED})


def state_key(node: Node, key_prefix: str | None = None) -> str:
    """The key of ``node``'s entry in the state document: its relation, else its unique_id.

    With ``key_prefix`` (an integration account) the key is ``<prefix>.<relation>``.
    """
    return _prefixed(key_prefix, node.relation or node.unique_id)


def _prefixed(key_prefix: str | None, base: str) -> str:
    return f"{key_prefix}.{base}" if key_prefix else base


class Action(StrEnum):
    """What a plan does with a node."""

    BUILD = "build"
    REUSE = "reuse"


# How the worker measured a source without loaded_at_field (worker/dbt_worker.py METHOD_*).
SOURCE_METHODS = {
    "metadata": "warehouse metadata",
    "postgres_stats": "postgres table statistics",
    "duckdb_hash": "duckdb content hash",
}


@dataclass(frozen=True)
class SourceFreshness:
    """A source's measured freshness: a timestamp, a change token, or unknown (``error``)."""

    max_loaded_at: datetime | None
    error: str | None = None
    method: str | None = None
    token: str | None = None

    @property
    def method_label(self) -> str:
        return SOURCE_METHODS.get(self.method or "", self.method or "loaded_at_field")

    @property
    def consumed_token(self) -> str | None:
        """What a node that reads this source now records in its entry's ``source_tokens``."""
        return f"{self.method}:{self.token}" if self.token is not None else None


@dataclass(frozen=True)
class Probe:
    """What the worker measured in the warehouse before planning.

    ``freshness`` by source unique_id; ``relations`` lists, per ``"database.schema"``, the
    relations that exist (None when listing failed, with the error in ``relation_errors``).
    """

    freshness: Mapping[str, SourceFreshness] = field(default_factory=dict)
    # "database.schema" -> lower-cased relation names, or None when the listing failed.
    relations: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    relation_errors: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Probe:
        freshness = {
            uid: SourceFreshness(
                parse_timestamp(f["max_loaded_at"]) if f.get("max_loaded_at") else None,
                f.get("error"),
                f.get("method"),
                f.get("token"),
            )
            for uid, f in message.get("freshness", {}).items()
        }
        relations: dict[str, frozenset[str] | None] = {}
        errors: dict[str, str] = {}
        for schema, listing in message.get("relations", {}).items():
            if "names" in listing:
                relations[schema] = frozenset(listing["names"])
            else:
                relations[schema] = None
                errors[schema] = str(listing.get("error"))
        return cls(freshness, relations, errors)


@dataclass(frozen=True)
class PlanOptions:
    """How a run plans: the dbt command, reuse switches, the clock and the state-key prefix."""

    command: str = "build"
    reuse: bool = True
    full_refresh: bool = False
    now: datetime | None = None
    key_prefix: str | None = None

    def key_for(self, node: Node) -> str:
        """``node``'s state key in this run (see ``state_key``)."""
        return state_key(node, self.key_prefix)


@dataclass(frozen=True)
class Decision:
    """Build or reuse one node, and why.

    ``key`` and ``fingerprint`` are set for stateful nodes (not for tests): the state key
    its entry is under and the code fingerprint computed while planning.
    """

    unique_id: str
    resource_type: str
    action: Action
    reason: str
    key: str | None = None
    fingerprint: Fingerprint | None = None

    @property
    def builds(self) -> bool:
        return self.action is Action.BUILD


@dataclass(frozen=True)
class Plan:
    """Every selected node's decision, stateful nodes first in topological order, then tests."""

    decisions: tuple[Decision, ...]
    options: PlanOptions

    @property
    def by_id(self) -> dict[str, Decision]:
        return {d.unique_id: d for d in self.decisions}

    def to_execute(self) -> list[str]:
        return [d.unique_id for d in self.decisions if d.builds]

    def reused(self) -> list[Decision]:
        return [d for d in self.decisions if not d.builds]


def probe_targets(graph: Graph, selected: Iterable[str]) -> tuple[list[str], list[list[str]]]:
    """Sources whose freshness and schemas whose relations the planner will look at."""
    sources: dict[str, None] = {}
    schemas: dict[tuple[str, str], None] = {}
    for uid in selected:
        node = graph.nodes.get(uid)
        if node is None:
            continue
        if node.is_test:
            for tested in graph.tested_nodes(uid):
                if graph[tested].is_stateful:
                    sources.update(dict.fromkeys(graph.upstream(tested).sources))
                    schemas[(str(graph[tested].database), str(graph[tested].schema))] = None
            continue
        if not node.is_stateful:
            continue
        sources.update(dict.fromkeys(graph.upstream(uid).sources))
        schemas[(str(node.database), str(node.schema))] = None
    return sorted(sources), [list(s) for s in sorted(schemas)]


def plan(
    graph: Graph,
    selected: Iterable[str],
    state: Mapping[str, StateEntry],
    fingerprint: Callable[[str], Fingerprint],
    probe: Probe,
    options: PlanOptions,
) -> Plan:
    # What each node's code reads: the fingerprinter has scanned it already.
    reads = fingerprint.reads if isinstance(fingerprint, Fingerprinter) else CodeScanner(graph)
    return _Planner(graph, state, fingerprint, probe, options, reads).plan(selected)


class _Planner:
    def __init__(
        self,
        graph: Graph,
        state: Mapping[str, StateEntry],
        fingerprint: Callable[[str], Fingerprint],
        probe: Probe,
        options: PlanOptions,
        reads: Callable[[str], Reads],
    ) -> None:
        self.graph = graph
        self.state = state
        self.fingerprint = fingerprint
        self.probe = probe
        self.options = options
        self.reads = reads
        self.now = options.now or datetime.now().astimezone()
        self.building: set[str] = set()
        self._effective_build_after: dict[str, BuildAfter | None] = {}

    def plan(self, selected: Iterable[str]) -> Plan:
        graph = self.graph
        command = self.options.command
        selected_ids = [uid for uid in selected if uid in graph]
        stateful = [uid for uid in selected_ids if graph[uid].is_stateful]
        tests = [uid for uid in selected_ids if graph[uid].is_test]
        if command == "test":
            # Nothing is built by `dbt test`: decide the tested nodes only to know what is stale.
            stateful = sorted({t for u in tests for t in graph.tested_nodes(u)})
            stateful = [uid for uid in stateful if graph[uid].is_stateful]
        elif command == "run":
            stateful = [uid for uid in stateful if graph[uid].resource_type == "model"]
            tests = []
        decisions: dict[str, Decision] = {}
        for uid in graph.topological(stateful):
            decision = self._decide_stateful(graph[uid])
            decisions[uid] = decision
            if decision.builds:
                self.building.add(uid)
        ordered = list(decisions.values())
        if command == "test":
            ordered = []
        for uid in graph.topological(tests):
            ordered.append(self._decide_test(graph[uid], decisions))
        return Plan(tuple(ordered), self.options)

    # -- stateful nodes ----------------------------------------------------------------------

    def _decide_stateful(self, node: Node) -> Decision:
        key = self.options.key_for(node)
        fp = self.fingerprint(node.unique_id)

        def build(reason: str) -> Decision:
            return Decision(node.unique_id, node.resource_type, Action.BUILD, reason, key, fp)

        def reuse(reason: str) -> Decision:
            return Decision(node.unique_id, node.resource_type, Action.REUSE, reason, key, fp)

        if not self.options.reuse:
            return build("reuse is turned off for this run")
        if self.options.full_refresh:
            return build("full refresh requested")
        entry = self.state.get(key)
        if entry is None:
            return build(f"no state recorded for {key}")
        if tests_failed(entry):
            return build("an error-severity test failed after its last build")
        untrusted = distrust(entry, node.unique_id)
        if untrusted:
            return build(untrusted)
        status = entry.status
        if status not in REUSABLE_STATUSES:
            return build(f"its last recorded status is {str(status)!r}")
        foreign = self._foreign_build(node)
        if foreign and _built_after(foreign[1], entry):
            return build(
                f"another tool rebuilt it at {foreign[1].isoformat()} (state entry {foreign[0]}),"
                " after our last build"
            )
        if fp.unknown:
            return build(f"cannot tell whether it changed: {', '.join(fp.unknown)} not known")
        if entry.checksum != fp.checksum:
            changed = fp.changed_parts(entry.checksum_parts)
            what = ", ".join(changed) if changed else "code fingerprint differs from state"
            return build(f"code changed ({what})")
        missing = self._missing_relation(node)
        if missing:
            return build(missing)
        clock = volatility(
            node, self.reads(node.unique_id), _timestamp(entry.last_updated), self.now
        )
        if clock.due and self._build_after(node.unique_id) is None:
            return build(clock.due)

        blocked_by = self._failed_upstream(node)
        new_data = self._new_data(node, entry)
        if clock.due:  # like new data: a build_after delays it
            new_data = {node.unique_id: clock.due, **new_data}
        if not new_data:
            note = f"; {clock.note}" if clock.note else ""
            return reuse(f"up to date: code unchanged and no new upstream data{note}")
        if blocked_by:
            return reuse(
                f"new data waits: upstream {blocked_by} failed an error-severity test "
                "and is not rebuilt in this run"
            )
        build_after = self._build_after(node.unique_id)
        if build_after is not None:
            waiting = self._build_after_wait(node, entry, build_after, new_data)
            if waiting:
                return reuse(waiting)
        first, *rest = new_data.values()
        more = f" (+{len(rest)} more)" if rest else ""
        return build(first + more)

    def _missing_relation(self, node: Node) -> str | None:
        listing = self.probe.relations.get(node.schema_key)
        if node.schema_key not in self.probe.relations:
            return None
        if listing is None:
            error = self.probe.relation_errors.get(node.schema_key, "unknown error")
            return f"could not check that {node.relation} exists ({error})"
        if str(node.alias).lower() not in listing:
            return f"relation {node.relation} is missing from the warehouse"
        return None

    def _failed_upstream(self, node: Node) -> str | None:
        for parent_id in self.graph.upstream(node.unique_id).nodes:
            if parent_id in self.building:
                continue
            entry = self.state.get(self.options.key_for(self.graph[parent_id]))
            if entry is not None and tests_failed(entry):
                return self.graph[parent_id].name
        return None

    def _new_data(self, node: Node, entry: StateEntry) -> dict[str, str]:
        """Every direct parent with data this node has not consumed: parent id -> reason."""
        reasons: dict[str, str] = {}
        consumed_sources = entry.sources or {}
        consumed_tokens = entry.source_tokens or {}
        for source_id in self.graph.upstream(node.unique_id).sources:
            label = _source_label(self.graph[source_id])
            fresh = self.probe.freshness.get(source_id)
            if fresh is not None and fresh.consumed_token is not None:
                changed = _token_change(label, fresh, consumed_tokens.get(source_id))
                if changed:
                    reasons[source_id] = changed
                continue
            if fresh is None or fresh.max_loaded_at is None:
                why = fresh.error if fresh and fresh.error else "not measured"
                reasons[source_id] = f"freshness of source {label} is unknown ({why})"
                continue
            consumed = _timestamp(consumed_sources.get(source_id))
            if consumed is None:
                reasons[source_id] = f"source {label} was never consumed by this node"
            elif fresh.max_loaded_at > consumed:
                measured = f"{fresh.method_label}: modified at" if fresh.method else "loaded up to"
                reasons[source_id] = (
                    f"new data in source {label} ({measured} {fresh.max_loaded_at.isoformat()},"
                    f" consumed up to {consumed.isoformat()})"
                )
        consumed_upstream = entry.upstream or {}  # a trusted entry has it
        for parent_id in self.graph.upstream(node.unique_id).nodes:
            parent = self.graph[parent_id]
            if parent_id in self.building:
                reasons[parent_id] = f"upstream {parent.name} is being built in this run"
                continue
            foreign = self._foreign_build(parent)
            if foreign and _built_after(foreign[1], entry):
                reasons[parent_id] = (
                    f"upstream {parent.name} was rebuilt by another tool at "
                    f"{foreign[1].isoformat()} (state entry {foreign[0]}) after this node was built"
                )
                continue
            parent_key = self.options.key_for(parent)
            parent_entry = self.state.get(parent_key)
            current = _timestamp(parent_entry.last_updated) if parent_entry else None
            if current is None:
                continue
            consumed = _timestamp(consumed_upstream.get(parent_key))
            if consumed is None or current > consumed:
                reasons[parent_id] = (
                    f"upstream {parent.name} was updated at {current.isoformat()} after this node "
                    f"last consumed it"
                )
        return reasons

    def _foreign_build(self, node: Node) -> tuple[str, datetime] | None:
        """The newest build of ``node`` that dbt-orchestra recorded: (its state key, when).

        orc keys a node by its unique_id, or with an integration account by
        ``<account>.<relation_name>``. Our keys never take those forms, so a build recorded
        there is one our own entries cannot know about.
        """
        keys = {node.unique_id}
        if self.options.key_prefix:
            keys.add(_prefixed(self.options.key_prefix, node.relation_name or node.unique_id))
        keys.discard(self.options.key_for(node))
        newest: tuple[str, datetime] | None = None
        for foreign_key in sorted(keys):
            entry = self.state.get(foreign_key)
            built = _timestamp(entry.last_updated) if entry else None
            if built is not None and (newest is None or built > newest[1]):
                newest = (foreign_key, built)
        return newest

    def _build_after(self, unique_id: str) -> BuildAfter | None:
        """Own build_after, else the smallest window of its children if all of them have one."""
        if unique_id in self._effective_build_after:
            return self._effective_build_after[unique_id]
        self._effective_build_after[unique_id] = None  # guards against cycles
        node = self.graph[unique_id]
        result = node.build_after
        if result is None:
            children = self.graph.stateful_children.get(unique_id, ())
            windows = [self._build_after(c) for c in children]
            present = [w for w in windows if w is not None]
            if children and len(present) == len(windows):
                smallest = min(present, key=lambda w: w.window)
                result = BuildAfter(smallest.count, smallest.period, "any")
        self._effective_build_after[unique_id] = result
        return result

    def _build_after_wait(
        self,
        node: Node,
        entry: StateEntry,
        build_after: BuildAfter,
        new_data: Mapping[str, str],
    ) -> str | None:
        inherited = "" if node.build_after else " (inherited from its children)"
        if build_after.updates_on == "all":
            up = self.graph.upstream(node.unique_id)
            waiting_for = [p for p in (*up.nodes, *up.sources) if p not in new_data]
            if waiting_for:
                names = ", ".join(_display(self.graph[p]) for p in waiting_for)
                return f"build_after updates_on all: waiting for new data in {names}"
        last = _timestamp(entry.last_updated)
        if last is not None and self.now < last + build_after.window:
            due = (last + build_after.window).isoformat()
            first = next(iter(new_data.values()))
            return (
                f"build_after {build_after.describe()}{inherited}: last built at "
                f"{last.isoformat()}, next build due after {due}; pending: {first}"
            )
        return None

    # -- tests -------------------------------------------------------------------------------

    def _decide_test(self, test: Node, decisions: Mapping[str, Decision]) -> Decision:
        def decide(action: Action, reason: str) -> Decision:
            return Decision(test.unique_id, test.resource_type, action, reason)

        if not self.options.reuse or self.options.full_refresh:
            return decide(Action.BUILD, "reuse is off for this run")
        tested = self.graph.tested_nodes(test.unique_id)
        if not tested:
            return decide(Action.BUILD, "it tests no state-tracked node")
        for uid in tested:
            node = self.graph[uid]
            if node.resource_type == "source":
                readers = [c for c in self.graph.stateful_children.get(uid, ()) if c in decisions]
                for reader in readers:
                    if decisions[reader].builds:
                        return decide(
                            Action.BUILD,
                            f"source {_source_label(node)} is about to be consumed by "
                            f"{self.graph[reader].name}",
                        )
                continue
            decision = decisions.get(uid)
            if decision is not None and decision.builds:
                verb = "is stale" if self.options.command == "test" else "is being built"
                return decide(Action.BUILD, f"{node.name} {verb}")
            entry = self.state.get(self.options.key_for(node))
            if entry is None:
                return decide(Action.BUILD, f"{node.name} has no recorded state")
            untrusted = distrust(entry, uid)
            if untrusted:
                return decide(Action.BUILD, f"{node.name}: {untrusted}")
            status = entry.status
            if status != EntryStatus.SUCCESS:
                return decide(Action.BUILD, f"{node.name} has status {str(status)!r}")
        return decide(Action.REUSE, "every node it tests is reused and passed its tests")


def tests_failed(entry: StateEntry) -> bool:
    """Whether an error-severity test failed on the node after its last build."""
    return entry.status == EntryStatus.TEST_FAILED or entry.checksum.startswith(
        TEST_FAILED_CHECKSUM
    )


def failed_checksum(checksum: str) -> str:
    """``checksum`` made unmatchable for as long as the node's tests fail."""
    if checksum.startswith(TEST_FAILED_CHECKSUM):
        return checksum
    return TEST_FAILED_CHECKSUM + checksum


def distrust(entry: StateEntry, unique_id: str) -> str | None:
    """Why an entry cannot be the basis of a reuse decision for ``unique_id``, or None."""
    missing = [name for name in OWN_FIELDS if getattr(entry, name) is None]
    if missing:
        return (
            f"its state entry lacks our fields ({', '.join(missing)}): written or rewritten "
            "by another tool, not trusted"
        )
    if entry.unique_id != unique_id:
        return f"its state entry was recorded for {entry.unique_id}, not trusted"
    return None


def _built_after(when: datetime, entry: StateEntry) -> bool:
    """Whether ``when`` is later than the entry's build; an entry without a time: unsure, yes."""
    built = _timestamp(entry.last_updated)
    return built is None or when > built


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _token_change(label: str, fresh: SourceFreshness, consumed: Any) -> str | None:
    """Any difference from the consumed token is a change: counters may go down or reset."""
    if consumed is None:
        return f"source {label} was never consumed by this node (no {fresh.method_label} recorded)"
    if consumed != fresh.consumed_token:
        return f"source {label} changed since last consumed ({fresh.method_label})"
    return None


def _source_label(node: Node) -> str:
    return node.unique_id.split(".", 2)[-1] if node.unique_id.count(".") >= 2 else node.name


def _display(node: Node) -> str:
    return _source_label(node) if node.resource_type == "source" else node.name
