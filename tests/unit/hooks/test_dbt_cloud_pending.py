"""A deferred dbt Cloud build: PendingBuild, its compact record, the state it planned on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.synthetic_graph import (
    EPH,
    M1,
    M2,
    SEED,
    SRC_A,
    STG,
    T_M1,
    T_SPAN,
    T_SRC,
    base_graph,
    clean_state,
    key,
)

from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.decisions.planner import Action, Decision, Plan, PlanOptions
from airflow_provider_orchestra_dbt.hooks.dbt_cloud_executor import (
    CAUSE_MAX_CHARS,
    PendingBuild,
    _cause,
    _decode,
    _encode,
    _planned_on,
)
from airflow_provider_orchestra_dbt.state import StateEntry
from airflow_provider_orchestra_dbt.state.model import StateEntries


def test_pending_build_round_trips_through_json() -> None:
    pending = PendingBuild(run_id=1234, plan_run_id=1233, steps=3, record=_encode({"a": [1]}))
    data = json.loads(json.dumps(pending.to_json()))
    assert data == {"run_id": 1234, "plan_run_id": 1233, "steps": 3, "record": pending.record}
    assert PendingBuild.from_json(data) == pending


def test_pending_build_reads_numbers_kept_as_strings() -> None:
    data = {"run_id": "5", "plan_run_id": "4", "steps": "2", "record": "x"}
    assert PendingBuild.from_json(data) == PendingBuild(5, 4, 2, "x")


def _record(count: int) -> dict[str, Any]:
    return {
        "decisions": [
            [f"model.p.model_{i}", "build" if i % 3 else "reuse", f"code changed ({i})", True]
            for i in range(count)
        ],
        "state": {
            f"db.main.model_{i}": {
                "checksum": f"c-model.p.model_{i}",
                "last_updated": "2026-05-31T12:00:00+00:00",
                "status": "success",
                "unique_id": f"model.p.model_{i}",
                "upstream": {f"db.main.model_{i - 1}": "2026-05-31T12:00:00+00:00"},
            }
            for i in range(0, count, 5)
        },
        "saved": 123.5,
    }


def test_encode_decode_round_trip() -> None:
    record = _record(20)
    encoded = _encode(record)
    assert isinstance(encoded, str)
    encoded.encode("ascii")  # safe in XCom and trigger kwargs
    assert _decode(encoded) == json.loads(json.dumps(record))
    assert _decode(_encode({})) == {}


def test_a_large_record_is_compressed() -> None:
    record = _record(5000)
    encoded = _encode(record)
    assert _decode(encoded) == record
    assert len(encoded) < len(json.dumps(record)) / 3


@pytest.mark.parametrize("length", [0, 10, CAUSE_MAX_CHARS - 1, CAUSE_MAX_CHARS])
def test_a_short_cause_is_kept(length: int) -> None:
    text = "x" * length
    assert _cause(text) == text


@pytest.mark.parametrize("length", [CAUSE_MAX_CHARS + 1, 1000])
def test_a_long_cause_is_truncated_to_255_chars(length: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    cause = _cause(text)
    assert len(cause) == CAUSE_MAX_CHARS == 255
    assert cause.endswith("…")
    assert cause[:-1] == text[: CAUSE_MAX_CHARS - 1]


# -- the state entries recording reads -----------------------------------------------------


def entries(graph: Graph) -> StateEntries:
    state = {k: StateEntry.from_json(e) for k, e in clean_state(graph).items()}
    # Entries no planned node reads, and ones only a test's checked source or the test has.
    state["db.main.unrelated"] = StateEntry("u", unique_id="model.p.unrelated")
    state["db.raw.a"] = StateEntry("src-a")
    state[T_SPAN] = StateEntry("span")
    return state


def decision(graph: Graph, uid: str, action: Action, options: PlanOptions) -> Decision:
    node = graph[uid]
    keyed = node.is_stateful
    return Decision(
        uid, node.resource_type, action, "why", key=options.key_for(node) if keyed else None
    )


def planned(graph: Graph, *decided: tuple[str, Action], prefix: str | None = None) -> Plan:
    options = PlanOptions(key_prefix=prefix)
    return Plan(tuple(decision(graph, uid, action, options) for uid, action in decided), options)


def test_a_built_node_brings_its_parents_entries() -> None:
    graph = base_graph()
    state = entries(graph)
    the_plan = planned(graph, (M2, Action.BUILD))
    assert _planned_on(graph, the_plan, state) == {
        k: state[k] for k in (key(M2), key(M1), key(SEED))
    }


def test_a_built_node_looks_through_ephemeral_parents() -> None:
    graph = base_graph()
    state = entries(graph)
    # m1 reads stg_a and, through eph, source b (not in state): stg_a's entry is read.
    got = _planned_on(graph, planned(graph, (M1, Action.BUILD)), state)
    assert got == {k: state[k] for k in (key(M1), key(STG))}


def test_a_reused_node_brings_only_its_own_entry() -> None:
    graph = base_graph()
    state = entries(graph)
    the_plan = planned(graph, (M2, Action.REUSE), (STG, Action.REUSE))
    assert _planned_on(graph, the_plan, state) == {k: state[k] for k in (key(M2), key(STG))}


def test_a_test_brings_the_entries_of_the_nodes_it_checks() -> None:
    graph = base_graph()
    state = entries(graph)
    the_plan = planned(graph, (T_SPAN, Action.BUILD), (T_SRC, Action.BUILD))
    got = _planned_on(graph, the_plan, state)
    assert got == {k: state[k] for k in (T_SPAN, key(M1), key(SEED), "db.raw.a")}
    assert graph.tested_nodes(T_SRC) == (SRC_A,)


def test_nothing_else_is_planned_on() -> None:
    graph = base_graph()
    state = entries(graph)
    the_plan = planned(graph, (SEED, Action.REUSE), (EPH, Action.BUILD), (T_M1, Action.REUSE))
    got = _planned_on(graph, the_plan, state)
    assert got == {k: state[k] for k in (key(SEED), key(M1))}
    assert "db.main.unrelated" not in got
    assert _planned_on(graph, planned(graph), state) == {}
    assert _planned_on(graph, the_plan, {}) == {}


def test_entries_are_looked_up_under_the_plans_key_prefix() -> None:
    graph = base_graph()
    plain = entries(graph)
    prefix = "dbt_cloud/1/2"
    prefixed = {f"{prefix}.{k}": e for k, e in plain.items()}
    the_plan = planned(graph, (M2, Action.BUILD), prefix=prefix)
    got = _planned_on(graph, the_plan, {**plain, **prefixed})
    assert got == {f"{prefix}.{k}": plain[k] for k in (key(M2), key(M1), key(SEED))}


def test_planned_on_entries_survive_the_record() -> None:
    graph = base_graph()
    state = entries(graph)
    got = _planned_on(graph, planned(graph, (M2, Action.BUILD)), state)
    record = _decode(_encode({"state": {k: e.to_json() for k, e in got.items()}}))
    rebuilt = {k: StateEntry.from_json(raw) for k, raw in record["state"].items()}
    assert {k: e.to_json() for k, e in rebuilt.items()} == {k: e.to_json() for k, e in got.items()}
