"""`run` and `test` are state-aware too; every other dbt command passes through unchanged."""

from __future__ import annotations

import logging

import pytest
from support.tutorial import Workspace, built, decisions, executed_tests, short

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.session import DbtSession

pytestmark = pytest.mark.integration

STG_ORDERS_TESTS = {"unique_stg_orders_order_id", "not_null_stg_orders_order_id"}


def test_run_records_untested_models_whose_tests_the_next_build_runs(ws: Workspace) -> None:
    ws.append("orders")
    first = ws.run("run")
    assert "stg_orders" in built(first)
    assert executed_tests(first) == set(), "dbt run runs no test"
    assert ws.entry("stg_orders")["status"] == "untested"

    # No new data: build reuses the models but runs the tests they never had.
    second = ws.run("build")
    assert built(second) == set()
    ran = {short(t) for t in executed_tests(second)}
    assert ran >= STG_ORDERS_TESTS
    assert not any("stg_payments" in t and "orders" not in t for t in ran)
    assert ws.entry("stg_orders")["status"] == "success"
    assert executed_tests(ws.run("build")) == set()


def test_test_command_runs_only_tests_of_stale_or_untested_nodes(ws: Workspace) -> None:
    assert executed_tests(ws.run("test")) == set(), "nothing changed: no test to run"
    ws.append("orders")
    report = ws.run("test")
    ran = {short(t) for t in executed_tests(report)}
    assert ran >= STG_ORDERS_TESTS
    assert "unique_stg_customers_customer_id" not in ran
    assert decisions(report) == {}, "dbt test builds nothing"


def test_other_commands_pass_through_unchanged(ws: Workspace) -> None:
    config = DbtRunConfig.create(
        project_dir=ws.project, profiles_dir=ws.project, command="seed", select="country_codes"
    )
    state = ws.state_file.read_bytes()
    with ws.env():
        report = DbtSession(config, None, logging.getLogger("test")).run()
    assert report.exit_code == 0
    assert {short(uid): r.status for uid, r in report.results.items()} == {
        "country_codes": "success"
    }
    assert ws.state_file.read_bytes() == state
