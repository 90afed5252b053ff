"""The worker in its own dbt virtualenv (docs/design.md §2.1): no Airflow or provider, same results.

A second virtualenv gets dbt-core and dbt-duckdb at the versions of the test process (and the
same duckdb, so both read the warehouse file alike), made with uv from its local cache. The CLI
then runs with ``--dbt-python`` pointing at it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.tutorial import REPO, STATEFUL, Baseline, Workspace, built, decisions, executed_tests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORDERS_DOWNSTREAM = {
    "stg_orders", "int_orders_enriched", "int_customer_orders", "fct_orders",
    "fct_daily_revenue", "dim_customers", "mart_country_revenue", "mart_customer_revenue",
    "mart_order_status",
}  # fmt: skip
PINNED = ("dbt-core", "dbt-duckdb", "duckdb")
INSTALL_TIMEOUT_SECONDS = 300
UV_OVERRIDES = REPO / "bench" / "uv-overrides.txt"


def _uv(*args: str, cwd: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH: it is needed to create the separate dbt virtualenv")
    env = dict(os.environ, UV_HTTP_TIMEOUT="30", UV_NO_PROGRESS="1")
    env.pop("VIRTUAL_ENV", None)
    try:
        done = subprocess.run(
            [uv, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"`uv {' '.join(args)}` did not finish in {INSTALL_TIMEOUT_SECONDS}s: is PyPI (or "
            "the configured index) reachable? The packages are not all in uv's cache."
        )
    if done.returncode != 0:
        pytest.fail(
            f"`uv {' '.join(args)}` failed (exit {done.returncode}); is PyPI reachable?\n"
            f"{done.stderr[-3000:]}"
        )


def _base_python() -> str:
    """The interpreter the main virtualenv was made from."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / version
    return str(candidate if candidate.exists() else Path(sys.executable).resolve())


def _python(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as the worker would be run: inheriting this process's environment."""
    return subprocess.run(
        [str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def dbt_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dbt-only-venv")
    venv = root / "venv"
    _uv("venv", "--python", _base_python(), str(venv), cwd=root)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in PINNED]
    python = str(venv / "bin" / "python")
    _uv("pip", "install", "--python", python, "--override", str(UV_OVERRIDES), *pins, cwd=root)
    return venv / "bin" / "python"


def test_the_dbt_venv_has_dbt_but_neither_airflow_nor_this_package(
    dbt_python: Path, tmp_path: Path
) -> None:
    for module in ("airflow", "airflow_provider_orchestra_dbt"):
        done = _python(dbt_python, f"import {module}", tmp_path)
        assert done.returncode != 0, f"{module} is importable by {dbt_python}"
        assert f"No module named '{module}'" in done.stderr
    done = _python(
        dbt_python,
        "import sys, dbt.version, duckdb; print(sys.prefix, dbt.version.__version__)",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    prefix, version = done.stdout.split()
    assert Path(prefix) == dbt_python.parent.parent
    assert version == importlib.metadata.version("dbt-core")


def _run(ws: Workspace, caplog: pytest.LogCaptureFixture, *args: str) -> tuple[dict[str, Any], str]:
    """A CLI build; returns its report and the interpreter the worker said it ran under."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="orchestra_dbt"):
        report = ws.run("build", *args)
    said = [
        r.getMessage().split("worker python ", 1)[1]
        for r in caplog.records
        if "worker python " in r.getMessage()
    ]
    assert len(said) == 1, f"expected one worker python line, got {said}"
    return report, said[0]


def _outcome(report: dict[str, Any]) -> dict[str, Any]:
    """What a run decided and did, without timestamps."""
    return {
        "decisions": {n["unique_id"]: n["decision"] for n in report["nodes"]},
        "outcomes": {n["unique_id"]: n["outcome"] for n in report["nodes"]},
        "counts": report["counts"],
    }


def test_a_separate_dbt_venv_builds_and_reuses_exactly_like_the_main_interpreter(
    dbt_python: Path,
    baseline: Baseline,
    ws: Workspace,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The same new rows, once with the main interpreter and once with the dbt-only venv.
    main_ws = baseline.copy_to(tmp_path / "ws-main")
    main_ws.append("orders")
    ws.append("orders")
    main_report, main_python = _run(main_ws, caplog)
    report, worker_python = _run(ws, caplog, "--dbt-python", str(dbt_python))

    assert main_python == sys.executable
    assert worker_python == str(dbt_python)
    assert built(report) == ORDERS_DOWNSTREAM
    assert set(decisions(report, "reuse")) == STATEFUL - ORDERS_DOWNSTREAM
    assert "new data in source raw.orders" in decisions(report)["stg_orders"]
    assert report["failed"] == [] and report["skipped"] == []
    assert _outcome(report) == _outcome(main_report)
    assert executed_tests(report) == executed_tests(main_report)

    again, worker_python = _run(ws, caplog, "--dbt-python", str(dbt_python))
    assert worker_python == str(dbt_python)
    assert built(again) == set()
    assert set(decisions(again, "reuse")) == STATEFUL
    assert executed_tests(again) == set()
