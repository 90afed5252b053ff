"""What the dbt worker prints besides dbt: no exit warnings, no error printed twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from airflow_provider_orchestra_dbt.worker import dbt_worker
from airflow_provider_orchestra_dbt.worker.client import WORKER_SCRIPT


def test_exiting_at_once_leaves_no_semaphore_for_the_resource_tracker_to_report() -> None:
    # dbt's manifest and connection locks are spawn-context locks, as these are.
    code = textwrap.dedent(
        f"""
        import multiprocessing, sys
        sys.path.insert(0, {str(WORKER_SCRIPT.parent)!r})
        import dbt_worker
        spawn = multiprocessing.get_context("spawn")
        locks = [spawn.Lock(), spawn.RLock()]
        dbt_worker._exit_now(3)
        """
    )
    # The tracker process shares stderr: run() returns once it has exited too.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "leaked semaphore" not in done.stderr
    assert done.stderr == ""


def test_held_console_output_is_dropped_unless_released(capfd: pytest.CaptureFixture[str]) -> None:
    with dbt_worker._held_stdout() as dropped:
        os.write(1, b"Encountered an error: the same words as the error message\n")
    assert capfd.readouterr().out == ""
    assert "the same words" in dropped.held

    with dbt_worker._held_stdout() as kept:
        os.write(1, b"dbt's only account of a failure\n")
    kept.release()
    assert capfd.readouterr().out == "dbt's only account of a failure\n"
