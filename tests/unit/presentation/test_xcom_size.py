"""XCom size for 5,000 nodes (docs/design.md §7): the summary stays under 64 KB whatever ran.

The project is synthetic but shaped like a real one: 100 sources, 4,000 models in four layers
with dbt-style unique_ids, and 900 tests (single-column tests and long relationships tests).
Plans come from the real planner; results are made up per scenario, with failures propagating
to skipped descendants as dbt does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprint
from airflow_provider_orchestra_dbt.decisions.graph import Graph, Node
from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import (
    Plan,
    PlanOptions,
    Probe,
    SourceFreshness,
    plan,
)
from airflow_provider_orchestra_dbt.presentation.report import (
    FULL_LISTS_NOTE,
    SUMMARY_BUDGET_BYTES,
    RunReport,
)
from airflow_provider_orchestra_dbt.state.model import StateEntries, StateEntry

XCOM_LIMIT = 64 * 1024
PROJECT = "big_project"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BUILT_AT = NOW - timedelta(days=1)
LOADED = NOW - timedelta(days=2)
ENTITIES = (
    "customer_orders", "payment_transactions", "subscription_events", "inventory_movements",
    "marketing_attribution", "support_tickets", "shipment_tracking", "product_catalog",
    "web_sessions", "invoice_line_items",
)  # fmt: skip
SYSTEMS = ("erp", "crm", "billing", "web_analytics", "warehouse_ops")
# (layer prefix, schema, materialization, how many, parents per model)
LAYERS = (
    ("stg", "staging", "view", 1000, 1),
    ("int", "intermediate", "table", 1500, 2),
    ("fct", "marts", "incremental", 1000, 2),
    ("mart", "reporting", "table", 500, 3),
)


def _hash10(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@cache
def big_graph() -> Graph:
    nodes: list[Node] = []
    sources = []
    for i in range(100):
        system, entity = SYSTEMS[i % len(SYSTEMS)], ENTITIES[i % len(ENTITIES)]
        name = f"{entity}_{i:04d}"
        uid = f"source.{PROJECT}.raw_{system}.{name}"
        nodes.append(Node(uid, "source", name, PROJECT, "analytics", f"raw_{system}", name))
        sources.append(uid)
    parents = sources
    models: list[Node] = []
    for prefix, schema, materialized, count, fan_in in LAYERS:
        layer = []
        for j in range(count):
            name = f"{prefix}_{ENTITIES[j % len(ENTITIES)]}_{j:04d}"
            picks = (parents[(j * (k + 1) * 7 + k) % len(parents)] for k in range(fan_in))
            deps = tuple(dict.fromkeys(picks))
            node = Node(
                f"model.{PROJECT}.{name}",
                "model",
                name,
                PROJECT,
                "analytics",
                schema,
                name,
                materialized,
                depends_on=deps,
            )
            layer.append(node)
        models += layer
        parents = [n.unique_id for n in layer]
    nodes += models
    for t in range(800):
        tested = models[t * 5]
        kind = ("not_null", "unique")[t % 2]
        column = f"{tested.name.split('_', 1)[1].rsplit('_', 1)[0]}_id"
        name = f"{kind}_{tested.name}_{column}"
        uid = f"test.{PROJECT}.{name}.{_hash10(name)}"
        nodes.append(Node(uid, "test", name, PROJECT, depends_on=(tested.unique_id,)))
    for r in range(100):
        child, parent = models[2000 + r * 3], models[1000 + r * 7]
        name = f"relationships_{child.name}_customer_id__customer_id__ref_{parent.name}_"
        uid = f"test.{PROJECT}.{name}.{_hash10(name)}"
        deps = (parent.unique_id, child.unique_id)
        nodes.append(Node(uid, "test", name, PROJECT, depends_on=deps))
    graph = Graph(nodes, project_name=PROJECT, adapter_type="snowflake")
    assert len(graph.nodes) == 5000
    return graph


def fingerprint(uid: str) -> Fingerprint:
    return Fingerprint(f"c-{uid}", {"code": f"code-{uid}", "config": "cfg"})


def clean_state(graph: Graph, options: PlanOptions) -> StateEntries:
    """Every model built a day ago, having consumed all the source data there was."""
    state = {}
    for node in graph.nodes.values():
        if not node.is_stateful:
            continue
        up = graph.upstream(node.unique_id)
        state[options.key_for(node)] = {
            "unique_id": node.unique_id,
            "checksum": f"c-{node.unique_id}",
            "checksum_parts": {"code": f"code-{node.unique_id}", "config": "cfg"},
            "last_updated": BUILT_AT.isoformat(),
            "sources": {s: LOADED.isoformat() for s in up.sources},
            "upstream": {options.key_for(graph[p]): BUILT_AT.isoformat() for p in up.nodes},
            "status": "success",
            "execution_time": 12.5,
        }
    return {k: StateEntry.from_json(e) for k, e in state.items()}


def probe(graph: Graph, new_data: Iterable[str] = ()) -> Probe:
    fresh = set(new_data)
    return Probe(
        {
            uid: SourceFreshness(NOW - timedelta(hours=1) if uid in fresh else LOADED)
            for uid, node in graph.nodes.items()
            if node.resource_type == "source"
        }
    )


def results_for(
    graph: Graph, the_plan: Plan, fails: Callable[[Node], bool]
) -> dict[str, NodeResult]:
    """What dbt would report: ``fails`` nodes error (tests fail), their descendants skip."""
    results: dict[str, NodeResult] = {}
    broken: set[str] = set()
    for decision in the_plan.decisions:
        if not decision.builds:
            continue
        node = graph[decision.unique_id]
        finished = (NOW + timedelta(minutes=5)).isoformat()
        if broken & set(node.depends_on):
            broken.add(node.unique_id)
            results[node.unique_id] = NodeResult(node.unique_id, "skipped", 0.0, finished)
        elif fails(node):
            if not node.is_test:
                broken.add(node.unique_id)
            status, message = (
                ("fail", "Got 17 results, configured to fail if != 0")
                if node.is_test
                else ("error", f'Database Error in model {node.name}: column "x" does not exist')
            )
            results[node.unique_id] = NodeResult(
                node.unique_id, status, 3.2, finished, message, failures=17
            )
        else:
            status = "pass" if node.is_test else "success"
            rows = None if node.is_test else 123_456
            results[node.unique_id] = NodeResult(
                node.unique_id, status, 8.7, finished, None, rows_affected=rows
            )
    return results


@dataclass(frozen=True)
class Scenario:
    name: str
    state: bool  # False: no state at all, everything builds (a first run)
    new_data_every: int  # with state: every n-th source has new rows
    fails: Callable[[Node], bool]


def _every(n: int) -> Callable[[Node], bool]:
    return lambda node: not node.is_test and int(node.name.rsplit("_", 1)[1]) % n == 0


SCENARIOS = [
    Scenario("daily: new data in 5 sources, a few failures", True, 20, _every(40)),
    Scenario("daily: new data in 25 sources (half the models)", True, 4, lambda n: False),
    Scenario("daily with failures", True, 4, _every(50)),
    Scenario("first run: all 4,000 models built", False, 0, lambda n: False),
    Scenario("first run, 1 in 20 models fails", False, 0, _every(20)),
    Scenario(
        "first run, every staging model fails",
        False,
        0,
        lambda n: n.name.startswith("stg_") and not n.is_test,
    ),
    Scenario("first run, every model built and every test fails", False, 0, lambda n: n.is_test),
]


def make_report(scenario: Scenario) -> RunReport:
    graph = big_graph()
    options = PlanOptions(command="build", now=NOW)
    state = clean_state(graph, options) if scenario.state else {}
    sources = sorted(uid for uid, n in graph.nodes.items() if n.resource_type == "source")
    new_data = sources[:: scenario.new_data_every] if scenario.new_data_every else []
    the_plan = plan(graph, sorted(graph.nodes), state, fingerprint, probe(graph, new_data), options)
    results = results_for(graph, the_plan, scenario.fails)
    failed = any(r.status in ("error", "fail") for r in results.values())
    return RunReport(
        command="build",
        target="prod",
        exit_code=1 if failed else 0,
        error=None,
        graph=graph,
        plan=the_plan,
        results=results,
        time_saved_seconds=12.5 * len(the_plan.reused()),
        state_updates=sum(r.status == "success" for r in results.values()),
        run_info={
            "dag_id": "big_project_daily",
            "run_id": "scheduled__2026-06-01T12:00:00+00:00",
            "task_id": "dbt_build",
            "try_number": 1,
            "map_index": -1,
        },
    )


def size(value: Any) -> int:
    return len(json.dumps(value).encode("utf-8"))


def truth(report: RunReport) -> dict[str, list[str]]:
    """The outcome lists computed independently from the results."""
    assert report.graph is not None
    graph = report.graph
    models = {uid: r for uid, r in report.results.items() if not graph[uid].is_test}
    return {
        "built": sorted(u for u, r in models.items() if r.status == "success"),
        "failed": sorted(u for u, r in report.results.items() if r.status in ("error", "fail")),
        "skipped": sorted(u for u, r in report.results.items() if r.status == "skipped"),
    }


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_summary_stays_under_64_kb_with_exact_counts(scenario: Scenario) -> None:
    report = make_report(scenario)
    summary = report.summary()
    encoded = size(summary)
    expected = truth(report)
    counts = summary["counts"]
    planned = len(report.plan.decisions) if report.plan else 0
    lists = ", ".join(f"{name} {len(ids)}" for name, ids in expected.items())
    print(f"\n{scenario.name}: summary {encoded} bytes; planned {planned}, {lists}", end="")
    print(f", truncated {summary.get('truncated')}")
    assert encoded < XCOM_LIMIT and encoded <= SUMMARY_BUDGET_BYTES
    assert json.loads(json.dumps(summary)) == summary
    # Counts are exact whatever the lists hold.
    models_failed = sum(1 for u in expected["failed"] if u.startswith("model."))
    tests_failed = len(expected["failed"]) - models_failed
    assert counts["built"] == len(expected["built"])
    assert (counts["failed"], counts["tests_failed"]) == (models_failed, tests_failed)
    assert counts["skipped"] + counts["tests_skipped"] == len(expected["skipped"])
    assert counts["built"] + counts["reused"] + counts["failed"] + counts["skipped"] == 4000
    # Lists are what happened, cut at the end if at all, and say how much was cut.
    omitted = summary.get("truncated", {})
    for name, ids in expected.items():
        assert summary[name] == ids[: len(summary[name])]
        assert len(summary[name]) + omitted.get(name, 0) == len(ids)
    if omitted:
        assert summary["full_lists"] == FULL_LISTS_NOTE
        # Failed ids go first: a shorter failed list means nothing else was listed.
        if omitted["failed"]:
            assert summary["skipped"] == summary["built"] == []
        elif omitted["skipped"]:
            assert summary["built"] == []
    else:
        assert "full_lists" not in summary


def test_the_worst_cases_are_really_cut_and_failures_kept_first() -> None:
    by_name = {s.name: s for s in SCENARIOS}
    all_built = make_report(by_name["first run: all 4,000 models built"])
    full = all_built.to_json()
    assert len(full["built"]) == 4000 and "truncated" not in full  # the CLI report is never cut
    assert size(full["built"]) > XCOM_LIMIT, "the uncut built list alone would exceed 64 KB"
    summary = all_built.summary()
    assert summary["truncated"] == {
        "failed": 0,
        "skipped": 0,
        "built": 4000 - len(summary["built"]),
    }
    # The budget is used, not wasted: within one id of it.
    assert SUMMARY_BUDGET_BYTES - size(summary) < 60

    stg_fail = make_report(by_name["first run, every staging model fails"]).summary()
    assert stg_fail["counts"]["failed"] == 1000 and stg_fail["truncated"]["failed"] == 0
    assert len(stg_fail["failed"]) == 1000 and stg_fail["built"] == []

    everything = make_report(by_name["first run, every model built and every test fails"]).summary()
    assert everything["truncated"]["failed"] > 0 and everything["failed"]
    assert everything["skipped"] == [] and everything["built"] == []


def test_a_usual_run_is_not_cut_and_the_cli_report_keeps_full_lists() -> None:
    report = make_report(SCENARIOS[0])
    summary = report.summary()
    full = report.to_json()
    assert "truncated" not in summary and "full_lists" not in summary
    assert summary["failed"] and summary["skipped"] and summary["counts"]["reused"] > 3000
    assert {k: summary[k] for k in ("built", "failed", "skipped")} == truth(report)
    assert {k: full[k] for k in ("built", "failed", "skipped")} == truth(report)
    counts = summary["counts"]
    assert len(full["reused"]) == counts["reused"] + counts["tests_reused"]


def test_node_details_for_5000_nodes_are_json_serialisable() -> None:
    for scenario in (SCENARIOS[0], SCENARIOS[4]):
        report = make_report(scenario)
        details = report.node_details()
        assert len(details) == 4900  # every model and test; sources are not planned
        encoded = size(details)
        assert json.loads(json.dumps(details)) == details
        print(
            f"\n{scenario.name}: node_details {encoded} bytes "
            f"({encoded / len(details):.0f} per node)"
        )
