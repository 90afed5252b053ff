"""A manifest.json artifact read into the planner's graph message, without dbt."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprinter
from airflow_provider_orchestra_dbt.decisions.graph import Graph
from airflow_provider_orchestra_dbt.execution.manifest_graph import ArtifactError, graph_message

MANIFEST: dict[str, Any] = {
    "metadata": {"adapter_type": "duckdb", "project_name": "shop"},
    "nodes": {
        "model.shop.orders": {
            "unique_id": "model.shop.orders",
            "resource_type": "model",
            "name": "orders",
            "package_name": "shop",
            "original_file_path": "models/orders.sql",
            "database": "wh",
            "schema": "main",
            "alias": "orders",
            "relation_name": '"wh"."main"."orders"',
            "config": {
                "materialized": "table",
                "alias": None,
                "freshness": {"build_after": {"count": 2, "period": "hour", "updates_on": "all"}},
            },
            "depends_on": {
                "nodes": ["source.shop.raw.orders", "seed.shop.codes"],
                "macros": ["macro.shop.cents"],
            },
            "raw_code": "select {{ cents('amount') }} from {{ source('raw', 'orders') }}",
        },
        "seed.shop.codes": {
            "unique_id": "seed.shop.codes",
            "resource_type": "seed",
            "name": "codes",
            "package_name": "shop",
            "database": "wh",
            "schema": "main",
            "alias": "codes",
            "config": {"materialized": "seed"},
            "depends_on": {"nodes": [], "macros": []},
            "raw_code": "",
            "checksum": {"name": "sha256", "checksum": "abc"},
        },
        "test.shop.not_null_orders_id.1": {
            "unique_id": "test.shop.not_null_orders_id.1",
            "resource_type": "test",
            "name": "not_null_orders_id",
            "package_name": "shop",
            "config": {"severity": "WARN"},
            "depends_on": {"nodes": ["model.shop.orders"], "macros": []},
            "attached_node": "model.shop.orders",
        },
        "analysis.shop.scratch": {"unique_id": "analysis.shop.x", "resource_type": "analysis"},
    },
    "sources": {
        "source.shop.raw.orders": {
            "unique_id": "source.shop.raw.orders",
            "name": "orders",
            "source_name": "raw",
            "package_name": "shop",
            "database": "wh",
            "schema": "raw",
            "identifier": "orders_v2",
            "loaded_at_field": "_loaded_at",
        }
    },
    "macros": {
        "macro.shop.cents": {
            "macro_sql": "{% macro cents(c) %}{{ round_to(c) }}{% endmacro %}",
            "depends_on": {"macros": ["macro.shop.round_to"]},
        },
        "macro.shop.round_to": {"macro_sql": "{% macro round_to(c) %}{{ c }}{% endmacro %}"},
        "macro.shop.unused": {"macro_sql": "{% macro unused() %}{% endmacro %}"},
    },
}


def test_nodes_sources_and_called_macros_become_the_graph() -> None:
    message = graph_message(MANIFEST, origin="manifest.json")
    graph = Graph.from_message(message)
    assert set(graph.nodes) == {
        "model.shop.orders",
        "seed.shop.codes",
        "test.shop.not_null_orders_id.1",
        "source.shop.raw.orders",
    }
    orders = graph["model.shop.orders"]
    assert orders.relation == "wh.main.orders" and orders.materialized == "table"
    assert orders.build_after is not None and orders.build_after.updates_on == "all"
    assert "alias" not in orders.config, "nulls are left out, as the worker leaves them out"
    assert graph["source.shop.raw.orders"].relation == "wh.raw.orders_v2"
    assert graph["test.shop.not_null_orders_id.1"].severity == "warn"
    assert graph["seed.shop.codes"].file_hash == "abc"
    assert set(graph.macros) == {"macro.shop.cents", "macro.shop.round_to"}
    assert graph.upstream("model.shop.orders").sources == ("source.shop.raw.orders",)
    assert message["selected"] == list(graph.nodes)
    assert graph.adapter_type == "duckdb" and graph.project_name == "shop"


def test_var_values_are_unknown_and_a_seed_hashed_by_path_too() -> None:
    manifest = copy.deepcopy(MANIFEST)
    manifest["nodes"]["model.shop.orders"]["raw_code"] += " where d > '{{ var(\"start\") }}'"
    manifest["nodes"]["seed.shop.codes"]["checksum"] = {"name": "path", "checksum": "seeds/c"}
    graph = Graph.from_message(graph_message(manifest, origin="manifest.json"))
    fingerprint = Fingerprinter(graph, cli_vars={}, env={})
    assert fingerprint("model.shop.orders").unknown == ("var 'start'",)
    assert fingerprint("seed.shop.codes").unknown == ("the seed file's content",)


def test_a_selection_is_kept() -> None:
    message = graph_message(MANIFEST, origin="manifest.json", selected=["model.shop.orders"])
    assert message["selected"] == ["model.shop.orders"]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"nodes": {}}, "manifest.json of run 7 is not a dbt manifest: no 'metadata'"),
        ([], "manifest.json of run 7 is not a dbt manifest: not a JSON object"),
        (
            {"metadata": {}, "nodes": {"model.x": {"resource_type": "model"}}},
            "manifest.json of run 7: a node lacks a field dbt always writes ('unique_id')",
        ),
    ],
)
def test_what_is_not_a_manifest_is_refused_naming_the_artifact(manifest: Any, message: str) -> None:
    with pytest.raises(ArtifactError) as raised:
        graph_message(manifest, origin="manifest.json of run 7")
    assert message in str(raised.value)
