"""Two CLI runs of the tutorial project at once, as OS processes, for the tests of taking turns.

A test holds the lock (or lease) the runs wait for, its "gate", while both start, so both are
known to be waiting before either can get it: no timing luck, no sleeps. Then it lets go, they
race, and each run's own run_results.json tells when its dbt work started and ended, which is
how the tests see that the two runs' work did not overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from support.tutorial import Workspace, short

# Each run re-aggregates its own data interval (as two DAG runs of the tutorial DAG do).
INTERVALS = {
    "a": {"data_interval_start": "2024-01-01", "data_interval_end": "2024-03-01"},
    "b": {"data_interval_start": "2024-03-01", "data_interval_end": "2024-05-01"},
}
STARTUP_BOUND = 180.0  # seconds for a run to start, parse and reach the gate; it takes a few
RUN_BOUND = 300.0
GATE = "gate"
"""The label the test's own lock or lease holder goes by; the waiting runs' logs name it."""


class CliRun:
    """One ``python -m airflow_provider_orchestra_dbt build``, its output in a file."""

    def __init__(
        self,
        ws: Workspace,
        name: str,
        state_flags: Sequence[str],
        env: Mapping[str, str],
        *args: str,
    ) -> None:
        """A run of ``INTERVALS[name]`` (when ``name`` has one) with extra CLI ``args``."""
        self.name = name
        self.log_path = ws.root / f"{name}.log"
        self.report_path = ws.root / f"{name}-report.json"
        self.target_path = ws.root / f"{name}-target"
        argv = [
            sys.executable, "-m", "airflow_provider_orchestra_dbt", "build",
            "--project-dir", str(ws.project),
            "--profiles-dir", str(ws.project),
            *state_flags,
            "--report", str(self.report_path),
            "--target-path", str(self.target_path),
            *(["--vars", json.dumps(INTERVALS[name])] if name in INTERVALS else []),
            *(["--target", ws.target] if ws.pg else []),
            *args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return report

    def _results(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = json.loads(
            (self.target_path / "run_results.json").read_text()
        )["results"]
        return results

    def artifacts(self) -> set[str]:
        """Nodes in this run's own run_results.json."""
        return {short(r["unique_id"]) for r in self._results()}

    def window(self) -> tuple[datetime, datetime]:
        """When this run's dbt work started and ended, from its run_results.json."""
        moments = [
            utc(t[k])
            for r in self._results()
            for t in r["timing"]
            for k in ("started_at", "completed_at")
        ]
        return min(moments), max(moments)

    def wait_until_logged(self, text: str, timeout: float = STARTUP_BOUND) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None, f"run {self.name} ended early:\n{self.log[-5000:]}"
            assert time.monotonic() < deadline, f"run {self.name} never logged {text!r}"
            time.sleep(0.05)

    def finish(self) -> int:
        """Wait for the run to end; its exit code."""
        try:
            return self.proc.wait(RUN_BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"run {self.name} did not finish:\n{self.log[-5000:]}") from None

    def succeed(self) -> None:
        """Wait for the run to end, and fail the test unless it exits with 0."""
        code = self.finish()
        assert code == 0, f"run {self.name} exited {code}:\n{self.log[-5000:]}"


@contextmanager
def started(
    ws: Workspace,
    state_flags: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    own_cache_dirs: bool = False,
) -> Iterator[list[CliRun]]:
    """The runs of ``INTERVALS``, started at once, killed on the way out if still running.

    ``own_cache_dirs`` gives each run a cache dir, and so a machine-local run lock, of its
    own, as on two machines; ``env`` is added to the test's environment.
    """
    with ws.env():
        base = {**os.environ, **(env or {})}
    runs: list[CliRun] = []
    with reaped(runs):
        for name in INTERVALS:
            run_env = dict(base)
            if own_cache_dirs:
                run_env["ORCHESTRA_DBT_CACHE_DIR"] = str(ws.root / f"cache-{name}")
            runs.append(CliRun(ws, name, state_flags, run_env))
        yield runs


@contextmanager
def reaped(runs: list[CliRun]) -> Iterator[None]:
    """Runs still going when the block ends (a failed test) are killed."""
    try:
        yield
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


def race_after_gate(
    runs: Sequence[CliRun], waiting: str, release_gate: Callable[[], object]
) -> None:
    """Wait until every run logs ``waiting`` for the gate, release it, and see them all succeed."""
    for run in runs:
        run.wait_until_logged(waiting)
        assert f"({GATE})" in run.log, "the waiting line names the holder"
    release_gate()
    for run in runs:
        run.succeed()


def in_turn(runs: Sequence[CliRun], held_by: str) -> tuple[CliRun, CliRun]:
    """``(first, second)``: the run that went first, and the one whose log says it waited for it.

    The waiting run's log names the other by ``held_by`` and its pid. Fails the test unless
    one run did wait for the other and their dbt work did not overlap.
    """
    a, b = runs
    first, second = (a, b) if f"{held_by}{a.proc.pid} " in b.log else (b, a)
    assert f"{held_by}{first.proc.pid} " in second.log, second.log[-5000:]
    assert first.window()[1] <= second.window()[0], "the dbt work of the two runs overlapped"
    return first, second


def utc(text: str) -> datetime:
    """A dbt or state timestamp (ISO 8601, 'Z' or an offset; dbt's are UTC) as aware UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
