"""Reuse semantics (docs/design.md §3) on real dbt runs of the tutorial project, via the CLI.

Cases run on the tutorial profile's DuckDB target, and those where the warehouse answers
differently on its PostgreSQL target too (a throwaway local cluster, or the server named by
ORCHESTRA_TEST_PG_*; see tests/support/postgres.py).
Every run goes through ``Workspace.run``, which also asserts the project directory is
byte-identical afterwards.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from support.tutorial import (
    STATEFUL,
    TARGETS,
    Baseline,
    Workspace,
    built,
    day_ago,
    decisions,
    executed_tests,
    short,
)

pytestmark = pytest.mark.integration
# ``target`` feeds the ``baseline`` and ``ws`` fixtures (tests/integration/conftest.py). The
# cases where the warehouse answers differently run on both targets: building and reusing, what
# exists, what is fresh. The others exercise rules that read nothing from the warehouse (code,
# vars, selection, statuses, clocks) and run on DuckDB only, here and on the oldest dbt.
ON_BOTH_TARGETS = pytest.mark.parametrize("target", TARGETS)
ON_DUCKDB = pytest.mark.parametrize("target", ["duckdb"])

ORDERS_DOWNSTREAM = {
    "stg_orders", "int_orders_enriched", "int_customer_orders", "fct_orders",
    "fct_daily_revenue", "dim_customers", "mart_country_revenue", "mart_customer_revenue",
    "mart_order_status",
}  # fmt: skip
PAYMENTS_DOWNSTREAM = (ORDERS_DOWNSTREAM - {"stg_orders", "mart_order_status"}) | {
    "stg_payments",
    "mart_payment_methods",
}


@ON_BOTH_TARGETS
def test_first_run_builds_everything_and_runs_every_test(baseline: Baseline) -> None:
    report = baseline.first_report
    assert built(report) == STATEFUL
    assert report["counts"]["tests_passed"] > 40
    assert report["counts"]["reused"] == 0 and report["failed"] == []


@ON_BOTH_TARGETS
def test_second_run_reuses_everything_runs_no_test_and_changes_nothing(ws: Workspace) -> None:
    tables = ws.tables()
    state_before = ws.state_file.read_bytes()
    report = ws.run()
    assert built(report) == set()
    assert set(decisions(report, "reuse")) == STATEFUL
    assert executed_tests(report) == set()
    assert report["counts"]["tests_reused"] > 40
    assert ws.tables() == tables
    assert ws.state_file.read_bytes() == state_before
    assert report["time_saved_seconds"] > 0


@ON_BOTH_TARGETS
def test_new_rows_in_one_source_build_exactly_its_downstream_and_their_tests(
    ws: Workspace,
) -> None:
    ws.append("orders")
    report = ws.run()
    assert built(report) == ORDERS_DOWNSTREAM
    assert "new data in source raw.orders" in decisions(report)["stg_orders"]
    ran = {short(t) for t in executed_tests(report)}
    assert any("stg_orders" in t for t in ran)
    assert "assert_every_order_has_customer" in ran  # spans stg_orders (built), stg_customers
    # Tests that check only untouched models stay reused (a relationships test between
    # stg_payments and stg_orders does run: it spans a built model).
    assert not {"not_null_stg_payments_order_id", "unique_stg_countries_country_code"} & ran
    # The new data is now consumed: nothing more to do.
    assert built(ws.run()) == set()


@ON_DUCKDB
def test_a_test_spanning_a_built_and_a_reused_model_runs(ws: Workspace) -> None:
    ws.append("customers")
    report = ws.run()
    assert "stg_customers" in built(report) and "stg_orders" not in built(report)
    ran = {short(t) for t in executed_tests(report)}
    assert "assert_every_order_has_customer" in ran
    assert not any(t.startswith(("unique_stg_orders", "not_null_stg_orders")) for t in ran)


@ON_DUCKDB
def test_editing_a_model_builds_it_and_its_downstream(ws: Workspace) -> None:
    ws.edit("models/intermediate/int_customer_orders.sql", "select", "select distinct")
    report = ws.run()
    assert built(report) == {"int_customer_orders", "dim_customers", "mart_country_revenue"}
    assert decisions(report)["int_customer_orders"] == "code changed (code)"
    # updates_on: all -- its other parent, fct_orders, has nothing new.
    assert decisions(report, "reuse")["mart_customer_revenue"] == (
        "build_after updates_on all: waiting for new data in fct_orders"
    )


@ON_DUCKDB
def test_comment_and_whitespace_edits_rebuild_nothing(ws: Workspace) -> None:
    ws.edit("models/marts/fct_orders.sql", "select", "-- a note for readers\nselect  \n")
    assert built(ws.run()) == set()


@ON_DUCKDB
def test_editing_a_macro_rebuilds_every_model_calling_it_transitively(ws: Workspace) -> None:
    # round_money is only called through cents_to_dollars, which stg_payments calls.
    ws.edit("macros/round_money.sql", "round({{ expr }}, 2)", "round(0 + {{ expr }}, 2)")
    report = ws.run()
    assert built(report) == PAYMENTS_DOWNSTREAM
    assert decisions(report)["stg_payments"] == "code changed (macros)"


@ON_DUCKDB
def test_changing_a_var_value_rebuilds_the_model_reading_it(ws: Workspace) -> None:
    report = ws.run("build", "--vars", "{revenue_start_date: '2024-03-01'}")
    assert built(report) == {"fct_daily_revenue"}
    assert decisions(report)["fct_daily_revenue"] == "code changed (vars)"
    # The same value again: reused; back to the default: rebuilt.
    assert built(ws.run("build", "--vars", "{revenue_start_date: '2024-03-01'}")) == set()
    assert built(ws.run()) == {"fct_daily_revenue"}


@ON_DUCKDB
def test_changing_a_seed_csv_rebuilds_the_seed_and_downstream(ws: Workspace) -> None:
    path = ws.project / "seeds" / "country_codes.csv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1] + " "  # a content change dbt's own seed checksum may not see
    path.write_text("\n".join(lines) + "\n")
    report = ws.run()
    assert built(report) == {
        "country_codes", "stg_countries", "dim_customers", "mart_country_revenue",
    }  # fmt: skip
    assert decisions(report)["country_codes"] == "code changed (code)"


@ON_DUCKDB
def test_partial_selection_then_full_run_builds_what_has_not_consumed_new_data(
    ws: Workspace,
) -> None:
    ws.append("orders")
    ws.append("payments")
    partial = ws.run("build", "--select", "stg_orders+")
    assert "stg_payments" not in built(partial)
    assert "mart_order_status" in built(partial)
    ws.set_built_at(day_ago())  # keep build_after windows out of this rule-6 check
    full = ws.run()
    # Outside stg_orders+ and not yet consumed: payments and everything reading it.
    assert built(full) == PAYMENTS_DOWNSTREAM
    assert "mart_order_status" not in built(full)


@ON_DUCKDB
def test_upstream_built_by_an_earlier_partial_run_makes_children_stale(ws: Workspace) -> None:
    ws.append("orders")
    assert built(ws.run("build", "--select", "stg_orders")) == {"stg_orders"}
    report = ws.run()
    assert "stg_orders" not in built(report)
    assert built(report) == ORDERS_DOWNSTREAM - {"stg_orders"}
    assert "upstream stg_orders was updated at" in decisions(report)["mart_order_status"]


@ON_DUCKDB
def test_failed_model_and_its_skipped_downstream_are_rebuilt_after_the_fix(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    ws.append("orders")
    good = "models/intermediate/int_customer_orders.sql"
    original = (ws.project / good).read_text()
    ws.edit(good, "select", "select no_such_column,")
    with caplog.at_level(logging.INFO):
        failed = ws.run(expect_exit=1)
    # dbt's own result line and end-of-run summary would repeat it: printed once, on ours.
    mentions = [r.getMessage() for r in caplog.records if "no_such_column" in r.getMessage()]
    assert len(mentions) == 1 and "ERROR" in mentions[0], mentions
    assert "model.orchestra_tutorial.int_customer_orders" in failed["failed"]
    skipped = {short(u) for u in failed["skipped"]}
    assert {"dim_customers", "mart_country_revenue", "mart_customer_revenue"} <= skipped
    # Not recorded: its entry is still the one from before the failed run.
    assert ws.entry("int_customer_orders")["last_updated"] < datetime.now(UTC).isoformat()
    assert "stg_orders" in built(failed)

    (ws.project / good).write_text(original.replace("select", "select distinct", 1))
    fixed = ws.run()
    assert built(fixed) == {
        "int_customer_orders", "dim_customers", "mart_country_revenue", "mart_customer_revenue",
    }  # fmt: skip


@ON_DUCKDB
def test_failing_error_test_marks_the_model_and_blocks_downstream_until_fixed(
    ws: Workspace,
) -> None:
    # Valid for the source's own tests, but not for stg_payments' accepted_values test.
    ws.sql(
        "insert into raw.payments "
        "select max(id) + 1, 1, 'bitcoin', 100, now()::timestamp from raw.payments"
    )
    first = ws.run(expect_exit=1)
    assert "stg_payments" in built(first)
    assert ws.entry("stg_payments")["status"] == "test_failed"
    assert "int_orders_enriched" in {short(u) for u in first["skipped"]}

    again = ws.run(expect_exit=1)
    assert decisions(again)["stg_payments"] == "an error-severity test failed after its last build"
    assert any("accepted_values_stg_payments_method" in t for t in executed_tests(again))
    assert "int_orders_enriched" not in built(again)

    ws.sql("delete from raw.payments where method = 'bitcoin'")
    fixed = ws.run()
    assert {"stg_payments", "int_orders_enriched", "mart_payment_methods"} <= built(fixed)
    assert ws.entry("stg_payments")["status"] == "success"


@ON_BOTH_TARGETS
def test_a_table_dropped_out_of_band_is_rebuilt(ws: Workspace) -> None:
    ws.sql(f"drop table {ws.schema}.mart_order_status")
    report = ws.run()
    assert built(report) == {"mart_order_status"}
    assert decisions(report)["mart_order_status"] == (
        f"relation {ws.relation('mart_order_status')} is missing from the warehouse"
    )


def second_target(ws: Workspace) -> str:
    """A target writing into schema ``analytics_alt`` of the same database as ``ws.target``."""
    if ws.target == "duckdb":
        return "duckdb_alt"
    # The tutorial's profile has one postgres output: give this copy of it a twin.
    profiles = ws.project / "profiles.yml"
    document = yaml.safe_load(profiles.read_text())
    outputs = document["orchestra_tutorial"]["outputs"]
    outputs["postgres_alt"] = outputs["postgres"] | {"schema": "analytics_alt"}
    profiles.write_text(yaml.safe_dump(document, sort_keys=False))
    return "postgres_alt"


@ON_BOTH_TARGETS
def test_a_second_target_never_reuses_the_first(ws: Workspace) -> None:
    alt = second_target(ws)
    report = ws.run("build", "--target", alt)
    assert built(report) == STATEFUL
    assert all(
        r.startswith(f"no state recorded for {ws.database}.analytics_alt")
        for r in decisions(report).values()
    )
    assert built(ws.run("build", "--target", alt)) == set()
    assert built(ws.run()) == set()


@ON_DUCKDB
def test_full_refresh_builds_everything_selected_and_records_state(ws: Workspace) -> None:
    before = ws.entry("fct_daily_revenue")["last_updated"]
    report = ws.run("build", "--full-refresh")
    assert built(report) == STATEFUL
    assert set(decisions(report).values()) == {"full refresh requested"}
    assert ws.entry("fct_daily_revenue")["last_updated"] > before
    assert built(ws.run()) == set()


@ON_DUCKDB
def test_build_after_window_and_updates_on_all(ws: Workspace) -> None:
    now = datetime.now(UTC)
    ws.set_built_at(now - timedelta(hours=1), "dim_customers")
    ws.append("orders")
    report = ws.run()
    reuse = decisions(report, "reuse")
    assert "build_after 2 hours: last built at" in reuse["dim_customers"]
    assert "next build due after" in reuse["dim_customers"]
    assert "fct_orders" in built(report)
    assert reuse["mart_customer_revenue"] == (
        "build_after updates_on all: waiting for new data in dim_customers"
    )
    # The window passes: dim_customers builds, and now both parents of
    # mart_customer_revenue have new data.
    ws.set_built_at(now - timedelta(hours=3), "dim_customers")
    later = ws.run()
    assert {"dim_customers", "mart_customer_revenue", "mart_country_revenue"} <= built(later)


@ON_DUCKDB
def test_inherited_build_after_is_named_in_the_reason(ws: Workspace) -> None:
    ws.set_built_at(datetime.now(UTC) - timedelta(minutes=30), "stg_customers")
    ws.append("customers")
    reason = decisions(ws.run(), "reuse")["stg_customers"]
    assert "build_after 2 hours (inherited from its children)" in reason


@ON_DUCKDB
def test_plan_runs_nothing_and_changes_no_state(ws: Workspace) -> None:
    ws.append("orders")
    tables = ws.tables()
    state = ws.state_file.read_bytes()
    picture = ws.root / "plan.html"
    report = ws.run("plan", "--html", str(picture))
    assert report["dry_run"] is True
    html = picture.read_text()
    assert "will build" in html and "stg_orders" in html and "new data in source raw.orders" in html
    assert set(decisions(report)) == ORDERS_DOWNSTREAM
    assert built(report) == set() and report["counts"]["built"] == 0
    assert ws.tables() == tables
    assert ws.state_file.read_bytes() == state


@ON_DUCKDB
def test_artifacts_go_to_target_path_only_when_asked(ws: Workspace) -> None:
    keep = ws.root / "artifacts"
    ws.append("orders")
    ws.run("build", "--target-path", str(keep))
    results = json.loads((keep / "run_results.json").read_text())
    assert {short(r["unique_id"]) for r in results["results"]} >= {"stg_orders"}
    assert (keep / "manifest.json").is_file()


@ON_DUCKDB
def test_a_default_selector_limits_a_run_without_selection(ws: Workspace) -> None:
    # With no --select the worker skips `dbt ls`, unless selectors.yml names a default.
    (ws.project / "selectors.yml").write_text(
        "selectors:\n  - name: orders_mart\n    default: true\n    definition: 'fct_orders'\n"
    )
    assert built(ws.run("build", "--no-reuse")) == {"fct_orders"}


@ON_BOTH_TARGETS
def test_sources_measured_by_a_loaded_at_query_work_like_a_loaded_at_field(
    ws: Workspace,
) -> None:
    # Measured by a dbt invocation, not the adapter's freshness macro: only dbt renders it.
    ws.edit(
        "models/staging/_sources.yml",
        "loaded_at_field: _loaded_at",
        'loaded_at_query: "select max(_loaded_at) from {{ this }}"',
    )
    assert built(ws.run()) == set()
    ws.append("orders")
    report = ws.run()
    assert built(report) == ORDERS_DOWNSTREAM
    assert "new data in source raw.orders" in decisions(report)["stg_orders"]


@ON_BOTH_TARGETS
def test_a_source_whose_freshness_query_fails_is_unknown_and_the_run_continues(
    ws: Workspace,
) -> None:
    ws.edit("models/staging/_sources.yml", "_loaded_at", "_no_such_column")
    report = ws.run()
    reasons = decisions(report)
    unknown = [r for r in reasons.values() if "is unknown" in r]
    assert unknown and all("freshness of source raw." in r for r in unknown)
    assert report["failed"] == []
