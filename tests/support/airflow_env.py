"""Real Airflow in subprocesses, isolated per test session.

``AirflowEnv`` owns a temp ``AIRFLOW_HOME`` (SQLite metadata DB, migrated once) and a temp
dags folder. Tests write small DAG files into it and run them with ``airflow dags test``;
results are read back from the metadata DB (XCom values are JSON in 3.x).

Nothing of the caller's Airflow configuration leaks in: every ``AIRFLOW*`` variable of the
parent environment is dropped before ours are set.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from support.tutorial import IGNORED, TUTORIAL, Workspace

T = TypeVar("T")
DAGS_TEST_TIMEOUT = 300.0
# A freshly migrated SQLite metadata DB, copied by AirflowEnv.create (one migrate per session).
_MIGRATED_DB: Path | None = None


def tutorial_env(ws: Workspace) -> dict[str, str]:
    """What the tutorial DAG and the generated DAGs read: this workspace's project, DB, state."""
    return {
        "TUTORIAL_DUCKDB_PATH": str(ws.warehouse),
        "ORCHESTRA_DBT_STATE_FILE": str(ws.state_file),
        "ORCHESTRA_DBT_TUTORIAL_DIR": str(ws.project),
    }


def fresh_workspace(root: Path) -> Workspace:
    """A copy of the tutorial with no warehouse and no state: the very first run."""
    ws = Workspace(root)
    shutil.copytree(TUTORIAL, ws.project, ignore=IGNORED)
    ws.warehouse.parent.mkdir(parents=True)
    return ws


def db_timestamp(logical_date: str) -> str:
    """``2026-02-01`` (UTC unless zoned) as Airflow stores it in SQLite."""
    when = datetime.fromisoformat(logical_date)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class AirflowEnv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.dags = root / "dags"
        self.outputs = root / "outputs"
        for path in (self.home, self.dags, self.outputs):
            path.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "airflow.db"
        self._runs = 0

    @classmethod
    def create(cls, root: Path) -> AirflowEnv:
        """A new home with a migrated metadata DB: the session's first ``db migrate`` (about
        10 s of CPU) is kept as a template, and later homes start from a copy of it."""
        global _MIGRATED_DB
        env = cls(root)
        if _MIGRATED_DB is not None and _MIGRATED_DB.exists():
            shutil.copyfile(_MIGRATED_DB, env.db_path)
            return env
        env.airflow("db", "migrate", timeout=300).check_returncode()
        template = Path(tempfile.mkdtemp(prefix="orchestra-dbt-tests-airflow-db-")) / "airflow.db"
        shutil.copyfile(env.db_path, template)
        atexit.register(shutil.rmtree, template.parent, True)
        _MIGRATED_DB = template
        return env

    # -- processes -----------------------------------------------------------------------------

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def airflow(
        self, *args: str, extra_env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the airflow CLI; stdout and stderr are merged (task logs go to stdout)."""
        return subprocess.run(
            self._argv(args),
            env=self.environ(extra_env),
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )

    def add_dag(self, filename: str, source: str) -> Path:
        path = self.dags / filename
        path.write_text(source)
        return path

    def dags_test(
        self,
        dag_id: str,
        logical_date: str,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = DAGS_TEST_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """``airflow dags test``: one DAG run, tasks in-process; output kept for debugging."""
        result = self.airflow(
            "dags", "test", dag_id, logical_date, extra_env=extra_env, timeout=timeout
        )
        self._runs += 1
        (self.outputs / f"{self._runs:02d}-{dag_id}-{logical_date}.log").write_text(result.stdout)
        return result

    def start_dags_test(
        self,
        dag_id: str,
        logical_date: str,
        output: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``airflow dags test`` in its own session, output to a file (no pipe to fill)."""
        return self.start(["dags", "test", dag_id, logical_date], output, extra_env)

    def start(
        self, args: Sequence[str], output: Path, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``airflow <args>`` in its own session, output to a file (no pipe to fill);
        stop it with :func:`stop_processes`."""
        with output.open("wb") as sink:
            return subprocess.Popen(
                self._argv(args),
                env=self.environ(extra_env),
                cwd=self.root,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    # -- the metadata DB -----------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, tuple(params)).fetchall()
        finally:
            con.close()

    def run_id(self, dag_id: str, logical_date: str) -> str:
        rows = self.query(
            "select run_id from dag_run where dag_id = ? and logical_date = ?",
            (dag_id, db_timestamp(logical_date)),
        )
        assert len(rows) == 1, f"{dag_id} @ {logical_date}: {len(rows)} DAG runs"
        return str(rows[0][0])

    def dag_run_state(self, dag_id: str, logical_date: str) -> str:
        rows = self.query(
            "select state from dag_run where dag_id = ? and run_id = ?",
            (dag_id, self.run_id(dag_id, logical_date)),
        )
        return str(rows[0][0])

    def xcom(
        self, dag_id: str, task_id: str, key: str = "return_value", *, logical_date: str
    ) -> Any:
        rows = self.query(
            "select value from xcom where dag_id = ? and run_id = ? and task_id = ? "
            "and map_index = -1 and key = ?",
            (dag_id, self.run_id(dag_id, logical_date), task_id, key),
        )
        assert rows, f"no XCom {key!r} for {dag_id}.{task_id} @ {logical_date}"
        return json.loads(rows[0][0])

    def tries(self, dag_id: str, task_id: str, *, logical_date: str) -> list[tuple[int, str]]:
        """(try_number, state) of every try, oldest first: history plus the current try."""
        params = (dag_id, self.run_id(dag_id, logical_date), task_id)
        where = "where dag_id = ? and run_id = ? and task_id = ? and map_index = -1"
        history = self.query(f"select try_number, state from task_instance_history {where}", params)
        current = self.query(f"select try_number, state from task_instance {where}", params)
        return sorted((int(n), str(s)) for n, s in [*history, *current])

    def rendered_fields(self, dag_id: str, task_id: str, *, logical_date: str) -> dict[str, Any]:
        rows = self.query(
            "select rendered_fields from rendered_task_instance_fields "
            "where dag_id = ? and run_id = ? and task_id = ? and map_index = -1",
            (dag_id, self.run_id(dag_id, logical_date), task_id),
        )
        assert rows, f"no rendered fields for {dag_id}.{task_id} @ {logical_date}"
        fields: dict[str, Any] = json.loads(rows[0][0])
        return fields


# -- polling and processes (Linux /proc) -------------------------------------------------------


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    cpu_seconds: float
    cmdline: str


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # Fields after the parenthesised command name (which may itself contain spaces).
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has run its course
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / ticks,
        cmdline=raw.replace(b"\0", b" ").decode(errors="replace").strip(),
    )


def processes() -> list[Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (proc := _read_proc(int(entry.name))) is not None:
            found.append(proc)
    return found


def process(pid: int) -> Proc | None:
    return _read_proc(pid)


def group_members(pgid: int) -> list[Proc]:
    return [p for p in processes() if p.pgid == pgid]


def children(ppid: int, cmdline_contains: str) -> list[Proc]:
    return [p for p in processes() if p.ppid == ppid and cmdline_contains in p.cmdline]


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def end_process(proc: subprocess.Popen[Any], ask: Callable[[], object], timeout: float) -> None:
    """Ask ``proc`` to end (``ask``: terminate it, close its stdin...), wait up to ``timeout``
    seconds, then kill it; it is reaped either way."""
    ask()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Cleanup for a started ``dags test`` (it leads its own group): kill the group, reap it."""
    if proc.poll() is None:
        kill_group(proc.pid)
        proc.wait(timeout=timeout)


# -- long-running Airflow components (scheduler, API server...) ---------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; bind it soon after)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[Proc]:
    """Every live process below ``pid`` (children, their children...), whatever their group."""
    by_parent: dict[int, list[Proc]] = {}
    for proc in processes():
        by_parent.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    pending = [pid]
    while pending:
        for child in by_parent.get(pending.pop(), []):
            found.append(child)
            pending.append(child.pid)
    return found


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """Stop processes started with ``start_new_session=True`` and everything below them.

    SIGTERM to each group first (a graceful shutdown), SIGKILL to whatever is left after
    ``timeout``, including descendants that moved to groups of their own (e.g. a dbt worker).
    """
    tree = {p.pid: p.cmdline for proc in procs for p in descendants(proc.pid)}
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in procs:
        tree.update((p.pid, p.cmdline) for p in descendants(proc.pid))
        kill_group(proc.pid)
    for pid, cmdline in tree.items():
        left = process(pid)
        if left is not None and left.cmdline == cmdline:  # not a recycled pid
            if left.pgid == left.pid:
                kill_group(pid)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=timeout)
