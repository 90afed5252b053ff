"""OpenLineage facets: inputs and outputs of the nodes a run built, with adapter naming."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.synthetic_graph import M1, M2, NOW, SEED, STG, base_graph, fingerprints, fresh_probe

from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.decisions.planner import PlanOptions, plan
from airflow_provider_orchestra_dbt.operators.options import DbtTaskOutputs
from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator
from airflow_provider_orchestra_dbt.presentation.report import RunReport


@pytest.fixture
def operator(tmp_path: Path) -> OrchestraDbtOperator:
    (tmp_path / "dbt_project.yml").write_text("name: p\nprofile: prof\n")
    (tmp_path / "profiles.yml").write_text(
        "prof:\n  target: pg\n  outputs:\n    pg: {type: postgres, host: wh.example, port: 5432}\n"
    )
    return OrchestraDbtOperator(
        task_id="dbt", project_dir=tmp_path, outputs=DbtTaskOutputs(emit_assets=False)
    )


def report_building(*built: str) -> RunReport:
    graph = base_graph()
    graph.adapter_type = "postgres"
    state = {}  # nothing recorded: every selected node builds
    the_plan = plan(
        graph, [STG, M1, M2, SEED], state, fingerprints(), fresh_probe(), PlanOptions(now=NOW)
    )
    results = {
        uid: NodeResult(uid, "success" if uid in built else "skipped")
        for uid in the_plan.to_execute()
    }
    return RunReport("build", None, 0, graph=graph, plan=the_plan, results=results)


def test_facets_list_built_outputs_and_their_inputs(operator: OrchestraDbtOperator) -> None:
    operator._report = report_building(M1, M2)
    lineage = operator.get_openlineage_facets_on_complete(None)
    outputs = {(d.namespace, d.name) for d in lineage.outputs}
    inputs = {(d.namespace, d.name) for d in lineage.inputs}
    ns = "postgres://wh.example:5432"
    assert outputs == {(ns, "db.main.m1"), (ns, "db.main.m2")}
    # m1 reads stg_a and (through the ephemeral eph) source raw.b; m2 reads m1 and the seed.
    assert inputs == {
        (ns, "db.main.stg_a"),
        (ns, "db.raw.b"),
        (ns, "db.main.m1"),
        (ns, "db.main.s1"),
    }


def test_no_report_means_no_facets(operator: OrchestraDbtOperator) -> None:
    assert operator.get_openlineage_facets_on_complete(None) is None


def test_the_dbt_cloud_operator_reports_the_same_datasets_named_without_a_profile() -> None:
    from airflow_provider_orchestra_dbt.operators.orchestra_dbt_cloud import (
        OrchestraDbtCloudOperator,
    )

    cloud = OrchestraDbtCloudOperator(task_id="cloud", job_id=1)
    cloud._report = report_building(M1)
    lineage = cloud.get_openlineage_facets_on_complete(None)
    # dbt Cloud's profile is not readable here: the namespace is the adapter and database.
    assert {(d.namespace, d.name) for d in lineage.outputs} == {("postgres://db", "db.main.m1")}
    assert ("postgres://db", "db.main.stg_a") in {(d.namespace, d.name) for d in lineage.inputs}
