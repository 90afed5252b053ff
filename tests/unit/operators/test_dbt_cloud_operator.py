"""OrchestraDbtCloudOperator at DAG parse time: its parameters, selection words and Assets."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, Asset, AssetAlias
from support.manifests import manifest_node, write_manifest

from airflow_provider_orchestra_dbt.operators.options import DbtTaskOutputs
from airflow_provider_orchestra_dbt.operators.orchestra_dbt_cloud import OrchestraDbtCloudOperator


def operator(**kwargs: Any) -> OrchestraDbtCloudOperator:
    with DAG(dag_id="cloud_dag", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
        return OrchestraDbtCloudOperator(
            task_id=kwargs.pop("task_id", "cloud"), **{"job_id": 1, **kwargs}
        )


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    nodes = [
        manifest_node("model.p.stg_a", ("source.p.raw.a",), tags=["daily"]),
        manifest_node("model.p.fct", ("model.p.stg_a",)),
        manifest_node("model.p.mart", ("model.p.fct",)),
        manifest_node("seed.p.codes", materialized="seed"),
        manifest_node("test.p.not_null_fct_id", ("model.p.fct",)),
    ]
    source = manifest_node("source.p.raw.a", source_name="raw", identifier="a", schema="raw")
    return write_manifest(tmp_path / "manifest.json", nodes, source)


def test_the_operator_has_at_most_16_parameters_of_its_own() -> None:
    parameters = inspect.signature(OrchestraDbtCloudOperator.__init__).parameters
    own = [n for n, p in parameters.items() if n != "self" and p.kind != p.VAR_KEYWORD]
    assert "kwargs" in parameters
    assert len(own) <= 16
    for name in own:
        assert f":param {name}:" in (OrchestraDbtCloudOperator.__doc__ or ""), name


def test_constructs_in_a_dag_with_its_defaults() -> None:
    op = operator(job_id="{{ var.value.job }}")
    assert op.dag_id == "cloud_dag"
    assert op.task_id == "cloud"
    assert op.command == "build"
    assert op.dbt_cloud_conn_id == "dbt_cloud_default"
    assert op.deferrable is True
    assert op.reuse is True
    assert op.full_refresh is False
    assert isinstance(op.outputs, DbtTaskOutputs)


@pytest.mark.parametrize("command", ["run", "test", "build"])
def test_state_aware_commands_are_accepted(command: str) -> None:
    assert operator(command=command).command == command


@pytest.mark.parametrize("command", ["seed", "snapshot", "docs generate", ""])
def test_another_command_is_refused_naming_the_task(command: str) -> None:
    with pytest.raises(ValueError, match="my_cloud_task") as caught:
        operator(task_id="my_cloud_task", command=command)
    assert repr(command) in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, None),
        ({"select": "", "exclude": [], "selector": None}, None),
        ({"select": "stg_a+ tag:daily"}, ("--select", "stg_a+ tag:daily")),
        ({"select": ["a", "b+"]}, ("--select", "a", "b+")),
        ({"exclude": "m2"}, ("--exclude", "m2")),
        ({"select": ("a",), "exclude": ["b", "c"]}, ("--select", "a", "--exclude", "b", "c")),
        ({"selector": "nightly"}, ("--selector", "nightly")),
        (
            {"select": "a", "exclude": "b", "selector": "s"},
            ("--select", "a", "--exclude", "b", "--selector", "s"),
        ),
    ],
)
def test_selection_words(kwargs: dict[str, Any], words: tuple[str, ...] | None) -> None:
    assert operator(**kwargs)._selection() == words


def test_template_fields_are_attributes() -> None:
    op = operator(select="{{ params.sel }}", account_id="{{ var.value.account }}")
    assert set(op.template_fields) >= {"job_id", "account_id", "select", "dbt_cloud_conn_id"}
    for name in op.template_fields:
        assert hasattr(op, name), name
    assert op.select == "{{ params.sel }}"


def test_without_a_manifest_no_assets_are_declared_but_the_alias_is() -> None:
    op = operator()
    assert not [i for i in op.inlets if isinstance(i, Asset)]
    assert op.outlets == [AssetAlias(name="orchestra_dbt/cloud_dag/cloud")]
    assert op.asset_alias in op.outlets


def test_a_missing_manifest_declares_nothing(tmp_path: Path) -> None:
    op = operator(outputs=DbtTaskOutputs(manifest_path=tmp_path / "absent.json"))
    assert op.inlets == []
    assert op.outlets == [op.asset_alias]


def test_a_manifest_declares_the_models_and_their_sources_as_inlets(manifest: Path) -> None:
    op = operator(outputs=DbtTaskOutputs(manifest_path=str(manifest)))
    assets = [i for i in op.inlets if isinstance(i, Asset)]
    assert len(assets) == len(op.inlets) == 4  # stg_a, fct, mart and source a
    uris = " ".join(a.uri for a in assets)
    for name in ("stg_a", "fct", "mart", "raw/a"):
        assert name in uris, (name, uris)
    assert "codes" not in uris and "not_null" not in uris
    assert op.outlets == [op.asset_alias]


def test_a_manifest_declares_only_the_selected_models(manifest: Path) -> None:
    op = operator(select="mart", outputs=DbtTaskOutputs(manifest_path=manifest))
    (asset,) = op.inlets
    assert isinstance(asset, Asset)
    assert "mart" in asset.uri


def test_a_templated_manifest_path_declares_nothing() -> None:
    op = operator(outputs=DbtTaskOutputs(manifest_path="{{ var.value.manifest }}"))
    assert op.inlets == []


def test_no_assets_at_all_when_emit_assets_is_off(manifest: Path) -> None:
    op = operator(outputs=DbtTaskOutputs(manifest_path=manifest, emit_assets=False))
    assert op.inlets == []
    assert op.outlets == []
