"""A throwaway Redis server on 127.0.0.1 (Debian's ``redis-server``), the Celery broker.

No persistence, no protected-mode surprises: it listens on a free loopback port only, keeps
nothing on disk, and is stopped (SIGTERM, then SIGKILL) when the context exits.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.airflow_env import end_process, free_port, wait_for

START_TIMEOUT = 30.0


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` binary on this machine."""


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """Start Redis; yields its URL (``redis://127.0.0.1:<port>/0``)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RedisUnavailable(
            "no redis-server here: install Debian's `redis-server` (scripts/test.sh does so "
            "as root)"
        )
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="orchestra-dbt-redis-"))
    log = workdir / "redis.log"
    argv = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--logfile", str(log), "--daemonize", "no",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited {proc.returncode}: {log.read_text()}")
            return _answers_ping(port)

        wait_for(up, START_TIMEOUT, f"redis-server on port {port}", interval=0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        end_process(proc, proc.terminate, timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
