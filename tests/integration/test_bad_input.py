"""Bad input through the CLI against real dbt: a clear error naming the culprit, nothing lost."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from support.tutorial import Workspace

pytestmark = pytest.mark.integration


def failure(ws: Workspace, caplog: pytest.LogCaptureFixture, *args: str) -> str:
    """Run expecting exit 2; return the error logged; the state file must be untouched."""
    state = ws.state_file.read_bytes()
    with caplog.at_level(logging.ERROR, logger="orchestra_dbt"):
        ws.run(*args, expect_exit=2)
    assert ws.state_file.read_bytes() == state
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "no error was logged"
    return errors[-1]


def test_unknown_target_surfaces_dbt_message(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    message = failure(ws, caplog, "build", "--target", "nope")
    assert "dbt could not parse dbt project" in message and "(target 'nope')" in message
    assert "nope" in message.split(":", 1)[1]


def test_invalid_selection_surfaces_dbt_message(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    message = failure(ws, caplog, "build", "--select", "bogus_method:x")
    assert "dbt rejected the selection" in message
    assert "'bogus_method' is not a valid method name" in message


def test_worker_python_without_dbt(
    ws: Workspace, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    venv = tmp_path / "no-dbt"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    message = failure(ws, caplog, "build", "--dbt-python", str(python))
    assert f"dbt is not importable by {python}" in message
    assert "No module named 'dbt'" in message


def test_missing_worker_interpreter(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    message = failure(ws, caplog, "build", "--dbt-python", "/no/such/python")
    assert "cannot start the dbt worker with python '/no/such/python'" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"state": {', "is not valid JSON"),
        (b'{"state": []}', "state"),
        (b'{"state": {"k": {"checksum": 1}}}', "checksum"),
    ],
)
def test_bad_state_file_is_reported_and_left_untouched(
    ws: Workspace, caplog: pytest.LogCaptureFixture, content: bytes, problem: str
) -> None:
    ws.state_file.write_bytes(content)
    message = failure(ws, caplog, "build")
    assert str(ws.state_file) in message and problem in message
    assert ws.state_file.read_bytes() == content


def test_vars_that_are_not_a_mapping(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    message = failure(ws, caplog, "build", "--vars", "[1, 2]")
    assert message == "vars must be a mapping of names to values, got list"


def test_not_a_dbt_project(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    (ws.project / "dbt_project.yml").rename(ws.root / "moved.yml")
    try:
        message = failure(ws, caplog, "build")
    finally:
        (ws.root / "moved.yml").rename(ws.project / "dbt_project.yml")
    assert message == f"project_dir {str(ws.project)!r} is not a dbt project (no dbt_project.yml)"
