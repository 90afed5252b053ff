"""The worker's hello decides, before dbt is imported, whether a run can go on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.worker.client import WORKER_SCRIPT
from airflow_provider_orchestra_dbt.worker.compat import (
    IncompatibleWorker,
    WorkerHello,
    check_worker,
)
from airflow_provider_orchestra_dbt.worker.dbt_worker import PROTOCOL_VERSION, hello_message


def _hello(
    version: str | None, distribution: str | None = "dbt-core", protocol: int = 1
) -> WorkerHello:
    return WorkerHello(
        protocol=protocol,
        worker="dbt-core-python",
        python="/opt/dbt/bin/python",
        dbt_distribution=distribution,
        dbt_version=version,
    )


@pytest.mark.parametrize("version", ["1.10.0", "1.10.23", "1.11.16", "1.12.6", "1.12.0rc1"])
def test_tested_dbt_versions_go_on_quietly(version: str) -> None:
    assert check_worker(_hello(version)) is None


def test_a_newer_dbt_1_goes_on_with_a_warning_naming_it() -> None:
    warning = check_worker(_hello("1.13.0b1"))
    assert warning is not None
    assert "dbt-core 1.13.0b1" in warning and "1.10 to 1.12" in warning


@pytest.mark.parametrize(
    ("distribution", "version"),
    [("dbt-core", "2.0.0rc9"), ("dbt", "2.0.1"), ("dbt-fusion", "2.1.0")],
)
def test_dbt_2_is_turned_away_with_the_version_found_and_what_to_do(
    distribution: str, version: str
) -> None:
    with pytest.raises(IncompatibleWorker) as caught:
        check_worker(_hello(version, distribution))
    message = str(caught.value)
    assert f"{distribution} {version} found for python /opt/dbt/bin/python" in message
    assert "dbt_python" in message and "--dbt-python" in message
    assert "dbt-core>=1.10,<1.13" in message


def test_an_older_dbt_is_turned_away() -> None:
    with pytest.raises(IncompatibleWorker, match=r"dbt-core 1\.9\.4 found .* older than"):
        check_worker(_hello("1.9.4"))


def test_another_protocol_is_turned_away_before_looking_at_dbt() -> None:
    with pytest.raises(IncompatibleWorker, match="speaks protocol 2"):
        check_worker(_hello("1.12.6", protocol=2))


@pytest.mark.parametrize("protocol", [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1])
def test_a_hello_of_another_protocol_than_the_start_we_send_is_turned_away(protocol: int) -> None:
    # The parent sends PROTOCOL_VERSION in "start"; a worker announcing another number (from
    # another installed version of this package) is turned away before that, saying what to do.
    with pytest.raises(IncompatibleWorker) as caught:
        check_worker(_hello("1.12.6", protocol=protocol))
    assert str(caught.value) == (
        f"the dbt worker (dbt-core-python, python /opt/dbt/bin/python) speaks protocol "
        f"{protocol}, this provider speaks {PROTOCOL_VERSION}: install the same "
        "airflow-provider-orchestra-dbt version where the worker runs"
    )


def test_the_protocol_this_worker_announces_is_the_one_the_parent_accepts() -> None:
    assert check_worker(WorkerHello.from_message(hello_message())) is None
    assert WorkerHello.from_message({}).protocol == 0  # no number at all: turned away


def test_no_dbt_installed_is_left_to_the_import_which_says_it_in_dbt_s_words() -> None:
    assert check_worker(_hello(None, None)) is None


def test_hello_names_the_dbt_this_interpreter_has() -> None:
    from importlib.metadata import version

    hello = WorkerHello.from_message(hello_message())
    assert hello.protocol == PROTOCOL_VERSION
    assert (hello.dbt_distribution, hello.dbt_version) == ("dbt-core", version("dbt-core"))
    assert hello.python == sys.executable


def test_the_worker_says_hello_first_and_refuses_a_parent_of_another_protocol() -> None:
    done = subprocess.run(
        [sys.executable, str(WORKER_SCRIPT)],
        input=json.dumps({"type": "start", "protocol": 99}) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert [m["type"] for m in messages] == ["hello", "error"]
    assert messages[1]["stage"] == "protocol"
    assert "parent speaks protocol 99" in messages[1]["message"]
    assert done.returncode == 2


def test_dbt_2_installed_over_dbt_core_1_is_what_the_worker_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Installed together, dbt 2's files replace the `dbt` package: the 1.x metadata lies.
    dist_info = tmp_path / "dbt-2.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: dbt\nVersion: 2.0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hello = WorkerHello.from_message(hello_message())
    assert (hello.dbt_distribution, hello.dbt_version) == ("dbt", "2.0.1")
    with pytest.raises(IncompatibleWorker, match=r"dbt 2\.0\.1 found"):
        check_worker(hello)
