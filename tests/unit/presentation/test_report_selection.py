"""Selection criteria that matched nothing: dbt's words, in the summary (XCom) and the report."""

from __future__ import annotations

import re

from dbt.events.types import NoNodesForSelectionCriteria

from airflow_provider_orchestra_dbt.presentation.report import RunReport, unmatched_message


def test_the_warning_is_worded_as_dbt_words_it() -> None:
    # dbt 1.12 prefixes a coloured "[WARNING]: " level tag; the words after it are the same.
    dbt_words = NoNodesForSelectionCriteria(spec_raw="stg_x+").message()
    dbt_words = re.sub(r"^\[\x1b\[\d+mWARNING\x1b\[0m\]: ", "", dbt_words)
    assert unmatched_message("stg_x+") == dbt_words


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
