"""Parse-time Asset declarations: manifest selection subset, warehouse URIs, the translator."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.manifests import manifest_node, write_manifest

from airflow_provider_orchestra_dbt.assets import DbtAssetTranslator, DbtNodeRef, dbt_model_asset
from airflow_provider_orchestra_dbt.assets.manifest import load_manifest
from airflow_provider_orchestra_dbt.assets.warehouse import Warehouse, warehouse_for


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    nodes = [
        manifest_node(
            "model.p.stg_a", ("source.p.raw.a",), tags=["daily"], path="models/staging/stg_a.sql"
        ),
        manifest_node("model.p.eph", ("model.p.stg_a",), materialized="ephemeral"),
        manifest_node("model.p.fct", ("model.p.eph",), tags=["daily", "finance"]),
        manifest_node("model.p.mart", ("model.p.fct",)),
        manifest_node("seed.p.codes", materialized="seed"),
        manifest_node("test.p.not_null_fct_id", ("model.p.fct",)),
    ]
    source = manifest_node("source.p.raw.a", source_name="raw", identifier="a", schema="raw")
    return write_manifest(tmp_path / "manifest.json", nodes, source)


@pytest.mark.parametrize(
    ("select", "exclude", "expected"),
    [
        ([], [], {"stg_a", "eph", "fct", "mart", "codes", "not_null_fct_id", "a"}),
        (["fct"], [], {"fct"}),
        (["fct+"], [], {"fct", "mart", "not_null_fct_id"}),
        (["+fct"], [], {"fct", "eph", "stg_a", "a"}),
        (["1+mart"], [], {"mart", "fct"}),
        (["tag:daily"], [], {"stg_a", "fct"}),
        (["tag:daily,tag:finance"], [], {"fct"}),
        (["tag:daily stg_*"], ["fct"], {"stg_a"}),
        (["path:models/staging"], [], {"stg_a"}),
        (["config.materialized:ephemeral"], [], {"eph"}),
        (["source:raw.a+"], ["resource_type:test"], {"a", "stg_a", "eph", "fct", "mart"}),
        (["@stg_a"], [], {"a", "stg_a", "eph", "fct", "mart", "not_null_fct_id"}),
    ],
)
def test_selection_subset(
    manifest: Path, select: list[str], exclude: list[str], expected: set[str]
) -> None:
    chosen = load_manifest(manifest).select(select, exclude)
    assert chosen is not None
    assert {uid.rsplit(".", 1)[-1] for uid in chosen} == expected


@pytest.mark.parametrize("select", [["state:modified"], ["result:error"], ["exposure:x+"]])
def test_unsupported_selection_means_unknown(manifest: Path, select: list[str]) -> None:
    assert load_manifest(manifest).select(select, []) is None


def test_models_exclude_ephemerals_seeds_and_tests(manifest: Path) -> None:
    assert {n.name for n in load_manifest(manifest).models()} == {"stg_a", "fct", "mart"}


def test_warehouse_uris() -> None:
    pg = Warehouse("postgres", "db.internal:5432")
    assert pg.uri("analytics", "main", "fct") == "postgres://db.internal:5432/analytics/main/fct"
    assert pg.dataset_name("analytics", "main", "fct") == "analytics.main.fct"
    duck = Warehouse("duckdb", "tutorial")
    assert duck.uri("tutorial", "main", "fct") == "duckdb://tutorial/main/fct"


def test_warehouse_reads_the_rendered_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dbt_project.yml").write_text("name: p\nprofile: prof\n")
    (tmp_path / "profiles.yml").write_text(
        "prof:\n  target: pg\n  outputs:\n"
        "    pg: {type: postgres, host: \"{{ env_var('PGH', 'localhost') }}\","
        " port: \"{{ env_var('PGP', '5432') | as_number }}\"}\n"
        "    duck: {type: duckdb, path: \"{{ env_var('DUCK') }}\"}\n"
    )
    monkeypatch.setenv("PGH", "warehouse.example")
    monkeypatch.setenv("DUCK", "/data/shop.duckdb")
    common = {"project_dir": tmp_path, "profiles_dir": None}
    assert warehouse_for("postgres", target=None, **common).namespace == (
        "postgres://warehouse.example:5432"
    )
    assert warehouse_for("duckdb", target="duck", **common).namespace == "duckdb://shop"
    # Unreadable profile: the adapter and database still give a stable namespace.
    assert warehouse_for("snowflake", target="nope", database="DB", **common).namespace == (
        "snowflake://DB"
    )


def test_translator_prefixes_and_custom_subclass() -> None:
    warehouse = Warehouse("postgres", "h:5432")
    model = DbtNodeRef("model.p.fct", "model", "fct", "db", "main", "fct", warehouse)
    source = DbtNodeRef("source.p.raw.a", "source", "a", "db", "raw", "a", warehouse)
    translator = DbtAssetTranslator(key_prefix="dbt/prod", source_key_prefix=["raw"])
    asset = translator.asset(model)
    assert (asset.name, asset.uri, asset.group) == (
        "dbt/prod/db.main.fct",
        "postgres://h:5432/db/main/fct",
        "dbt",
    )
    assert translator.asset(source).name == "raw/db.raw.a"

    class ByModelName(DbtAssetTranslator):
        def name(self, node: DbtNodeRef) -> str:
            return f"dbt.{node.name}"

    assert ByModelName().asset(model).name == "dbt.fct"


def test_dbt_model_asset_for_consumer_dags(manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "dbt_project.yml").write_text("name: p\nprofile: prof\n")
    (tmp_path / "profiles.yml").write_text(
        "prof:\n  target: pg\n  outputs:\n    pg: {type: postgres, host: h, port: 5433}\n"
    )
    asset = dbt_model_asset(tmp_path, "mart", manifest_path=manifest)
    assert (asset.name, asset.uri) == ("db.main.mart", "postgres://h:5433/db/main/mart")
    with pytest.raises(ValueError, match="model 'nope': 0 matches"):
        dbt_model_asset(tmp_path, "nope", manifest_path=manifest)
