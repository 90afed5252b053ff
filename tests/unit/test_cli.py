"""The command line maps its flags onto the run configuration the operator builds too."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.cli import build_parser, run_config


@pytest.mark.parametrize(
    ("flags", "key_prefix"),
    [([], None), (["--integration-account-id", " acct-42 "], "acct-42")],
)
def test_integration_account_id_becomes_the_state_key_prefix(
    project: Path, flags: list[str], key_prefix: str | None
) -> None:
    args = build_parser().parse_args(["build", "--project-dir", str(project), *flags])
    assert run_config(args, []).key_prefix == key_prefix


def test_declared_flags_reach_the_run_config(project: Path) -> None:
    argv = ["run", "--project-dir", str(project), "--threads", "3", "--no-reuse"]
    argv += ["--dbt-python", "/py", "--lock-timeout", "0", "-t", "dev", "-s", "a", "b+"]
    argv += ["--target-path", str(project / "t"), "--full-refresh"]
    config = run_config(build_parser().parse_args(argv), ["--fail-fast"])
    assert (config.command, config.threads, config.reuse, config.python) == ("run", 3, False, "/py")
    assert (config.lock_timeout, config.target, config.select) == (0.0, "dev", ("a", "b+"))
    assert config.target_path == project / "t" and config.full_refresh
    assert config.dbt_args == ("--fail-fast",) and not config.dry_run


def test_defaults_match_the_declarations(project: Path) -> None:
    args = build_parser().parse_args(["plan", "--project-dir", str(project)])
    config = run_config(args, [])
    assert config.dry_run and config.command == "build" and config.reuse
    assert config.lock_timeout == 3600.0 and config.threads is None
