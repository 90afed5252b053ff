"""Stands in for the dbt worker's interpreter (``--dbt-python``) in the tests.

The product starts ``<python> dbt_worker.py --parent P --lifeline L [--lock-fd K]`` in a
session of its own. Given this launcher as the python (``forked_workers.py`` writes it), the
worker runs instead in a fork of the tests' dbt fork server (``dbt_fork_server.py
--socket``), which imported dbt once: the shim hands over its standard streams, lifeline and
lock descriptors, argv, environment and working directory, then stands in for the worker's
process. Signals the product sends to the shim's group (SIGINT, SIGTERM) go on to the
worker's group; a SIGKILL of the shim has the server kill the worker's group; and the shim
exits as the worker did.

Standard library only, started with ``-I -S``: it costs milliseconds, not dbt's import.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from types import FrameType

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HANDED_FLAGS = ("--lifeline", "--lock-fd")


def main(server: str) -> None:
    argv = sys.argv[1:]
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    fds = [0, 1, 2, *(int(options[flag]) for flag in _HANDED_FLAGS if flag in options)]
    worker: list[int] = []
    early: list[int] = []

    def forward(sig: int, _frame: FrameType | None) -> None:
        if not worker:
            early.append(sig)
            return
        try:
            os.killpg(worker[0], sig)
        except ProcessLookupError:  # so soon that it has no session (and no child) of its own yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker[0], sig)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "fds": fds}
    payload = json.dumps(request).encode()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(server)
    socket.send_fds(connection, [len(payload).to_bytes(8, "big")], fds)
    connection.sendall(payload)
    replies = connection.makefile("rb")
    worker.append(json.loads(replies.readline())["pid"])
    # The worker has them now: the product's pipes must end when the worker's copies do, and
    # the lock be released when the worker lets go of it, not held on by us.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        if fd <= 2:
            os.dup2(devnull, fd)
        else:
            os.close(fd)
    for sig in early:
        forward(sig, None)
    line = replies.readline()
    code = json.loads(line)["code"] if line else -signal.SIGKILL
    if code < 0:  # killed by a signal: so are we, for the product's returncode
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)
