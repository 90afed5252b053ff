"""The steps every state-aware run takes around its executor: plan, record, count the savings.

The session (``execution/session.py``) runs them around the local dbt worker within one
process; the dbt Cloud operator runs them around a dbt Cloud job, on either side of a
deferral. Both plan and record the same way, so a node's reasons and state entries do not
depend on where dbt ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprinter
from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult, state_updates
from airflow_provider_orchestra_dbt.decisions.planner import Plan, PlanOptions, Probe, plan
from airflow_provider_orchestra_dbt.execution.executor import RunLogger
from airflow_provider_orchestra_dbt.presentation.report import RunReport
from airflow_provider_orchestra_dbt.state import StateEntries, StateStore


def loaded_state(store: StateStore | None, log: RunLogger) -> StateEntries:
    """The entries the run plans on (none without a store)."""
    if store is None:
        return {}
    document = store.load()
    log.info("Loaded %d state entries from %s", len(document.entries), store.description)
    return document.entries


def logged_plan(
    log: RunLogger,
    graph: Graph,
    selected: Iterable[str],
    state: StateEntries,
    fingerprint: Fingerprinter,
    probe: Probe,
    options: PlanOptions,
    *,
    full_table: bool,
) -> Plan:
    """The plan, logged as a table (reused nodes folded unless ``full_table``)."""
    the_plan = plan(graph, list(selected), state, fingerprint, probe, options)
    table = RunReport(
        command=options.command, target=None, exit_code=0, graph=graph, plan=the_plan
    ).plan_table(full=full_table)
    log.info(
        "Plan (%d nodes, %d to build):\n%s",
        len(the_plan.decisions),
        len(the_plan.to_execute()),
        table,
    )
    return the_plan


def record_outcomes(
    store: StateStore | None,
    log: RunLogger,
    graph: Graph,
    the_plan: Plan,
    results: Mapping[str, NodeResult],
    state: StateEntries,
    probe: Probe,
    run_info: Mapping[str, Any] | None,
) -> int:
    """Save what the run did to the state; returns how many entries were written."""
    outcome = state_updates(graph, the_plan, results, state, probe, run_info=run_info)
    if store is None or not outcome.updates:
        return 0
    store.save(outcome.updates)
    log.info("Saved %d state entries to %s", len(outcome.updates), store.description)
    return len(outcome.updates)


def seconds_saved(the_plan: Plan, state: StateEntries) -> float:
    """dbt time the reused nodes took when they were last built."""
    saved = 0.0
    for decision in the_plan.reused():
        entry = state.get(decision.key) if decision.key else None
        if entry is not None and entry.execution_time is not None:
            saved += float(entry.execution_time)
    return saved
