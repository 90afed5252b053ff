"""One case per row of the README's "Bad input" table: the message must match the README.

Each case triggers its row for real (the CLI against real dbt, the hook on a real
connection, the local store on a real file) and returns the error text; the README's `<…>`
placeholders match any text. Cases that reach a state file also check it is left untouched.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.tutorial import REPO, Workspace

from airflow_provider_orchestra_dbt.execution.config import ConfigError, DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import run_lock_path
from airflow_provider_orchestra_dbt.execution.run_lock import RunLock
from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import OrchestraDbtHook
from airflow_provider_orchestra_dbt.state import LocalFileStateStore, StateError

pytestmark = pytest.mark.integration

CONN_ID = "bad_conn"


def readme_rows() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Bad input and the errors it gives", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| .*? \| (.*) \|$", section, flags=re.M)
    return {case: error.strip() for case, error in rows}


def as_pattern(documented: str) -> re.Pattern[str]:
    text = documented.removeprefix("not an error: the run continues and the plan says ")
    parts = re.split(r"<[^>]+>", text.strip("`").replace("` ", "").replace("`", ""))
    return re.compile(".+".join(re.escape(p) for p in parts), re.DOTALL)


# -- how each row is triggered ------------------------------------------------------------------


def cli_error(ws: Workspace, caplog: pytest.LogCaptureFixture, *args: str) -> str:
    """Run the CLI expecting exit 2; the state file must come out untouched."""
    state = ws.state_file.read_bytes()
    with caplog.at_level(logging.ERROR, logger="orchestra_dbt"):
        ws.run(*args, expect_exit=2)
    assert ws.state_file.read_bytes() == state, "a failed run changed the state"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "no error was logged"
    return errors[-1]


def config_error(ws: Workspace, **kwargs: object) -> str:
    args = {"project_dir": ws.project, "profiles_dir": ws.project, **kwargs}
    with pytest.raises(ConfigError) as caught:
        DbtRunConfig.create(**args)  # type: ignore[arg-type]
    return str(caught.value)


def profiles_not_found(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, tmp: Path, profiles_env: str | None = None
) -> str:
    """No profiles_dir: dbt's own lookup, in a project without profiles.yml and an empty home."""
    project = tmp / "project"
    project.mkdir()
    (project / "dbt_project.yml").write_bytes((ws.project / "dbt_project.yml").read_bytes())
    monkeypatch.setenv("HOME", str(tmp / "home"))
    if profiles_env is None:
        monkeypatch.delenv("DBT_PROFILES_DIR", raising=False)
    else:
        monkeypatch.setenv("DBT_PROFILES_DIR", profiles_env)
    return config_error(ws, project_dir=project, profiles_dir=None)


def connection_error(monkeypatch: pytest.MonkeyPatch, extra: dict, password: str = "") -> str:
    payload = {"conn_type": "orchestra_dbt", "extra": extra, "password": password}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(payload))
    with pytest.raises(ValueError) as caught:
        _ = OrchestraDbtHook(CONN_ID).config
    return str(caught.value)


def state_error(ws: Workspace, caplog: pytest.LogCaptureFixture, content: bytes) -> str:
    ws.state_file.write_bytes(content)
    with pytest.raises(StateError) as caught:
        LocalFileStateStore(ws.state_file).load()
    assert cli_error(ws, caplog, "build") == str(caught.value)
    assert ws.state_file.read_bytes() == content, "an invalid state file was overwritten"
    return str(caught.value)


def venv_without_dbt(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    return root / "bin" / "python"


def venv_with_dbt_metadata(root: Path, version: str) -> Path:
    """An interpreter whose dbt-core is ``version`` as far as installed metadata says.

    dbt 2 cannot be installed here (its wheel is downloaded at build time); the worker reads
    only the installed distribution's metadata before turning it away, so that is all it gets.
    """
    python = venv_without_dbt(root)
    site = next((root / "lib").glob("python3*/site-packages"))
    dist_info = site / f"dbt_core-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: dbt-core\nVersion: {version}\n"
    )
    return python


def dbt_crash(ws: Workspace, caplog: pytest.LogCaptureFixture) -> str:
    ws.append("orders")  # something to build, so dbt really runs with the bad flag
    return cli_error(ws, caplog, "build", "--", "--no-such-dbt-flag")


def run_locked(ws: Workspace, caplog: pytest.LogCaptureFixture) -> str:
    """Another run of the project and target holds the lock; this one may not wait."""
    config = DbtRunConfig.create(project_dir=ws.project, profiles_dir=ws.project)
    log = logging.getLogger("test")
    with RunLock(run_lock_path(config), what="x", timeout=0, log=log, label="dag_id=other"):
        return cli_error(ws, caplog, "build", "--lock-timeout", "0")


def freshness_reason(ws: Workspace) -> str:
    ws.edit("models/staging/_sources.yml", "_loaded_at", "_no_such_column")
    # Every source's loaded_at_field changed, so everything would build: one model will do.
    report = ws.run("build", "--select", "stg_orders")
    assert report["failed"] == [], "the run must continue"
    [reason] = [n["reason"] for n in report["nodes"] if n["unique_id"].endswith(".stg_orders")]
    return str(reason)


Case = Callable[[Workspace, pytest.LogCaptureFixture, pytest.MonkeyPatch, Path], str]
CASES: dict[str, Case] = {
    "project-missing": lambda ws, c, m, t: config_error(ws, project_dir=t / "nope"),
    "not-a-dbt-project": lambda ws, c, m, t: config_error(ws, project_dir=t),
    "profiles-missing": lambda ws, c, m, t: config_error(ws, profiles_dir=t),
    "profiles-not-found": lambda ws, c, m, t: profiles_not_found(ws, m, t),
    "profiles-env-missing": lambda ws, c, m, t: profiles_not_found(ws, m, t, str(t / "nope")),
    "target-unknown": lambda ws, c, m, t: cli_error(ws, c, "build", "--target", "nope"),
    "selection-invalid": lambda ws, c, m, t: cli_error(ws, c, "build", "-s", "bogus_method:x"),
    "vars-not-mapping": lambda ws, c, m, t: cli_error(ws, c, "build", "--vars", "[1, 2]"),
    "vars-invalid-yaml": lambda ws, c, m, t: config_error(ws, vars="{a: [unclosed"),
    "threads-invalid": lambda ws, c, m, t: config_error(ws, threads=0),
    "dbt-args-state": lambda ws, c, m, t: config_error(ws, dbt_args=["--state", "prod"]),
    "dbt-args-string": lambda ws, c, m, t: config_error(ws, dbt_args="--fail-fast"),
    "dbt-not-importable": lambda ws, c, m, t: cli_error(
        ws, c, "build", "--dbt-python", str(venv_without_dbt(t / "venv"))
    ),
    "dbt-2": lambda ws, c, m, t: cli_error(
        ws, c, "build", "--dbt-python", str(venv_with_dbt_metadata(t / "venv", "2.0.0rc9"))
    ),
    "dbt-too-old": lambda ws, c, m, t: cli_error(
        ws, c, "build", "--dbt-python", str(venv_with_dbt_metadata(t / "venv", "1.9.10"))
    ),
    "dbt-python-missing": lambda ws, c, m, t: cli_error(
        ws, c, "build", "--dbt-python", str(t / "no" / "python")
    ),
    "dbt-crash": lambda ws, c, m, t: dbt_crash(ws, c),
    "lock-timeout-invalid": lambda ws, c, m, t: config_error(ws, lock_timeout=-1),
    "run-locked": lambda ws, c, m, t: run_locked(ws, c),
    "backend-unknown": lambda ws, c, m, t: connection_error(m, {"backend": "ftp"}),
    "local-without-uri": lambda ws, c, m, t: connection_error(m, {"backend": "local"}),
    "s3-uri-without-key": lambda ws, c, m, t: connection_error(
        m, {"backend": "s3", "state_uri": "s3://bucket"}
    ),
    "http-without-key": lambda ws, c, m, t: connection_error(m, {"backend": "http"}),
    "base-url-malformed": lambda ws, c, m, t: connection_error(
        m, {"backend": "http", "base_url": "ftp://x"}, password="k"
    ),
    "timeout-invalid": lambda ws, c, m, t: connection_error(
        m, {"backend": "local", "state_uri": "/s.json", "timeout": "soon"}
    ),
    "state-not-json": lambda ws, c, m, t: state_error(ws, c, b'{"state": {'),
    "state-wrong-shape": lambda ws, c, m, t: state_error(ws, c, b'{"state": []}'),
    "state-bad-entry": lambda ws, c, m, t: state_error(ws, c, b'{"state": {"k": {"checksum": 1}}}'),
    "freshness-fails": lambda ws, c, m, t: freshness_reason(ws),
}


def test_every_readme_row_has_a_case() -> None:
    assert set(readme_rows()) == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_the_documented_error(
    case: str,
    ws: Workspace,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    message = CASES[case](ws, caplog, monkeypatch, tmp_path)
    documented = readme_rows()[case]
    assert as_pattern(documented).fullmatch(message), f"{message!r} !~ {documented!r}"
