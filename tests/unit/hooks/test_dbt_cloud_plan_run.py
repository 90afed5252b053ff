"""What a dbt Cloud plan run's artifacts say about relations and sources (PlanRun.probe)."""

from __future__ import annotations

from typing import Any

from support.synthetic_graph import LOADED, M1, M2, SEED, SRC_A, SRC_B, STG, base_graph, iso

from airflow_provider_orchestra_dbt.hooks.dbt_cloud_executor import PlanRun

SELECTED = (STG, M1, M2, SEED)


def catalog(*names: str, schema: str = "MAIN") -> dict[str, Any]:
    return {
        "nodes": {
            f"model.p.{name}": {"metadata": {"database": "DB", "schema": schema, "name": name}}
            for name in names
        }
    }


def sources(*uids: str) -> dict[str, Any]:
    return {"results": [{"unique_id": u, "max_loaded_at": iso(LOADED)} for u in uids]}


def test_a_selected_relation_the_catalog_lacks_does_not_exist_whatever_the_case() -> None:
    probe = PlanRun(
        1, base_graph(), SELECTED, sources(SRC_A, SRC_B), catalog("stg_a", "m1")
    ).probe()
    # The warehouse reported DB.MAIN; the manifest says db.main: the same schema.
    assert probe.relations["db.main"] == frozenset({"stg_a", "m1"})
    assert probe.freshness[SRC_A].max_loaded_at == LOADED


def test_a_schema_with_no_relation_left_is_listed_empty_not_unchecked() -> None:
    probe = PlanRun(1, base_graph(), SELECTED, sources(SRC_A), catalog("x", schema="other")).probe()
    assert probe.relations["db.main"] == frozenset()


def test_without_a_catalog_relations_are_unknown_and_sources_unmeasured_unknown() -> None:
    probe = PlanRun(7, base_graph(), SELECTED, sources(SRC_A), None).probe()
    assert probe.relations["db.main"] is None
    assert probe.relation_errors["db.main"] == "dbt Cloud run 7 wrote no catalog.json"
    assert probe.freshness[SRC_B].error is not None
    assert "did not measure it" in str(probe.freshness[SRC_B].error)
