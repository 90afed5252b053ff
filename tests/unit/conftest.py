"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The smallest directory a run config accepts: a dbt project with its profiles.yml."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: p\n")
    (project / "profiles.yml").write_text("p: {}\n")
    return project
