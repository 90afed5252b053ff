"""What a run did, for people (plan table, per-node lines, summary) and machines (XCom, JSON)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_orchestra_dbt.engine.graph import Graph
from airflow_provider_orchestra_dbt.engine.outcomes import (
    BUILT_STATUSES,
    KEPT_STATUSES,
    SKIPPED_STATUSES,
    NodeResult,
)
from airflow_provider_orchestra_dbt.engine.planner import Plan

# Final outcome per node, as counted in summaries.
BUILT, REUSED, FAILED, SKIPPED, NOT_RUN = "built", "reused", "failed", "skipped", "not_run"
PASSED, WARNED = "passed", "warned"

# The XCom return_value (``summary()``) stays under this many bytes of JSON, whatever the project
# size (design §7 promises under 64 KB for 5,000 nodes; the rest is headroom for serialisers).
SUMMARY_BUDGET_BYTES = 56 * 1024
# Id lists in the summary, most important first: they keep their ids first when space is short.
SUMMARY_ID_LISTS = (FAILED, SKIPPED, BUILT)
FULL_LISTS_NOTE = (
    "id lists shortened to fit the XCom budget (counts are exact); every node's outcome is "
    "in the 'orchestra_dbt_nodes' XCom (push_node_details=True) and in the state store"
)


def unmatched_message(criterion: str) -> str:
    """dbt's own words (event NoNodesForSelectionCriteria) for a criterion matching nothing."""
    return f"The selection criterion '{criterion}' does not match any enabled nodes"


def node_outcome(is_test: bool, builds: bool, result: NodeResult | None) -> str:
    if not builds:
        return REUSED
    if result is None:
        return NOT_RUN
    status = result.status
    if status in SKIPPED_STATUSES:
        return SKIPPED
    if status in KEPT_STATUSES:
        return REUSED  # by dbt itself: the relation was left as it was
    if is_test:
        return {"pass": PASSED, "warn": WARNED}.get(status, FAILED)
    return BUILT if status in BUILT_STATUSES else FAILED


@dataclass(frozen=True)
class RunReport:
    command: str
    target: str | None
    exit_code: int
    error: str | None = None
    dry_run: bool = False
    graph: Graph | None = None
    plan: Plan | None = None
    results: Mapping[str, NodeResult] = field(default_factory=dict)
    time_saved_seconds: float = 0.0
    state_updates: int = 0
    artifacts_dir: str | None = None
    run_info: Mapping[str, Any] = field(default_factory=dict)
    invocation_id: str | None = None
    # --select/--exclude criteria (and ``selector:<name>``) that matched no enabled node.
    unmatched_selection: tuple[str, ...] = ()

    @property
    def success(self) -> bool:
        return self.exit_code == 0

    def outcomes(self) -> dict[str, str]:
        if self.plan is None or self.graph is None:
            return {uid: r.status for uid, r in self.results.items()}
        return {
            d.unique_id: node_outcome(
                self.graph[d.unique_id].is_test, d.builds, self.results.get(d.unique_id)
            )
            for d in self.plan.decisions
        }

    def counts(self) -> dict[str, int]:
        outcomes = self.outcomes()
        counts: Counter[str] = Counter()
        for uid, outcome in outcomes.items():
            is_test = self.graph is not None and uid in self.graph and self.graph[uid].is_test
            counts[f"tests_{outcome}" if is_test else outcome] += 1
        keys = (BUILT, REUSED, FAILED, SKIPPED, NOT_RUN)
        test_keys = (PASSED, WARNED, FAILED, SKIPPED, REUSED, NOT_RUN)
        return {k: counts.get(k, 0) for k in keys} | {
            f"tests_{k}": counts.get(f"tests_{k}", 0) for k in test_keys
        }

    def ids_with(self, *outcomes: str) -> list[str]:
        return sorted(uid for uid, o in self.outcomes().items() if o in outcomes)

    # -- machine-readable ----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Small whatever ran: the XCom return_value.

        Reused nodes are only counted, and the id lists are cut to fit ``SUMMARY_BUDGET_BYTES``,
        failed ids kept first. When ids were left out, ``truncated`` says how many per list and
        ``full_lists`` where to find them; the counts are always exact.
        """
        full = self._summary_with_full_lists()
        if _json_size(full) <= SUMMARY_BUDGET_BYTES:
            return full
        bounded = full | {name: [] for name in SUMMARY_ID_LISTS}
        bounded["truncated"] = {name: len(full[name]) for name in SUMMARY_ID_LISTS}
        bounded["full_lists"] = FULL_LISTS_NOTE
        room = SUMMARY_BUDGET_BYTES - _json_size(bounded)
        for name in SUMMARY_ID_LISTS:
            kept: list[str] = []
            for uid in full[name]:
                cost = _json_size(uid) + 2  # the id and its ", " separator
                if cost > room:
                    room = 0  # a list cut short: the less important ones get nothing
                    break
                kept.append(uid)
                room -= cost
            bounded[name] = kept
            # At most as many digits as the count measured in `room`: still within budget.
            bounded["truncated"][name] = len(full[name]) - len(kept)
        return bounded

    def _summary_with_full_lists(self) -> dict[str, Any]:
        outcomes = self.outcomes()
        tests = {uid for uid in outcomes if self.graph is not None and self.graph[uid].is_test}
        return {
            "command": self.command,
            "target": self.target,
            "success": self.success,
            "exit_code": self.exit_code,
            "error": self.error,
            "dry_run": self.dry_run,
            "counts": self.counts(),
            BUILT: sorted(u for u, o in outcomes.items() if o == BUILT and u not in tests),
            FAILED: sorted(u for u, o in outcomes.items() if o == FAILED),
            SKIPPED: sorted(u for u, o in outcomes.items() if o == SKIPPED),
            "time_saved_seconds": round(self.time_saved_seconds, 3),
            "state_updates": self.state_updates,
            "run": dict(self.run_info),
            "invocation_id": self.invocation_id,
            "unmatched_selection": list(self.unmatched_selection),
        }

    def node_details(self) -> list[dict[str, Any]]:
        if self.plan is None:
            return []
        outcomes = self.outcomes()
        details = []
        for d in self.plan.decisions:
            result = self.results.get(d.unique_id)
            details.append(
                {
                    "unique_id": d.unique_id,
                    "resource_type": d.resource_type,
                    "decision": d.action.value,
                    "reason": d.reason,
                    "outcome": outcomes[d.unique_id],
                    "status": result.status if result else None,
                    "execution_time": result.execution_time if result else None,
                    "rows_affected": result.rows_affected if result else None,
                    "message": result.message if result else None,
                    "key": d.key,
                }
            )
        return details

    def to_json(self) -> dict[str, Any]:
        """The CLI's --report: every node's decision and reason, plus the full outcome lists."""
        return self._summary_with_full_lists() | {
            "reused": self.ids_with(REUSED),
            "nodes": self.node_details(),
        }

    # -- human-readable ------------------------------------------------------------------------

    def plan_table(self) -> str:
        if self.plan is None or not self.plan.decisions:
            return "plan: nothing selected"
        rows = [(d.unique_id, d.action.value, d.reason) for d in self.plan.decisions]
        width = min(max(len(r[0]) for r in rows), 70)
        lines = [f"{'node':<{width}}  {'decision':<8}  reason", "-" * (width + 30)]
        lines += [f"{uid:<{width}}  {action:<8}  {reason}" for uid, action, reason in rows]
        return "\n".join(lines)

    def summary_line(self) -> str:
        c = self.counts()
        tests = (
            f"tests passed={c['tests_passed']} warned={c['tests_warned']} "
            f"failed={c['tests_failed']} reused={c['tests_reused']}"
        )
        unmatched = ", ".join(f"'{c}'" for c in self.unmatched_selection)
        return (
            f"dbt {self.command}: built={c[BUILT]} reused={c[REUSED]} failed={c[FAILED]} "
            f"skipped={c[SKIPPED]} not_run={c[NOT_RUN]}; {tests}; "
            f"estimated warehouse time saved by reuse: {self.time_saved_seconds:.1f}s"
            + (f"; selection criteria matching no enabled node: {unmatched}" if unmatched else "")
        )


def _json_size(value: Any) -> int:
    return len(json.dumps(value).encode("utf-8"))


def finished_node_line(event: Mapping[str, Any]) -> str:
    status = str(event.get("status", "?")).upper()
    elapsed = event.get("execution_time")
    timing = f" in {elapsed:.2f}s" if isinstance(elapsed, (int, float)) else ""
    rows = event.get("rows_affected")
    rows_text = f", {rows} rows" if isinstance(rows, int) and rows >= 0 else ""
    message = event.get("message")
    tail = f": {message}" if message and status not in ("SUCCESS", "PASS") else ""
    return f"{status:<8} {event.get('unique_id')}{timing}{rows_text}{tail}"
