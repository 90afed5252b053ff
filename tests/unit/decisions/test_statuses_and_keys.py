"""dbt's result statuses as an enum, and the one function that makes a node's state key."""

from __future__ import annotations

from support.synthetic_graph import M1, base_graph

from airflow_provider_orchestra_dbt.decisions.outcomes import (
    BUILT_STATUSES,
    KEPT_STATUSES,
    KNOWN_STATUSES,
    SKIPPED_STATUSES,
    TEST_PASSED_STATUSES,
    DbtStatus,
)
from airflow_provider_orchestra_dbt.decisions.planner import PlanOptions, state_key


def test_dbt_statuses_are_the_strings_dbt_reports() -> None:
    assert {"success"} == BUILT_STATUSES
    assert {"reused", "no-op"} == KEPT_STATUSES
    assert {"pass", "warn"} == TEST_PASSED_STATUSES
    assert {"skipped"} == SKIPPED_STATUSES
    assert {
        "success", "reused", "no-op", "pass", "warn", "skipped",
        "error", "fail", "runtime error", "partial success",
    } == KNOWN_STATUSES  # fmt: skip
    assert DbtStatus("runtime error") is DbtStatus.RUNTIME_ERROR
    assert "success" in BUILT_STATUSES and "exploded" not in KNOWN_STATUSES


def test_the_state_key_is_the_relation_with_the_account_prefix() -> None:
    node = base_graph()[M1]
    assert state_key(node) == "db.main.m1"
    assert state_key(node, "acct1") == "acct1.db.main.m1"
    assert PlanOptions(key_prefix="acct1").key_for(node) == state_key(node, "acct1")
    assert PlanOptions().key_for(node) == state_key(node)
