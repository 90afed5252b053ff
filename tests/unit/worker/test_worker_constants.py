"""Constants the worker spells out itself, because it imports nothing of the package."""

from __future__ import annotations

from airflow_provider_orchestra_dbt.decisions import volatility
from airflow_provider_orchestra_dbt.worker import dbt_worker


def test_the_worker_reads_options_under_the_same_meta_key_as_the_planner() -> None:
    assert dbt_worker.META_NAMESPACE == volatility.META_NAMESPACE
