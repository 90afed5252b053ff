"""Runs dbt commands in forks of one process that imported dbt once (the fake dbt Cloud's steps).

Started by path with the tests' interpreter. Each request on stdin (a JSON line: ``id``,
``argv``, ``cwd``, ``env``, ``log``) is run by a forked child in a process group of its own
(so a cancel can kill the whole group) with dbt's programmatic runner; stdout answers with the
child's pid, and later with its exit code (0 success, 1 failures, 2 an error dbt raised).
Importing dbt costs seconds a process: a fork starts with it loaded. Single-threaded, so that
forking is safe: requests and finished children are served from one ``select`` loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
from typing import Any

from dbt.cli.main import dbtRunner

with contextlib.suppress(ImportError):  # the tests' adapter, loaded once too
    import dbt.adapters.duckdb  # noqa: F401


def _run_child(request: dict[str, Any]) -> None:
    # A process group of its own, set here and by the parent (whichever runs first), so that
    # the group exists the moment the parent reports the pid: a cancel may come at once.
    os.setpgid(0, 0)
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    code = 2
    try:
        result = dbtRunner().invoke(request["argv"])
        code = 0 if result.success else (2 if result.exception is not None else 1)
    finally:
        sys.stdout.flush()
        os._exit(code)


def _send(message: dict[str, Any]) -> None:
    sys.__stdout__.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
    sys.__stdout__.flush()  # type: ignore[union-attr]


def main() -> None:
    children: dict[int, str] = {}
    stdin_open = True
    while stdin_open or children:
        readable, _, _ = select.select([sys.stdin] if stdin_open else [], [], [], 0.05)
        if readable:
            line = sys.stdin.readline()
            if not line:
                stdin_open = False
            else:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _run_child(request)
                with contextlib.suppress(OSError):  # the child may have done it already
                    os.setpgid(pid, pid)
                children[pid] = request["id"]
                _send({"id": request["id"], "pid": pid})
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                _send({"id": children.pop(pid), "code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
