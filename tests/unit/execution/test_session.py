"""Session edge cases that need no dbt run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.session import DbtRunError, DbtSession
from airflow_provider_orchestra_dbt.state import LocalFileStateStore


def test_a_stop_before_the_worker_starts_fails_the_run_and_records_nothing(tmp_path: Path) -> None:
    (tmp_path / "dbt_project.yml").write_text("name: p\n")
    (tmp_path / "profiles.yml").write_text("p: {}\n")
    state = tmp_path / "state.json"
    session = DbtSession(
        DbtRunConfig.create(project_dir=tmp_path),
        LocalFileStateStore(state),
        logging.getLogger("test"),
    )
    session.stop()
    with pytest.raises(DbtRunError, match="stopped before it started; nothing ran"):
        session.run()
    assert not state.exists()
