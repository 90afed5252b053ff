"""The command line maps its flags onto the run configuration the operator builds too."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.cli import build_parser, run_config


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "dbt_project.yml").write_text("name: p\n")
    (tmp_path / "profiles.yml").write_text("p: {}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("flags", "key_prefix"),
    [([], None), (["--integration-account-id", " acct-42 "], "acct-42")],
)
def test_integration_account_id_becomes_the_state_key_prefix(
    project: Path, flags: list[str], key_prefix: str | None
) -> None:
    args = build_parser().parse_args(["build", "--project-dir", str(project), *flags])
    assert run_config(args, []).key_prefix == key_prefix
