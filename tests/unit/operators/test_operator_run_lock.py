"""Operator arguments for concurrent runs: a templated target_path, and lock_timeout."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import run_lock_path
from airflow_provider_orchestra_dbt.execution.run_lock import RunLock
from airflow_provider_orchestra_dbt.operators.options import DbtExecutionOptions, DbtTaskOutputs
from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator


def test_target_path_is_rendered_per_run(project: Path, tmp_path: Path) -> None:
    op = OrchestraDbtOperator(
        task_id="dbt",
        project_dir=project,
        execution=DbtExecutionOptions(target_path=f"{tmp_path}/artifacts/{{{{ run_id }}}}"),
        outputs=DbtTaskOutputs(emit_assets=False),
    )
    running = op.prepare_for_execution()
    running.render_template_fields({"run_id": "manual__1"})  # type: ignore[arg-type]
    assert running.execution.target_path == f"{tmp_path}/artifacts/manual__1"
    assert op.execution.target_path.endswith("{{ run_id }}"), "the DAG's operator keeps it"


def test_lock_timeout_zero_fails_the_task_at_once_naming_the_holder(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ORCHESTRA_DBT_STATE_FILE", str(tmp_path / "state.json"))
    # `seed` passes through: it takes the lock before starting dbt, so no dbt is needed here.
    op = OrchestraDbtOperator(
        task_id="dbt",
        project_dir=project,
        command="seed",
        execution=DbtExecutionOptions(lock_timeout=0),
        outputs=DbtTaskOutputs(emit_assets=False),
    )
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="dbt", try_number=1, map_index=-1)
    path = run_lock_path(DbtRunConfig.create(project_dir=project))
    log = logging.getLogger("test")
    errors: list[BaseException] = []

    def execute() -> None:
        try:
            op.execute({"ti": ti})  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    with RunLock(path, what="x", timeout=0, log=log, label="other run"):
        task = threading.Thread(target=execute, daemon=True)
        task.start()
        task.join(10)
        if task.is_alive():
            op.on_kill()  # interrupts the wait, so a failing test does not hang
            task.join(10)
            pytest.fail("the task waited although lock_timeout is 0")
    [error] = errors
    assert isinstance(error, AirflowException)
    assert str(error).startswith(f"dbt: another run of dbt project {project} holds")
    assert "(other run); gave up after 0s (lock_timeout=0)" in str(error)
