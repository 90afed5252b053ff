"""From dbt's node results to state entries: what a run may record (docs/design.md §3.3).

Only nodes that finished building successfully get a new entry. A failed or skipped node keeps
its previous entry, so it stays dirty and the next run (or a task retry) rebuilds it. A node
whose error-severity test failed is recorded ``test_failed`` with a checksum no fingerprint
matches, so it is rebuilt even after another tool rewrote its entry without ``status``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.planner import Plan, Probe, failed_checksum
from airflow_provider_orchestra_dbt.state.model import (
    EntryStatus,
    StateEntries,
    StateEntry,
    format_timestamp,
)


class DbtStatus(StrEnum):
    """Every node status dbt 1.10-1.12 reports (dbt's NodeStatus), lower-cased.

    A newer dbt may report others: ``NodeResult.status`` stays a plain string.
    """

    SUCCESS = "success"
    REUSED = "reused"
    NO_OP = "no-op"
    PASS = "pass"
    WARN = "warn"
    SKIPPED = "skipped"
    ERROR = "error"
    FAIL = "fail"
    RUNTIME_ERROR = "runtime error"
    PARTIAL_SUCCESS = "partial success"


# By what a status says of the relation. Only a success rebuilt it from the inputs we
# measured; anything else keeps the old entry.
BUILT_STATUSES = frozenset({DbtStatus.SUCCESS})
# dbt ran the node and deliberately left the relation as it was: `no-op` (exposures, saved
# queries), `reused` (1.12: dbt found it up to date). Neither a build nor a failure.
KEPT_STATUSES = frozenset({DbtStatus.REUSED, DbtStatus.NO_OP})
TEST_PASSED_STATUSES = frozenset({DbtStatus.PASS, DbtStatus.WARN})
SKIPPED_STATUSES = frozenset({DbtStatus.SKIPPED})
KNOWN_STATUSES = frozenset(DbtStatus)
# A test failed unless dbt said it passed, skipped it or kept it: an unknown status from a
# newer dbt counts as a failure, so the tested node is never reused on it.
_TEST_NOT_FAILED_STATUSES = TEST_PASSED_STATUSES | SKIPPED_STATUSES | KEPT_STATUSES


@dataclass(frozen=True)
class NodeResult:
    """What dbt reported for one executed node (a ``node`` message from the worker).

    ``status`` is dbt's, lower-cased: one of ``DbtStatus`` or, from a newer dbt, another.
    """

    unique_id: str
    status: str
    execution_time: float | None = None
    finished_at: str | None = None
    message: str | None = None
    rows_affected: int | None = None
    failures: int | None = None

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> NodeResult:
        return cls(
            unique_id=message["unique_id"],
            status=str(message.get("status", "")).lower(),
            execution_time=message.get("execution_time"),
            finished_at=message.get("finished_at"),
            message=message.get("message") or None,
            rows_affected=message.get("rows_affected"),
            failures=message.get("failures"),
        )


@dataclass(frozen=True)
class Outcome:
    """What the run did to the state: new entries and which nodes failed their tests."""

    updates: StateEntries = field(default_factory=dict)
    test_failed: tuple[str, ...] = ()


def state_updates(
    graph: Graph,
    plan: Plan,
    results: Mapping[str, NodeResult],
    state: Mapping[str, StateEntry],
    probe: Probe,
    *,
    run_info: Mapping[str, Any] | None = None,
) -> Outcome:
    decisions = plan.by_id
    options = plan.options
    failed_tests_on = _nodes_with_failed_tests(graph, results)
    tests_run_on = _nodes_with_tests_run(graph, results)
    updates: StateEntries = {}
    keys: dict[str, str] = {}  # each node's key is asked for once per child, too

    def key_of(uid: str) -> str:
        key = keys.get(uid)
        if key is None:
            key = keys[uid] = options.key_for(graph[uid])
        return key

    def current(uid: str) -> StateEntry | None:
        key = key_of(uid)
        return updates.get(key) or state.get(key)

    for uid in graph.topological(
        d.unique_id for d in plan.decisions if not graph[d.unique_id].is_test
    ):
        decision = decisions[uid]
        key = key_of(uid)
        result = results.get(uid)
        previous = state.get(key)
        if decision.builds and result is not None and result.status in BUILT_STATUSES:
            assert decision.fingerprint is not None
            up = graph.upstream(uid)
            checksum = decision.fingerprint.checksum
            updates[key] = StateEntry(
                unique_id=uid,
                checksum=failed_checksum(checksum) if uid in failed_tests_on else checksum,
                checksum_parts=dict(decision.fingerprint.parts),
                last_updated=result.finished_at or format_timestamp(datetime.now(UTC)),
                sources=_consumed_sources(up.sources, probe),
                # Always written, even empty: a merge keeps fields an update lacks, and a
                # stale token could later match again and hide data the node never read.
                source_tokens=_consumed_tokens(up.sources, probe),
                upstream={
                    key_of(p): entry_p.last_updated
                    for p in up.nodes
                    if (entry_p := current(p)) is not None and entry_p.last_updated
                },
                status=_status_after_build(uid, options.command, failed_tests_on),
                execution_time=result.execution_time,
                run=dict(run_info) if run_info else None,
            )
        elif previous is not None and uid in failed_tests_on:
            updates[key] = _marked_test_failed(previous)
        elif (
            previous is not None
            and previous.status == EntryStatus.UNTESTED
            and uid in tests_run_on
            and options.command == "build"
        ):
            updates[key] = previous.with_status(EntryStatus.SUCCESS)
    # `test` plans no node of its own, and a test may check a node outside the plan: a failure
    # marks it all the same, or a later run would reuse a node whose tests fail.
    for uid in failed_tests_on - decisions.keys():
        key = key_of(uid)
        if (previous := state.get(key)) is not None:
            updates[key] = _marked_test_failed(previous)
    return Outcome(updates, tuple(sorted(failed_tests_on)))


def _marked_test_failed(entry: StateEntry) -> StateEntry:
    return entry.with_status(EntryStatus.TEST_FAILED, checksum=failed_checksum(entry.checksum))


def _status_after_build(uid: str, command: str, failed_tests_on: set[str]) -> EntryStatus:
    if uid in failed_tests_on:
        return EntryStatus.TEST_FAILED
    return EntryStatus.UNTESTED if command == "run" else EntryStatus.SUCCESS


def _consumed_sources(source_ids: Iterable[str], probe: Probe) -> dict[str, str]:
    """Record the freshness measured *before* the build: rows landing during it stay new."""
    consumed: dict[str, str] = {}
    for source_id in source_ids:
        fresh = probe.freshness.get(source_id)
        if fresh is not None and fresh.max_loaded_at is not None:
            consumed[source_id] = format_timestamp(fresh.max_loaded_at)
    return consumed


def _consumed_tokens(source_ids: Iterable[str], probe: Probe) -> dict[str, str]:
    """Change tokens of sources without loaded_at_field, also as measured before the build.

    Kept apart from ``sources``, whose values other tools (dbt-orchestra) read as timestamps.
    """
    consumed: dict[str, str] = {}
    for source_id in source_ids:
        fresh = probe.freshness.get(source_id)
        token = fresh.consumed_token if fresh is not None else None
        if token is not None:
            consumed[source_id] = token
    return consumed


def _nodes_with_failed_tests(graph: Graph, results: Mapping[str, NodeResult]) -> set[str]:
    failed: set[str] = set()
    for uid, result in results.items():
        node = graph.nodes.get(uid)
        if node is None or not node.is_test or result.status in _TEST_NOT_FAILED_STATUSES:
            continue
        if node.severity == "warn" and result.status == DbtStatus.FAIL:
            continue
        failed.update(t for t in graph.tested_nodes(uid) if graph[t].is_stateful)
    return failed


def _nodes_with_tests_run(graph: Graph, results: Mapping[str, NodeResult]) -> set[str]:
    tested: set[str] = set()
    for uid, result in results.items():
        node = graph.nodes.get(uid)
        if node is not None and node.is_test and result.status in TEST_PASSED_STATUSES:
            tested.update(graph.tested_nodes(uid))
    return tested
