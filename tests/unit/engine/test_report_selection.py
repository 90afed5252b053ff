"""Selection criteria that matched nothing: dbt's words, in the summary (XCom) and the report."""

from __future__ import annotations

from dbt.events.types import NoNodesForSelectionCriteria

from airflow_provider_orchestra_dbt.engine.report import RunReport, unmatched_message


def test_the_warning_is_worded_as_dbt_words_it() -> None:
    assert unmatched_message("stg_x+") == NoNodesForSelectionCriteria(spec_raw="stg_x+").message()


def test_unmatched_criteria_are_in_summary_report_and_summary_line() -> None:
    report = RunReport("build", None, 0, unmatched_selection=("stg_x+", "selector:nightly"))
    assert report.summary()["unmatched_selection"] == ["stg_x+", "selector:nightly"]
    assert report.to_json()["unmatched_selection"] == ["stg_x+", "selector:nightly"]
    assert report.summary_line().endswith(
        "; selection criteria matching no enabled node: 'stg_x+', 'selector:nightly'"
    )
    clean = RunReport("build", None, 0)
    assert clean.summary()["unmatched_selection"] == []
    assert "selection criteria" not in clean.summary_line()
