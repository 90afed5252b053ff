"""Only finished builds are recorded, with the freshness measured before the build."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from support.synthetic_graph import (
    M1,
    M2,
    NOW,
    SEED,
    SRC_A,
    SRC_B,
    STG,
    T_M1,
    T_SPAN,
    base_graph,
    clean_state,
    fingerprints,
    fresh_probe,
    key,
)

from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult, state_updates
from airflow_provider_orchestra_dbt.decisions.planner import (
    PlanOptions,
    Probe,
    SourceFreshness,
    failed_checksum,
    plan,
)
from airflow_provider_orchestra_dbt.state.model import EntryStatus, StateEntries, StateEntry


def entries(state: dict[str, dict[str, Any]]) -> StateEntries:
    """JSON state as a store loads it: parsed."""
    return {k: StateEntry.from_json(e) for k, e in state.items()}


LOADED_NEW = NOW - timedelta(minutes=5)


def run(results: dict[str, str], command: str = "build") -> StateEntries:
    graph = base_graph()
    probe = Probe(
        {SRC_A: SourceFreshness(LOADED_NEW), SRC_B: SourceFreshness(None, "no loaded_at_field")},
        {},
    )
    options = PlanOptions(now=NOW, command=command)
    selected = [SEED, STG, M1, M2, T_M1, T_SPAN]
    the_plan = plan(graph, selected, {}, fingerprints(), probe, options)
    finished = (NOW + timedelta(seconds=len(results))).isoformat()
    node_results = {uid: NodeResult(uid, status, 1.5, finished) for uid, status in results.items()}
    return dict(state_updates(graph, the_plan, node_results, {}, probe).updates)


def test_built_nodes_record_consumed_freshness_and_upstream_times() -> None:
    updates = run({STG: "success", M1: "success", M2: "success", SEED: "success", T_M1: "pass"})
    stg = updates[key(STG)]
    assert stg.sources == {SRC_A: LOADED_NEW.isoformat()}
    assert stg.status is EntryStatus.SUCCESS and stg.execution_time == 1.5
    # Unknown freshness is never recorded as consumed: the next run still sees it as new.
    assert updates[key(M1)].sources == {}
    assert updates[key(M1)].upstream == {key(STG): stg.last_updated}
    assert set(updates[key(M2)].upstream or {}) == {key(M1), key(SEED)}


def test_failed_and_skipped_nodes_keep_no_new_entry() -> None:
    updates = run({STG: "success", M1: "error", M2: "skipped", SEED: "success"})
    assert set(updates) == {key(STG), key(SEED)}


def test_error_severity_test_failure_marks_the_tested_node() -> None:
    updates = run({STG: "success", M1: "success", T_M1: "fail", M2: "skipped"})
    assert updates[key(M1)].status is EntryStatus.TEST_FAILED
    assert updates[key(STG)].status is EntryStatus.SUCCESS
    assert key(M2) not in updates


def test_run_command_records_untested() -> None:
    updates = run({STG: "success", M1: "success", M2: "success"}, command="run")
    assert {e.status for e in updates.values()} == {EntryStatus.UNTESTED}


def test_interrupted_run_records_only_what_finished() -> None:
    updates = run({STG: "success"})
    assert list(updates) == [key(STG)]
    last_updated = updates[key(STG)].last_updated
    assert last_updated is not None and datetime.fromisoformat(last_updated).tzinfo is not None


def test_a_failed_test_makes_the_checksum_unmatchable_and_survives_a_foreign_rewrite() -> None:
    """Built seed and reused m1 both fail span_m1_s1; another tool then drops our fields."""
    graph = base_graph()
    state = entries(clean_state(graph))
    fps = fingerprints({SEED: "code"})
    options = PlanOptions(now=NOW)
    probe = fresh_probe()
    the_plan = plan(graph, [SEED, M1, T_SPAN], state, fps, probe, options)
    assert [d.unique_id for d in the_plan.decisions if d.builds] == [SEED, T_SPAN]
    results = {
        SEED: NodeResult(SEED, "success", 1.0, NOW.isoformat()),
        T_SPAN: NodeResult(T_SPAN, "fail", 1.0, NOW.isoformat()),
    }
    updates = state_updates(graph, the_plan, results, state, probe).updates
    assert updates[key(SEED)].checksum == "test_failed:" + fps(SEED).checksum
    assert updates[key(M1)].checksum == "test_failed:" + fps(M1).checksum
    assert updates[key(M1)].status is updates[key(SEED)].status is EntryStatus.TEST_FAILED
    assert failed_checksum(updates[key(M1)].checksum) == updates[key(M1)].checksum

    # dbt-orchestra rewrites every entry with only the fields it knows.
    stripped = entries(
        {
            k: {f: e.to_json()[f] for f in ("checksum", "last_updated", "sources")}
            for k, e in {**state, **updates}.items()
        }
    )
    again = plan(graph, [SEED, M1], stripped, fps, probe, options).by_id
    for uid in (SEED, M1):
        assert again[uid].builds
        assert again[uid].reason == "an error-severity test failed after its last build"

    # Built again and its tests pass: the real fingerprint is back.
    passed = {SEED: NodeResult(SEED, "success", 1.0, NOW.isoformat())}
    fixed = state_updates(
        graph, plan(graph, [SEED], stripped, fps, probe, options), passed, stripped, probe
    )
    assert fixed.updates[key(SEED)].checksum == fps(SEED).checksum


def test_a_test_command_failure_marks_the_tested_node_too() -> None:
    """`test` plans no node of its own: its failures still reach the tested node's entry."""
    graph = base_graph()
    state = entries(clean_state(graph))
    options = PlanOptions(now=NOW, command="test")
    probe = fresh_probe()
    the_plan = plan(graph, [T_M1], state, fingerprints(), probe, options)
    assert [d.unique_id for d in the_plan.decisions] == [T_M1]
    results = {T_M1: NodeResult(T_M1, "fail", 1.0, NOW.isoformat())}
    updates = state_updates(graph, the_plan, results, state, probe).updates
    assert set(updates) == {key(M1)}
    assert updates[key(M1)].status is EntryStatus.TEST_FAILED
    assert updates[key(M1)].last_updated == state[key(M1)].last_updated
    after = plan(graph, [M1], {**state, **updates}, fingerprints(), probe, PlanOptions(now=NOW))
    assert after.by_id[M1].builds


def test_every_status_dbt_reports_has_a_meaning() -> None:
    from dbt.artifacts.schemas.results import NodeStatus

    from airflow_provider_orchestra_dbt.decisions.outcomes import KNOWN_STATUSES

    assert {str(s.value) for s in NodeStatus} <= KNOWN_STATUSES


def test_nodes_dbt_kept_as_they_were_are_neither_built_nor_failed() -> None:
    # dbt 1.12's `reused` and the `no-op` of exposures: the relation is as it was, so there
    # is nothing new to record; the next run asks dbt again.
    updates = run({STG: "reused", M1: "no-op", M2: "success", SEED: "success", T_M1: "reused"})
    assert set(updates) == {key(M2), key(SEED)}


def test_a_test_status_this_provider_does_not_know_counts_as_failed() -> None:
    updates = run({STG: "success", M1: "success", T_M1: "exploded"})
    assert updates[key(M1)].status is EntryStatus.TEST_FAILED
    skipped = run({STG: "success", M1: "success", T_M1: "skipped"})
    assert skipped[key(M1)].status is EntryStatus.SUCCESS


def test_the_report_counts_what_dbt_kept_as_reused_and_unknown_statuses_as_failed() -> None:
    from airflow_provider_orchestra_dbt.presentation.report import FAILED, REUSED, node_outcome

    def outcome(status: str, is_test: bool = False) -> str:
        return node_outcome(is_test, True, NodeResult(M1, status))

    assert outcome("reused") == outcome("no-op") == outcome("reused", is_test=True) == REUSED
    assert outcome("exploded") == outcome("exploded", is_test=True) == FAILED
    assert outcome("partial success") == FAILED
