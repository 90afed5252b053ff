"""What a run did, for people (plan table, per-node lines, summary) and machines (XCom, JSON)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import (
    BUILT_STATUSES,
    KEPT_STATUSES,
    SKIPPED_STATUSES,
    DbtStatus,
    NodeResult,
)
from airflow_provider_orchestra_dbt.decisions.planner import Action, Decision, Plan
from airflow_provider_orchestra_dbt.state.model import StateEntry

# Final outcome per node, as counted in summaries.
BUILT, REUSED, FAILED, SKIPPED, NOT_RUN = "built", "reused", "failed", "skipped", "not_run"
PASSED, WARNED = "passed", "warned"

# The XCom return_value (``summary()``) stays under this many bytes of JSON, whatever the project
# size (docs/design.md §7 promises under 64 KB for 5,000 nodes; the rest is for serialisers).
SUMMARY_BUDGET_BYTES = 56 * 1024
# Id lists in the summary, most important first: they keep their ids first when space is short.
SUMMARY_ID_LISTS = (FAILED, SKIPPED, BUILT)
# Node names longer than this are shortened in the plan table so its columns stay aligned;
# the report and the XCom node details keep them whole.
PLAN_NODE_WIDTH = 64
# Set (to 1) for the task or the CLI to list every reused node in the plan table.
FULL_PLAN_ENV = "ORCHESTRA_DBT_FULL_PLAN"
_TYPE_ORDER = {kind: i for i, kind in enumerate(("model", "seed", "snapshot", "test", "unit_test"))}
FULL_LISTS_NOTE = (
    "id lists shortened to fit the XCom budget (counts are exact); every node's outcome is "
    "in the 'orchestra_dbt_nodes' XCom (push_node_details=True) and in the state store"
)


def unmatched_message(criterion: str) -> str:
    """dbt's own words (event NoNodesForSelectionCriteria) for a criterion matching nothing."""
    return f"The selection criterion '{criterion}' does not match any enabled nodes"


_TEST_OUTCOMES: dict[str, str] = {DbtStatus.PASS: PASSED, DbtStatus.WARN: WARNED}


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
        return _TEST_OUTCOMES.get(status, FAILED)
    return BUILT if status in BUILT_STATUSES else FAILED


@dataclass(frozen=True)
class RunReport:
    """What one run did: its plan and dbt's results, rendered for logs, XCom and the picture.

    ``graph`` and ``plan`` are None for a run that is not state-aware (or failed before
    planning); ``state_updates`` counts the entries saved, ``time_saved_seconds`` the recorded
    execution time of the nodes reused.
    """

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

    def plan_table(self, full: bool = False) -> str:
        """Nodes to build one per line; reused nodes counted per reason unless ``full``."""
        if self.plan is None or not self.plan.decisions:
            return "plan: nothing selected"
        rows = plan_rows(self.plan.decisions, full=full)
        lines = table_lines(rows)
        if len(rows) < len(self.plan.decisions):
            lines.append(f"(reused nodes counted per reason; {FULL_PLAN_ENV}=1 lists each one)")
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


# -- the plan table ----------------------------------------------------------------------------


def plan_rows(decisions: Sequence[Decision], *, full: bool = False) -> list[tuple[str, str, str]]:
    """(node, decision, reason) rows: builds one each; reuses one per reason unless ``full``.

    A reuse reason shared by several nodes becomes one row counting them by resource type, so
    a run that reuses most of a project does not list every test again. A reason only one
    node has keeps that node's name.
    """
    rows = [(d.unique_id, d.action.value, d.reason) for d in decisions if d.builds]
    reused = [d for d in decisions if not d.builds]
    if full:
        return rows + [(d.unique_id, d.action.value, d.reason) for d in reused]
    by_reason: dict[str, list[Decision]] = {}
    for decision in reused:
        by_reason.setdefault(decision.reason, []).append(decision)
    for reason, group in by_reason.items():
        name = group[0].unique_id if len(group) == 1 else count_by_type(group)
        rows.append((name, Action.REUSE.value, reason))
    return rows


def count_by_type(decisions: Sequence[Decision]) -> str:
    """``14 models, 1 seed, 49 tests``: how many of each resource type, in a stable order."""
    counts = Counter(d.resource_type for d in decisions)
    kinds = sorted(counts, key=lambda t: (_TYPE_ORDER.get(t, len(_TYPE_ORDER)), t))
    return ", ".join(_plural(counts[kind], kind.replace("_", " ")) for kind in kinds)


def table_lines(rows: Sequence[tuple[str, str, str]]) -> list[str]:
    """Header, rule and rows, the node column at most ``PLAN_NODE_WIDTH`` wide."""
    width = min(max(len(row[0]) for row in rows), PLAN_NODE_WIDTH) if rows else len("node")
    lines = [f"{'node':<{width}}  {'decision':<8}  reason", "-" * (width + 30)]
    lines += [
        f"{shorten_middle(node, width):<{width}}  {action:<8}  {reason}"
        for node, action, reason in rows
    ]
    return lines


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` in its middle: the resource type and the test hash survive."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head) :]}"


def wants_full_plan(env: Mapping[str, str]) -> bool:
    return env.get(FULL_PLAN_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- per-node lines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeProgress:
    """A finished node's place among the nodes to execute, and the estimated time left."""

    index: int
    total: int
    seconds_left: float | None = None

    def text(self) -> str:
        return f"[{self.index:>{len(str(self.total))}}/{self.total}]"

    def left_text(self) -> str:
        if self.seconds_left is None or self.index >= self.total:
            return ""  # the last node: nothing left to estimate
        left = duration_text(self.seconds_left)
        return f" ({left} left)" if left.startswith("<") else f" (~{left} left)"


@dataclass
class ExecutionProgress:
    """Counts finished nodes and estimates the time left from recorded execution times.

    The time left is the sum of the last recorded execution times of the nodes still to run
    (a node without one counts as the average of those with one; with none recorded at all,
    as the average of this run's finished nodes), divided by how many nodes dbt has run at
    once so far: recorded times are per node, and dbt runs up to ``threads`` side by side.
    Clock readings are passed in, so the arithmetic stays testable.
    """

    pending: set[str]
    recorded: dict[str, float]
    total: int
    finished: int = 0
    busy_seconds: float = 0.0
    started_at: float | None = None

    @classmethod
    def start(cls, node_ids: Sequence[str], recorded: Mapping[str, float]) -> ExecutionProgress:
        known = {uid: recorded[uid] for uid in node_ids if uid in recorded}
        return cls(pending=set(node_ids), recorded=known, total=len(node_ids))

    def node_started(self, now: float) -> None:
        if self.started_at is None:
            self.started_at = now

    def node_finished(self, unique_id: str, execution_time: Any, now: float) -> NodeProgress:
        self.finished += 1
        self.pending.discard(unique_id)
        if isinstance(execution_time, (int, float)) and execution_time > 0:
            self.busy_seconds += float(execution_time)
        elapsed = now - self.started_at if self.started_at is not None else 0.0
        return NodeProgress(self.finished, self.total, self.seconds_left(elapsed))

    def seconds_left(self, elapsed: float) -> float | None:
        if not self.pending:
            return 0.0
        if self.recorded:
            average = sum(self.recorded.values()) / len(self.recorded)
        elif self.finished and self.busy_seconds:
            average = self.busy_seconds / self.finished
        else:
            return None
        serial = sum(self.recorded.get(uid, average) for uid in self.pending)
        at_once = self.busy_seconds / elapsed if elapsed > 0 else 1.0
        # No more than the nodes finished so far ran at once; a higher figure only means the
        # start event came late.
        return serial / min(max(at_once, 1.0), max(self.finished, 1))


def recorded_execution_times(
    decisions: Sequence[Decision], state: Mapping[str, StateEntry]
) -> dict[str, float]:
    """Each decided node's execution time as last recorded in the state, where there is one."""
    times: dict[str, float] = {}
    for decision in decisions:
        entry = state.get(decision.key) if decision.key else None
        seconds = entry.execution_time if entry is not None else None
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
            times[decision.unique_id] = float(seconds)
    return times


def duration_text(seconds: float) -> str:
    """``<1s``, ``45s``, ``3m05s``, ``2h07m``."""
    whole = round(seconds)
    if whole < 1:
        return "<1s"
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def finished_node_line(result: NodeResult, progress: NodeProgress | None = None) -> str:
    """``[12/64] SUCCESS  model.x in 0.23s, 60 rows (~4s left)``; a message after failures."""
    status = str(result.status or "?").upper()
    elapsed = result.execution_time
    timing = f" in {elapsed:.2f}s" if isinstance(elapsed, (int, float)) else ""
    rows = result.rows_affected
    rows_text = f", {rows} rows" if isinstance(rows, int) and rows >= 0 else ""
    left = progress.left_text() if progress is not None else ""
    message = result.message
    tail = f": {message}" if message and status not in ("SUCCESS", "PASS") else ""
    counter = f"{progress.text()} " if progress is not None else ""
    return f"{counter}{status:<8} {result.unique_id}{timing}{rows_text}{left}{tail}"
