"""Each model's current state for the reuse view: a pure join of a run's node details and state.

The latest run's ``orchestra_dbt_nodes`` XCom says what was decided and why; the state store
says when each node was last built, the source data it consumed and whether its tests passed.
From the two, a line on what the next run will do with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_orchestra_dbt.decisions.planner import REUSABLE_STATUSES, tests_failed
from airflow_provider_orchestra_dbt.state.model import StateEntry

STATEFUL_TYPES = ("model", "seed", "snapshot")
SOURCES_SHOWN = 3


@dataclass(frozen=True)
class ModelState:
    """One row of the task page: a node's last decision and outcome, its state, what is next."""

    unique_id: str
    resource_type: str
    decision: str
    outcome: str
    reason: str
    last_built: str | None
    consumed: str
    status: str | None
    next_run: str


def _consumed(entry: StateEntry | None) -> str:
    """The source data the last build read: ``source (up to <time>)``, a few then a count."""
    if entry is None:
        return ""
    sources = entry.sources
    if not sources:
        return "no sources upstream"
    shown = [
        f"{uid.split('.', 2)[-1]} (up to {when})" if when else f"{uid.split('.', 2)[-1]}"
        for uid, when in sorted(sources.items())[:SOURCES_SHOWN]
    ]
    more = len(sources) - len(shown)
    return ", ".join(shown) + (f" +{more} more" if more > 0 else "")


def next_run(entry: StateEntry | None, detail: Mapping[str, Any]) -> str:
    """What the next run will do with this node, as far as state alone can tell."""
    if entry is None:
        return "builds: no state recorded for it"
    if tests_failed(entry):
        return "builds: an error-severity test failed after its last build"
    if entry.status not in REUSABLE_STATUSES:
        status = None if entry.status is None else str(entry.status)
        return f"builds: its last recorded status is {status!r}"
    reason = str(detail.get("reason") or "")
    if detail.get("decision") == "reuse" and reason.startswith("build_after"):
        return f"waits: {reason}"
    if detail.get("outcome") in ("failed", "skipped", "not_run"):
        return f"builds: it {detail['outcome'].replace('_', ' ')} in the last run"
    return "reused unless its code changes or new data arrives upstream"


def model_states(
    node_details: Sequence[Mapping[str, Any]], entries: Mapping[str, StateEntry]
) -> list[ModelState]:
    """One row per model, seed and snapshot of the last run, in its order."""
    rows = []
    for detail in node_details:
        if detail.get("resource_type") not in STATEFUL_TYPES:
            continue
        key = detail.get("key")
        entry = entries.get(key) if isinstance(key, str) else None
        rows.append(
            ModelState(
                unique_id=str(detail.get("unique_id")),
                resource_type=str(detail.get("resource_type")),
                decision=str(detail.get("decision") or ""),
                outcome=str(detail.get("outcome") or ""),
                reason=str(detail.get("reason") or ""),
                last_built=str(entry.last_updated) if entry is not None else None,
                consumed=_consumed(entry),
                status=str(entry.status) if entry is not None and entry.status else None,
                next_run=next_run(entry, detail),
            )
        )
    return rows
