"""``--state-uri`` picks the state store on the command line; ``--state-file`` is its local twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.cli import build_parser, main, state_store
from airflow_provider_orchestra_dbt.state import LocalFileStateStore, S3StateStore


def store_for(*flags: str) -> object:
    parser = build_parser()
    return state_store(parser, parser.parse_args(["build", *flags]))


def test_state_file_state_uri_or_neither(tmp_path: Path) -> None:
    assert store_for() is None
    local = store_for("--state-file", str(tmp_path / "a.json"))
    assert isinstance(local, LocalFileStateStore) and local.path == tmp_path / "a.json"
    uri = store_for("--state-uri", (tmp_path / "b.json").as_uri())
    assert isinstance(uri, LocalFileStateStore) and uri.path == tmp_path / "b.json"
    s3 = store_for("--state-uri", "s3://bucket/dbt/state.json")
    assert isinstance(s3, S3StateStore) and s3.uri == "s3://bucket/dbt/state.json"


def test_state_file_and_state_uri_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["build", "--state-file", "a.json", "--state-uri", "b.json"])
    assert exited.value.code == 2
    assert "argument --state-uri: not allowed with argument --state-file" in capsys.readouterr().err


def test_a_bad_state_uri_exits_2_before_dbt_naming_the_flag_not_the_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["build", "--project-dir", "/nowhere", "--state-uri", "https://:k3y-42@example.com"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: --state-uri: state URI 'https://***@example.com' carries credentials" in err
    assert "k3y-42" not in err
    assert "project_dir" not in err, "the arguments are checked before the run starts"
