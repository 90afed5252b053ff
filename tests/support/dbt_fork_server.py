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

import ast
import contextlib
import fcntl
import gc
import json
import logging
import os
import runpy
import select
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any, NoReturn

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorial"
_NOT_PROJECT = (".warehouse", "target", "logs", "dbt_packages", ".user.yml", "__pycache__")

# A worker child's received descriptors are moved above this first, so that placing them under
# their own numbers never overwrites one not yet placed.
_PARKED_FDS = 1000
_HEADER = 8  # the length of a worker request's JSON, sent with its descriptors


def _prepare() -> None:
    """Import dbt, then parse the tutorial once, before any fork.

    A process's first dbt invocation also builds what dbt builds on first use: each contract
    class's JSON schema and (compiled lazily by mashumaro) its ``from_dict`` and ``to_dict``,
    jinja's compiled templates. A cold parse of the tutorial costs about four times the CPU
    in a fresh process as in one that parsed once. dbt resets its adapters and flags at the
    start of every invocation (the product's worker runs several in one process too), so a
    fork starts as a worker after an earlier invocation would: nothing of the warm-up run is
    left but those caches (its log file, adapter and multiprocessing's resource tracker are
    let go of here).
    """
    import dbt.cli.main
    from dbt.adapters.factory import reset_adapters
    from dbt_common.events.event_manager_client import cleanup_event_logger

    for adapter in ("dbt.adapters.duckdb", "dbt.adapters.postgres"):  # the tests' adapters
        with contextlib.suppress(ImportError):
            __import__(adapter)
    scratch = Path(tempfile.mkdtemp(prefix="dbt-fork-server-warm-up-"))
    saved = dict(os.environ)
    try:
        project = scratch / "project"
        shutil.copytree(TUTORIAL, project, ignore=shutil.ignore_patterns(*_NOT_PROJECT))
        os.environ["TUTORIAL_DUCKDB_PATH"] = str(scratch / "warm-up.duckdb")  # never opened
        os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
        places = ["--project-dir", str(project), "--profiles-dir", str(project)]
        places += ["--target-path", str(scratch / "target"), "--log-path", str(scratch / "logs")]
        with _no_static_extractor():
            dbt.cli.main.dbtRunner().invoke(["parse", "--quiet", *places])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_adapters()
        cleanup_event_logger()
        for logger in list(logging.root.manager.loggerDict.values()):
            for handler in list(getattr(logger, "handlers", ())):
                if isinstance(handler, logging.FileHandler):
                    handler.close()
                    logger.removeHandler(handler)
        gc.collect()  # dbt's named semaphores go with their adapter
        with contextlib.suppress(Exception):  # private API: at worst forks share the tracker
            resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
        shutil.rmtree(scratch, ignore_errors=True)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise RuntimeError(f"the warm-up left {threads - 1} native threads: forks would hang")
    # What the warm-up made stays out of the collector's way: forks neither scan nor copy it.
    gc.freeze()


@contextlib.contextmanager
def _no_static_extractor() -> Iterator[None]:
    """dbt's static extractor (Rust) starts a thread pool on first use, and a fork has none of
    its threads: the first extraction in a fork would wait for them forever. During the
    warm-up a stand-in reads the plain ``{{ ref(...) }}`` / ``{{ source(...) }}`` that YAML
    holds (snapshot relations, constraints) and refuses the rest, so dbt renders the models
    instead; what the warm-up parses is thrown away."""
    from dbt_extractor import ExtractionError, py_extract_from_source

    def stand_in(source: str) -> dict[str, Any]:
        expression = source.strip().removeprefix("{{").removesuffix("}}").strip()
        try:
            call = ast.parse(expression, mode="eval").body
            args = [ast.literal_eval(arg) for arg in getattr(call, "args", ())]
        except (SyntaxError, ValueError) as exc:
            raise ExtractionError("not before a fork") from exc
        plain_call = isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        name = call.func.id if plain_call else ""  # type: ignore[attr-defined]
        if name == "source" and len(args) == 2:
            return {"refs": [], "sources": {tuple(args)}, "configs": []}
        if name == "ref" and len(args) == 1 and not getattr(call, "keywords", None):
            return {"refs": [{"name": args[0]}], "sources": set(), "configs": []}
        raise ExtractionError("not before a fork")

    users = [m for m in list(sys.modules.values()) if getattr(m, "py_extract_from_source", None)]
    users = [m for m in users if m.py_extract_from_source is py_extract_from_source]
    for module in users:
        module.py_extract_from_source = stand_in
    try:
        yield
    finally:
        for module in users:
            module.py_extract_from_source = py_extract_from_source


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


def _run_worker(
    request: dict[str, Any], received: list[int], close_server: Callable[[], None]
) -> NoReturn:
    code = 2
    try:
        os.setsid()  # as the product's start_new_session=True
        close_server()
        parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, _PARKED_FDS) for fd in received]
        for fd in received:
            os.close(fd)
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
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python <script>`
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
        _prepare()
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
            _run_worker(request, fds, lambda: self._close_in_child(connection))
        for fd in fds:
            os.close(fd)
        self._started(pid, connection)
        self.shims[connection.fileno()] = (pid, connection)
        self.poller.register(connection.fileno(), select.POLLIN)
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")

    def _close_in_child(self, connection: socket.socket) -> None:
        """What a worker must not hold (the server's sockets, its own shim's included, and
        pidfds): closed through their objects, so that nothing closes a number again that
        the worker has reused since."""
        connection.close()
        if self.listener is not None:
            self.listener.close()
        for _, connection in self.shims.values():
            connection.close()
        for pidfd in self.exits:
            os.close(pidfd)

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
    # Not this directory, as `python <this file>` put it: dbt imports every module on the path
    # named dbt_* as a plugin, and the tests' modules here are not for dbt.
    del sys.path[0]
    socket_path = sys.argv[2] if sys.argv[1:2] == ["--socket"] else None
    _Server(socket_path).serve()
    sys.stdout.flush()
    # No teardown: frozen objects are never freed, which native modules would report at exit.
    os._exit(0)


if __name__ == "__main__":
    main()
