"""Runs dbt in forks of one process that imported dbt once, for the tests.

Importing dbt costs seconds of CPU a process, and the suite starts hundreds of dbt processes: a
fork starts with dbt loaded. Started by path with the tests' interpreter. Two kinds of request:

* On stdin, a JSON line (``id``, ``argv``, ``cwd``, ``env``, ``log``): a dbt command (the fake
  dbt Cloud's steps), run with dbt's programmatic runner by a child in a process group of its
  own (so a cancel can kill the whole group). Stdout answers with the child's pid, and later
  with its exit code (0 success, 1 failures, 2 an error dbt raised).
* With ``--socket PATH``, on that Unix socket: the product's dbt worker (``dbt_worker.py``), for
  ``worker_shim.py``, which the product starts as the worker's interpreter. The shim hands over
  its descriptors (stdio, the lifeline, the run lock) with the worker's argv, environment and
  working directory; a child takes them over under the same numbers, in a session of its own
  as the product starts it, and runs the worker script as ``__main__``. The connection answers
  with the child's pid, and later with its exit code; if the shim dies first (its process group
  was SIGKILLed), the child's group is SIGKILLed too.

Single-threaded, so that forking is safe: requests and finished children (pidfds) are served
from one ``poll`` loop. Ends once stdin is closed and every child has ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import runpy
import select
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

# A worker child's received descriptors are moved above this first, so that placing them under
# their own numbers never overwrites one not yet placed.
_PARKED_FDS = 1000
_HEADER = 8  # the length of a worker request's JSON, sent with its descriptors


def _import_dbt() -> None:
    import dbt.cli.main  # noqa: F401

    for adapter in ("dbt.adapters.duckdb", "dbt.adapters.postgres"):  # the tests' adapters
        with contextlib.suppress(ImportError):
            __import__(adapter)


def _run_step(request: dict[str, Any]) -> NoReturn:
    from dbt.cli.main import dbtRunner

    # A process group of its own, set here and by the parent (whichever runs first), so that
    # the group exists the moment the parent reports the pid: a cancel may come at once.
    os.setpgid(0, 0)
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # noqa: SIM115
    _take_environment(request)
    code = 2
    try:
        result = dbtRunner().invoke(request["argv"])
        code = 0 if result.success else (2 if result.exception is not None else 1)
    finally:
        sys.stdout.flush()
        os._exit(code)


def _run_worker(request: dict[str, Any], received: list[int]) -> NoReturn:
    code = 2
    try:
        os.setsid()  # as the product's start_new_session=True
        parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, _PARKED_FDS) for fd in received]
        for name in os.listdir("/proc/self/fd"):  # the server's socket, connections, pidfds
            if int(name) not in parked:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        for fd, number in zip(parked, request["fds"], strict=True):
            os.dup2(fd, number)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
        _take_environment(request)
        argv = list(request["argv"])
        if "--parent" in argv:  # this server is the worker's parent now, and outlives it
            argv[argv.index("--parent") + 1] = str(os.getppid())
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")  # exits itself (os._exit) normally
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _take_environment(request: dict[str, Any]) -> None:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])


def _send(message: dict[str, Any]) -> None:
    sys.__stdout__.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
    sys.__stdout__.flush()  # type: ignore[union-attr]


def _receive_worker(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, _HEADER, maxfds=16)
    size = int.from_bytes(header, "big")
    payload = b""
    while len(payload) < size:
        chunk = connection.recv(size - len(payload))
        if not chunk:
            raise ConnectionError("the worker shim hung up mid-request")
        payload += chunk
    return json.loads(payload), fds


class _Server:
    def __init__(self, socket_path: str | None) -> None:
        self.poller = select.poll()
        self.stdin_open = True
        self.poller.register(sys.stdin.fileno(), select.POLLIN)
        self.listener: socket.socket | None = None
        if socket_path is not None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(socket_path)
            self.listener.listen(64)  # shims queue here while dbt is still being imported
            self.poller.register(self.listener.fileno(), select.POLLIN)
        self.exits: dict[int, tuple[int, str | socket.socket]] = {}  # pidfd: (pid, for whom)
        self.shims: dict[int, tuple[int, socket.socket]] = {}  # connection fd: (pid, it)
        self.pending = b""  # stdin read so far, up to an incomplete line

    def serve(self) -> None:
        _import_dbt()
        while self.stdin_open or self.exits:
            # One event a poll: handling one may close a descriptor whose number the next
            # (accepting a connection) reuses, and a stale event must not reach the new one.
            fd, _ = self.poller.poll()[0]
            if fd == sys.stdin.fileno():
                self._step_requests()
            elif self.listener is not None and fd == self.listener.fileno():
                self._worker_request()
            elif fd in self.exits:
                self._reap(fd)
            elif fd in self.shims:
                self._shim_gone(fd)

    def _started(self, pid: int, whom: str | socket.socket) -> None:
        pidfd = os.pidfd_open(pid)
        self.exits[pidfd] = (pid, whom)
        self.poller.register(pidfd, select.POLLIN)

    def _step_requests(self) -> None:
        # Raw reads: a buffered reader could hold a second request poll() no longer sees.
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            self.stdin_open = False
            self.poller.unregister(sys.stdin.fileno())
            if self.listener is not None:
                self.poller.unregister(self.listener.fileno())
                self.listener.close()
                self.listener = None
            return
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            self._step(json.loads(line))

    def _step(self, request: dict[str, Any]) -> None:
        pid = os.fork()
        if pid == 0:
            _run_step(request)
        with contextlib.suppress(OSError):  # the child may have done it already
            os.setpgid(pid, pid)
        self._started(pid, request["id"])
        _send({"id": request["id"], "pid": pid})

    def _worker_request(self) -> None:
        assert self.listener is not None
        connection, _ = self.listener.accept()
        try:
            request, fds = _receive_worker(connection)
        except (OSError, ValueError):
            connection.close()
            return
        pid = os.fork()
        if pid == 0:
            _run_worker(request, fds)
        for fd in fds:
            os.close(fd)
        self._started(pid, connection)
        self.shims[connection.fileno()] = (pid, connection)
        self.poller.register(connection.fileno(), select.POLLIN)
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")

    def _reap(self, pidfd: int) -> None:
        pid, whom = self.exits.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if isinstance(whom, str):
            _send({"id": whom, "code": code})
            return
        if self.shims.pop(whom.fileno(), None) is not None:
            self.poller.unregister(whom.fileno())
        with contextlib.suppress(OSError):
            whom.sendall(json.dumps({"code": code}).encode() + b"\n")
        whom.close()

    def _shim_gone(self, fd: int) -> None:
        """The shim hung up before its worker ended: it was killed, and so is the worker."""
        pid, _ = self.shims.pop(fd)
        self.poller.unregister(fd)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def main() -> None:
    socket_path = sys.argv[2] if sys.argv[1:2] == ["--socket"] else None
    _Server(socket_path).serve()


if __name__ == "__main__":
    main()
