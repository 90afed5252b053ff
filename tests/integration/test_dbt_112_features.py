"""What dbt 1.12 added that changes what a relation holds: vars.yml, .env files, on_error:
continue and the selector: method, each run for real on the tutorial (DuckDB).

They run on the newest dbt of the main test environment; older dbt has none of them.
"""

from __future__ import annotations

import logging
from importlib.metadata import version

import pytest
from support.tutorial import Workspace, built, day_ago, decisions

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        tuple(int(p) for p in version("dbt-core").split(".")[:2]) < (1, 12),
        reason="a dbt 1.12 feature",
    ),
]

REVENUE = "fct_daily_revenue"
ENV_MODEL = "models/marts/env_label.sql"
LOADED = "dbt loaded ORCHESTRA_TEST_LABEL from "


def _label(ws: Workspace) -> str:
    [(label,)] = ws.sql(f"select label from {ws.relation('env_label')}")
    return str(label)


def test_vars_yml_values_are_fingerprinted_like_project_vars(ws: Workspace) -> None:
    vars_yml = ws.project / "vars.yml"
    vars_yml.write_text("vars:\n  revenue_start_date: '2000-01-01'\n")
    assert REVENUE in built(ws.run())
    assert built(ws.run()) == set()

    vars_yml.write_text("vars:\n  revenue_start_date: '2100-01-01'\n")
    report = ws.run()
    assert built(report) == {REVENUE}
    assert "var" in decisions(report)[REVENUE]


# dbt loads the .env when it is imported: a worker forked after the import would not.
@pytest.mark.real_worker_process
def test_a_dotenv_file_dbt_loads_is_said_and_its_values_count(
    ws: Workspace, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRA_TEST_LABEL", raising=False)
    (ws.project / ENV_MODEL).write_text(
        'select \'{{ env_var("ORCHESTRA_TEST_LABEL", "unset") }}\' as label\n'
    )
    dotenv = ws.project / ".env"
    dotenv.write_text("ORCHESTRA_TEST_LABEL=first-secret-value\n")
    with caplog.at_level(logging.INFO, logger="orchestra_dbt"):
        assert "env_label" in built(ws.run())
    assert _label(ws) == "first-secret-value"
    said = [r.getMessage() for r in caplog.records if LOADED in r.getMessage()]
    assert said and str(dotenv) in said[0] and "PYTHON_DOTENV_DISABLED=1" in said[0]
    assert "first-secret-value" not in caplog.text
    assert built(ws.run()) == set()

    dotenv.write_text("ORCHESTRA_TEST_LABEL=second\n")
    report = ws.run()
    assert built(report) == {"env_label"}
    assert decisions(report)["env_label"] == "code changed (env_vars)"
    assert _label(ws) == "second"

    # Turned off as python-dotenv documents it: the model sees the default, and is rebuilt.
    monkeypatch.setenv("PYTHON_DOTENV_DISABLED", "1")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="orchestra_dbt"):
        assert built(ws.run()) == {"env_label"}
    assert _label(ws) == "unset"
    assert LOADED not in caplog.text


def test_children_built_past_a_failed_parent_with_on_error_continue_rebuild_after_it(
    ws: Workspace,
) -> None:
    parent = "models/intermediate/int_orders_enriched.sql"
    original = (ws.project / parent).read_text()
    ws.append("orders")
    (ws.project / parent).write_text(
        "{{ config(on_error='continue') }}\n" + original.replace("orders.status", "no_such")
    )
    failed = ws.run(expect_exit=1)
    assert [u.rsplit(".", 1)[1] for u in failed["failed"]] == ["int_orders_enriched"]
    # dbt went on below the failure, reading the parent's previous table.
    children = built(failed) & {"int_customer_orders", "fct_orders", REVENUE}
    assert children == {"int_customer_orders", "fct_orders", REVENUE}
    before = ws.entry("int_orders_enriched")

    (ws.project / parent).write_text("{{ config(on_error='continue') }}\n" + original)
    ws.set_built_at(day_ago())  # past the tutorial's build_after waits
    fixed = ws.run()
    assert ws.entry("int_orders_enriched")["last_updated"] != before["last_updated"]
    assert built(fixed) >= {"int_orders_enriched"} | children


def test_the_selector_method_selects_like_the_selector_flag(ws: Workspace) -> None:
    (ws.project / "selectors.yml").write_text(
        "selectors:\n"
        "  - name: orders_mart\n    definition: 'fct_orders'\n"
        "  - name: nothing\n    definition: 'tag:no_such_tag'\n"
    )
    assert built(ws.run("build", "--no-reuse", "--select", "selector:orders_mart")) == {
        "fct_orders"
    }
    assert built(ws.run("build", "--no-reuse", "--selector", "orders_mart")) == {"fct_orders"}
    empty = ws.run("build", "--select", "selector:nothing")
    assert empty["unmatched_selection"] == ["selector:nothing"]
    assert built(empty) == set()
