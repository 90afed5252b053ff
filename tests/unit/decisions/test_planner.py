"""The reuse rules (docs/design.md §3), one or more table rows per rule, asserting the reasons."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from support.synthetic_graph import (
    EPH,
    M1,
    M2,
    NOW,
    SEED,
    SRC_B,
    STG,
    T0,
    T_M1,
    T_SPAN,
    T_SRC,
    base_graph,
    clean_state,
    fingerprints,
    fresh_probe,
    iso,
    key,
)

from airflow_provider_orchestra_dbt.decisions.graph import BuildAfter, Graph
from airflow_provider_orchestra_dbt.decisions.planner import (
    Action,
    PlanOptions,
    Probe,
    SourceFreshness,
    plan,
    probe_targets,
)
from airflow_provider_orchestra_dbt.state.model import StateEntries, StateEntry


def entries(state: dict[str, dict[str, Any]]) -> StateEntries:
    """The test's JSON state as the planner gets it: parsed, as a store loads it."""
    return {k: StateEntry.from_json(e) for k, e in state.items()}


@dataclass
class Case:
    id: str
    expect: dict[str, tuple[Action, str]]  # uid -> (action, reason substring)
    mutate_state: Callable[[dict[str, dict[str, Any]]], None] = lambda s: None
    probe: Probe = field(default_factory=fresh_probe)
    options: PlanOptions = field(default_factory=lambda: PlanOptions(now=NOW))
    changed: dict[str, str] = field(default_factory=dict)
    graph: Callable[[], Graph] = base_graph
    selected: tuple[str, ...] = (SEED, STG, EPH, M1, M2, T_M1, T_SRC, T_SPAN)


B, R = Action.BUILD, Action.REUSE
SRC_A_NEW = SourceFreshness(NOW - timedelta(minutes=5))


def _set(uid: str, **fields: Any) -> Callable[[dict[str, dict[str, Any]]], None]:
    def mutate(state: dict[str, dict[str, Any]]) -> None:
        state[key(uid)].update(fields)

    return mutate


def _drop(uid: str) -> Callable[[dict[str, dict[str, Any]]], None]:
    return lambda state: state.pop(key(uid))


def _strip(uid: str, **fields: Any) -> Callable[[dict[str, dict[str, Any]]], None]:
    """What dbt-orchestra's rewrite of a shared file leaves of our entry (then ``fields``)."""

    def mutate(state: dict[str, dict[str, Any]]) -> None:
        entry = state[key(uid)]
        state[key(uid)] = {
            **{k: entry[k] for k in ("checksum", "last_updated", "sources")},
            **fields,
        }

    return mutate


def _orc_built(uid: str, at: datetime) -> Callable[[dict[str, dict[str, Any]]], None]:
    """dbt-orchestra (local run) recorded a build of ``uid`` under its own key."""

    def mutate(state: dict[str, dict[str, Any]]) -> None:
        state[uid] = {"checksum": "orc-sha", "last_updated": iso(at), "sources": {}}

    return mutate


STRIPPED = (
    "its state entry lacks our fields (unique_id, status, upstream, checksum_parts): "
    "written or rewritten by another tool, not trusted"
)


CASES = [
    Case(
        "all clean: everything reused, no test runs",
        {
            STG: (R, "up to date"),
            M1: (R, "up to date"),
            M2: (R, "up to date"),
            SEED: (R, "up to date"),
            T_M1: (R, "every node it tests is reused"),
            T_SRC: (R, "every node it tests is reused"),
        },
    ),
    # Rule 1: reuse off / full refresh.
    Case(
        "rule 1: reuse off",
        {M1: (B, "reuse is turned off"), T_M1: (B, "reuse is off")},
        options=PlanOptions(now=NOW, reuse=False),
    ),
    Case(
        "rule 1: full refresh",
        {M2: (B, "full refresh requested")},
        options=PlanOptions(now=NOW, full_refresh=True),
    ),
    # Rule 2: a state entry with status success.
    Case(
        "rule 2: no entry",
        {M1: (B, "no state recorded for db.main.m1"), M2: (B, "upstream m1 is being built")},
        mutate_state=_drop(M1),
    ),
    Case(
        "rule 2: test_failed",
        {
            M1: (B, "an error-severity test failed after its last build"),
            T_M1: (B, "m1 is being built"),
        },
        mutate_state=_set(M1, status="test_failed"),
    ),
    Case(
        "rule 2: unknown status",
        {M1: (B, "its last recorded status is 'weird'")},
        mutate_state=_set(M1, status="weird"),
    ),
    Case(
        "rule 2: untested nodes are reused but their tests run",
        {M1: (R, "up to date"), T_M1: (B, "m1 has status 'untested'")},
        mutate_state=_set(M1, status="untested"),
    ),
    # Rule 3: fingerprint.
    Case(
        "rule 3: code changed names the part",
        {
            STG: (R, "up to date"),
            M1: (B, "code changed (config)"),
            M2: (B, "upstream m1 is being built"),
        },
        changed={M1: "config"},
    ),
    # Entries we did not write (or another tool rewrote) are never the basis of a reuse.
    Case(
        "trust: an entry stripped by another tool's rewrite is not trusted",
        {
            M1: (B, STRIPPED),
            M2: (B, "upstream m1 is being built"),
            STG: (R, "up to date"),
            T_M1: (B, "m1 is being built"),
        },
        mutate_state=_strip(M1),
    ),
    Case(
        "trust: one missing field is named",
        {M2: (B, "its state entry lacks our fields (upstream): written or rewritten")},
        mutate_state=lambda s: s[key(M2)].pop("upstream"),
    ),
    Case(
        "trust: an entry recorded for another node",
        {M1: (B, "its state entry was recorded for model.p.old_m1, not trusted")},
        mutate_state=_set(M1, unique_id="model.p.old_m1"),
    ),
    Case(
        "trust: a failed test survives a rewrite that dropped status",
        {M1: (B, "an error-severity test failed after its last build")},
        mutate_state=_strip(M1, checksum="test_failed:c-model.p.m1"),
    ),
    Case(
        "trust: a stripped failed parent still holds its new data back",
        {M2: (R, "new data waits: upstream m1 failed an error-severity test")},
        mutate_state=_strip(M1, checksum="test_failed:c-model.p.m1", last_updated=iso(NOW)),
        selected=(M2,),
    ),
    Case(
        "trust: a test of an unselected node with a stripped entry runs",
        {T_M1: (B, f"m1: {STRIPPED}")},
        mutate_state=_strip(M1),
        selected=(T_M1,),
    ),
    Case(
        "foreign builds: dbt-orchestra rebuilt the node after our build",
        {
            M1: (B, f"another tool rebuilt it at {iso(NOW)} (state entry {M1}), after our last"),
            M2: (B, "upstream m1 is being built"),
        },
        mutate_state=_orc_built(M1, NOW),
    ),
    Case(
        "foreign builds: dbt-orchestra rebuilt an unselected parent after this node",
        {M2: (B, f"upstream m1 was rebuilt by another tool at {iso(NOW)} (state entry {M1})")},
        mutate_state=_orc_built(M1, NOW),
        selected=(M2,),
    ),
    Case(
        "foreign builds: older than ours change nothing",
        {M1: (R, "up to date"), M2: (R, "up to date")},
        mutate_state=_orc_built(M1, NOW - timedelta(days=3)),
    ),
    Case(
        "rule 3: an entry with no parts recorded",
        {M1: (B, "code changed (code fingerprint differs from state)")},
        mutate_state=_set(M1, checksum="orc", checksum_parts={}),
    ),
    # Rule 4: relation exists.
    Case(
        "rule 4: relation dropped out of band",
        {M1: (B, "relation db.main.m1 is missing from the warehouse"), STG: (R, "up to date")},
        probe=Probe(fresh_probe().freshness, {"db.main": frozenset({"stg_a", "m2", "s1"})}),
    ),
    Case(
        "rule 4: listing failed",
        {M1: (B, "could not check that db.main.m1 exists (permission denied)")},
        probe=Probe(fresh_probe().freshness, {"db.main": None}, {"db.main": "permission denied"}),
    ),
    # Rule 5: sources.
    Case(
        "rule 5: new source data flows downstream",
        {
            STG: (B, "new data in source raw.a"),
            M1: (B, "upstream stg_a is being built"),
            M2: (B, "upstream m1 is being built"),
            SEED: (R, "up to date"),
            T_SRC: (B, "source raw.a is about to be consumed by stg_a"),
            T_SPAN: (B, "m1 is being built"),
        },
        probe=fresh_probe(source__p__raw__a=SRC_A_NEW),
    ),
    Case(
        "rule 5: source through an ephemeral parent",
        {STG: (R, "up to date"), M1: (B, "new data in source raw.b"), T_SRC: (R, "every node")},
        probe=fresh_probe(source__p__raw__b=SourceFreshness(NOW)),
    ),
    Case(
        "rule 5: unknown freshness is new data",
        {STG: (B, "freshness of source raw.a is unknown (it has no loaded_at_field)")},
        probe=fresh_probe(source__p__raw__a=SourceFreshness(None, "it has no loaded_at_field")),
    ),
    Case(
        "rule 5: a source never consumed",
        {STG: (B, "source raw.a was never consumed by this node")},
        mutate_state=_set(STG, sources={}),
    ),
    # Rule 6: upstream stateful nodes.
    Case(
        "rule 6: upstream updated by an earlier partial run",
        {
            STG: (R, "up to date"),
            M1: (B, "upstream stg_a was updated at"),
            M2: (B, "upstream m1 is being built"),
        },
        mutate_state=_set(STG, last_updated=iso(NOW - timedelta(hours=1))),
    ),
    Case(
        "rule 6: upstream outside the selection, updated",
        {M2: (B, "upstream m1 was updated at")},
        mutate_state=_set(M1, last_updated=iso(NOW - timedelta(hours=1))),
        selected=(M2,),
    ),
    Case(
        "rule 6: upstream failed its tests and is not rebuilt: data waits",
        {M2: (R, "new data waits: upstream m1 failed an error-severity test")},
        mutate_state=lambda s: s[key(M1)].update(status="test_failed", last_updated=iso(NOW)),
        selected=(M2,),
    ),
    # Rule 7: build_after.
    Case(
        "rule 7: inside the window",
        {M1: (B, "new data"), M2: (R, "build_after 2 hours: last built at")},
        probe=fresh_probe(source__p__raw__b=SourceFreshness(NOW)),
        graph=lambda: base_graph(BuildAfter(2, "hour")),
        mutate_state=_set(M2, last_updated=iso(NOW - timedelta(hours=1))),
    ),
    Case(
        "rule 7: window elapsed",
        {M2: (B, "upstream m1 is being built")},
        probe=fresh_probe(source__p__raw__b=SourceFreshness(NOW)),
        graph=lambda: base_graph(BuildAfter(2, "hour")),
    ),
    Case(
        "rule 7: code change ignores the window",
        {M2: (B, "code changed (code)")},
        changed={M2: "code"},
        graph=lambda: base_graph(BuildAfter(2, "day")),
        mutate_state=_set(M2, last_updated=iso(NOW)),
    ),
    Case(
        "rule 7: updates_on all waits for every parent",
        {M2: (R, "build_after updates_on all: waiting for new data in s1")},
        probe=fresh_probe(source__p__raw__b=SourceFreshness(NOW)),
        graph=lambda: base_graph(BuildAfter(1, "minute", "all")),
    ),
    Case(
        "rule 7: updates_on all builds when every parent has new data",
        {M2: (B, "upstream m1 is being built")},
        probe=fresh_probe(source__p__raw__b=SourceFreshness(NOW)),
        graph=lambda: base_graph(BuildAfter(1, "minute", "all")),
        mutate_state=_set(SEED, last_updated=iso(NOW - timedelta(hours=1))),
    ),
    Case(
        "rule 7: a parent inherits the smallest window of its children",
        {M1: (R, "build_after 3 hours (inherited from its children)")},
        probe=fresh_probe(source__p__raw__b=SourceFreshness(NOW)),
        graph=lambda: base_graph(BuildAfter(3, "hour")),
        mutate_state=_set(M1, last_updated=iso(NOW - timedelta(hours=1))),
    ),
    # Tests follow the nodes they test.
    Case(
        "tests: a test spanning a built and a reused node runs",
        {
            SEED: (B, "code changed"),
            M1: (R, "up to date"),
            T_SPAN: (B, "s1 is being built"),
            T_M1: (R, "every node"),
        },
        changed={SEED: "code"},
    ),
    Case(
        "command test: only tests, run where a tested node is stale",
        {T_M1: (B, "m1 is stale"), T_SRC: (R, "every node")},
        probe=fresh_probe(source__p__raw__b=SourceFreshness(NOW)),
        options=PlanOptions(now=NOW, command="test"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case) -> None:
    graph = case.graph()
    state = clean_state(graph)
    case.mutate_state(state)
    result = plan(
        graph, case.selected, entries(state), fingerprints(case.changed), case.probe, case.options
    )
    by_id = result.by_id
    for uid, (action, reason) in case.expect.items():
        decision = by_id[uid]
        assert (decision.action, reason in decision.reason) == (action, True), (
            f"{uid}: {decision.action.value} / {decision.reason!r}"
        )


def test_ephemeral_models_are_not_planned_and_keys_carry_the_prefix() -> None:
    graph = base_graph()
    options = PlanOptions(now=NOW, key_prefix="acct1")
    result = plan(graph, [EPH, M1], {}, fingerprints(), fresh_probe(), options)
    assert [d.unique_id for d in result.decisions] == [M1]
    assert result.decisions[0].key == "acct1.db.main.m1"
    assert result.decisions[0].reason == "no state recorded for acct1.db.main.m1"


def test_command_run_plans_models_only() -> None:
    graph = base_graph()
    options = PlanOptions(now=NOW, command="run")
    result = plan(graph, [SEED, M1, T_M1], {}, fingerprints(), fresh_probe(), options)
    assert [d.unique_id for d in result.decisions] == [M1]


def test_probe_targets_cover_sources_through_ephemerals_and_schemas() -> None:
    sources, schemas = probe_targets(base_graph(), [M1, T_M1])
    assert sources == [SRC_B]
    assert schemas == [["db", "main"]]


def test_with_an_integration_account_orc_keys_are_account_and_relation_name() -> None:
    """A build orc recorded under its platform-mode key ``<account>.<relation_name>`` counts."""
    graph = Graph(
        replace(n, relation_name=f'"db"."main"."{n.alias}"') if n.is_stateful else n
        for n in base_graph().nodes.values()
    )
    options = PlanOptions(now=NOW, key_prefix="acct")
    state = {
        f"acct.{k}": {**e, "upstream": {f"acct.{p}": t for p, t in e["upstream"].items()}}
        for k, e in clean_state(graph).items()
    }
    probe = fresh_probe()
    assert all(
        d.reason.startswith("up to date")
        for d in plan(graph, [M2], entries(state), fingerprints(), probe, options).decisions
    )

    state['acct."db"."main"."m1"'] = {"checksum": "orc", "last_updated": iso(NOW), "sources": {}}
    (decision,) = plan(graph, [M2], entries(state), fingerprints(), probe, options).decisions
    assert decision.reason == (
        f"upstream m1 was rebuilt by another tool at {iso(NOW)} "
        '(state entry acct."db"."main"."m1") after this node was built'
    )


def _m1_with(**changes: Any) -> Graph:
    return Graph(
        replace(n, **changes) if n.unique_id == M1 else n for n in base_graph().nodes.values()
    )


def _volatile_meta(value: Any) -> dict[str, Any]:
    return {"meta": {"orchestra_dbt": {"volatile": value}}}


@pytest.mark.parametrize(
    ("changes", "built_at", "m1", "m2"),
    [
        ({"raw_code": "select current_date as d"}, T0,
         (B, "volatile: its SQL reads the current date/time (current_date)"),
         (B, "upstream m1 is being built in this run")),
        ({"raw_code": "select current_date as d", "config": _volatile_meta(False)}, T0,
         (R, "up to date: code unchanged and no new upstream data"), (R, "up to date")),
        ({"config": _volatile_meta(True)}, T0,
         (B, "volatile: declared by meta orchestra_dbt.volatile: true"), (B, "upstream m1")),
        ({"config": _volatile_meta("daily")}, T0,
         (B, "volatile daily: last built 2026-05-31 (UTC), a new day began"), (B, "upstream m1")),
        ({"config": _volatile_meta("daily")}, NOW - timedelta(hours=1),
         (R, "up to date: code unchanged and no new upstream data; volatile daily: already "
             "built this day (2026-06-01 UTC)"), (R, "up to date")),
        ({"config": _volatile_meta("weekly")}, T0,
         (B, "volatile: bad meta orchestra_dbt.volatile on model.p.m1: 'weekly' (expected "
             "true, false, daily or hourly); treated as volatile"), (B, "upstream m1")),
        # A build_after delays volatility like new data, and builds once its window is over.
        ({"raw_code": "select now()", "build_after": BuildAfter(1, "day")}, T0,
         (B, "volatile: its SQL reads the current date/time (now())"), (B, "upstream m1")),
        ({"raw_code": "select now()", "build_after": BuildAfter(1, "day")},
         NOW - timedelta(hours=1),
         (R, "build_after 1 day: last built at 2026-06-01T11:00:00+00:00, next build due after "
             "2026-06-02T11:00:00+00:00; pending: volatile: its SQL reads the current date/time "
             "(now())"), (R, "up to date")),
    ],
)  # fmt: skip
def test_volatile_nodes(
    changes: dict[str, Any],
    built_at: datetime,
    m1: tuple[Action, str],
    m2: tuple[Action, str],
) -> None:
    graph = _m1_with(**changes)
    state = clean_state(graph)
    state[key(M1)]["last_updated"] = iso(built_at)
    state[key(M2)]["upstream"][key(M1)] = iso(built_at)
    options = PlanOptions(now=NOW)
    by_id = plan(graph, [M1, M2], entries(state), fingerprints(), fresh_probe(), options).by_id
    assert (by_id[M1].action, by_id[M1].reason) == m1
    assert by_id[M2].action == m2[0]
    assert by_id[M2].reason.startswith(m2[1]), by_id[M2].reason


def test_a_code_change_is_named_before_volatility() -> None:
    graph = _m1_with(raw_code="select current_date as d")
    state = entries(clean_state(graph))
    result = plan(graph, [M1], state, fingerprints({M1: "code"}), fresh_probe(),
                  PlanOptions(now=NOW))  # fmt: skip
    assert result.by_id[M1].reason == "code changed (code)"
