"""run_results.json, sources.json and catalog.json read into what the session records and plans."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_orchestra_dbt.decisions.planner import Probe
from airflow_provider_orchestra_dbt.execution.manifest_graph import ArtifactError
from airflow_provider_orchestra_dbt.execution.run_artifacts import node_results, probe_message

RUN_RESULTS: dict[str, Any] = {
    "results": [
        {
            "unique_id": "model.shop.orders",
            "status": "success",
            "execution_time": 1.25,
            "timing": [
                {"name": "compile", "completed_at": "2026-12-01T10:00:01.000000Z"},
                {"name": "execute", "completed_at": "2026-12-01T10:00:02.500000Z"},
            ],
            "message": "OK\nmore",
            "adapter_response": {"rows_affected": 7},
            "failures": None,
        },
        {
            "unique_id": "test.shop.not_null_orders_id.1",
            "status": "fail",
            "execution_time": 0.1,
            "timing": [],
            "message": "Got 2 results",
            "failures": 2,
        },
    ]
}


def test_results_become_node_results_finished_when_their_last_step_completed() -> None:
    built, tested = node_results(RUN_RESULTS, origin="run_results.json")
    assert built.unique_id == "model.shop.orders" and built.status == "success"
    assert built.finished_at == "2026-12-01T10:00:02.500000+00:00"
    assert (built.execution_time, built.rows_affected, built.message) == (1.25, 7, "OK")
    assert (tested.status, tested.failures, tested.finished_at) == ("fail", 2, None)


def test_freshness_and_catalog_read_like_the_workers_probe() -> None:
    sources = {
        "results": [
            {
                "unique_id": "source.shop.raw.orders",
                "status": "pass",
                "max_loaded_at": "2026-12-01T09:00:00",
            },
            {
                "unique_id": "source.shop.raw.payments",
                "status": "runtime error",
                "error": "relation raw.payments does not exist\ndetails",
            },
        ]
    }
    catalog = {
        "nodes": {
            "model.shop.orders": {
                "metadata": {"database": "wh", "schema": "main", "name": "ORDERS"}
            }
        },
        "sources": {},
    }
    wanted = ["source.shop.raw.orders", "source.shop.raw.payments", "source.shop.raw.refunds"]
    message = probe_message(sources, catalog, wanted_sources=wanted, origin="job run 9")
    probe = Probe.from_message(message)
    orders = probe.freshness["source.shop.raw.orders"]
    assert orders.max_loaded_at is not None and orders.max_loaded_at.isoformat().endswith("+00:00")
    assert (
        probe.freshness["source.shop.raw.payments"].error == "relation raw.payments does not exist"
    )
    assert probe.freshness["source.shop.raw.refunds"].error == (
        "job run 9 did not measure it: dbt source freshness measures only sources with a "
        "freshness config"
    )
    assert probe.relations == {"wh.main": frozenset({"orders"})}


def test_without_artifacts_every_source_is_unknown_and_no_schema_is_listed() -> None:
    message = probe_message(None, None, wanted_sources=["source.s.a.b"], origin="job run 9")
    probe = Probe.from_message(message)
    assert probe.freshness["source.s.a.b"].max_loaded_at is None and probe.relations == {}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "run_results.json of run 3 is not a dbt results artifact"),
        ({"results": [{"status": "success"}]}, "a result lacks a field dbt always writes"),
    ],
)
def test_bad_artifacts_are_refused_naming_them(document: Any, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        node_results(document, origin="run_results.json of run 3")
