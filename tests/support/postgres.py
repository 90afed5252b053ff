"""A PostgreSQL server for the integration tests: a throwaway local cluster, or one you name.

``postgres_server()`` yields a :class:`PgServer`. With ``ORCHESTRA_TEST_PG_HOST`` set it uses
that existing server (``ORCHESTRA_TEST_PG_PORT``/``USER``/``PASSWORD``; the user needs
CREATEDB) and starts nothing. Otherwise it runs ``initdb`` into a fresh temp dir and starts a
private cluster listening on 127.0.0.1 only, on a free port, with trust authentication for
TCP from 127.0.0.1 and its unix socket in that temp dir; leaving the context stops it
(``pg_ctl stop -m fast``) and removes the dir, also when the tests failed.

``initdb`` and ``postgres`` refuse to run as root: as root, the cluster runs as Debian's
``postgres`` user (``runuser``), in a dir it owns. The binaries come from
``/usr/lib/postgresql/<newest>/bin`` (Debian's layout), else from ``PATH``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

START_TIMEOUT = 60.0  # seconds for the server to accept connections
STOP_TIMEOUT = 30
COMMAND_TIMEOUT = 120.0  # initdb and friends
SERVER_USER = "postgres"  # the OS user the cluster runs as when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates
EXISTING = "ORCHESTRA_TEST_PG_"  # prefix of the variables naming an existing server
# Throwaway settings: nothing here needs to survive a crash, so skip every fsync.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "32MB",
    "logging_collector": "off",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here and no existing server named."""


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str
    throwaway: bool  # started by us: its databases are ours to drop and recreate

    def connect(self, dbname: str = "postgres") -> Any:
        """An autocommit psycopg2 connection (CREATE/DROP DATABASE cannot run in a tx)."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            connect_timeout=10,
        )
        conn.autocommit = True
        return conn

    def execute(self, *statements: str, dbname: str = "postgres") -> None:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            conn.close()

    def tutorial_env(self, dbname: str) -> dict[str, str]:
        """What ``tutorial/profiles.yml`` and ``tutorial/land_data.py`` read."""
        return {
            "TUTORIAL_PG_HOST": self.host,
            "TUTORIAL_PG_PORT": str(self.port),
            "TUTORIAL_PG_USER": self.user,
            "TUTORIAL_PG_PASSWORD": self.password,
            "TUTORIAL_PG_DBNAME": dbname,
        }

    # -- whole databases ------------------------------------------------------------------------

    def recreate(self, dbname: str, template: str | None = None) -> None:
        """Drop ``dbname`` (disconnecting its sessions) and create it, empty or from a template."""
        name = quote_ident(dbname)
        source = f" TEMPLATE {quote_ident(template)}" if template else ""
        self.execute(
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}{source}"
        )

    def drop(self, *dbnames: str) -> None:
        self.execute(*(f"DROP DATABASE IF EXISTS {quote_ident(n)} WITH (FORCE)" for n in dbnames))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def existing_server() -> PgServer | None:
    """The server named by ``ORCHESTRA_TEST_PG_*``, if any."""
    host = os.environ.get(f"{EXISTING}HOST")
    if not host:
        return None
    return PgServer(
        host=host,
        port=int(os.environ.get(f"{EXISTING}PORT") or "5432"),
        user=os.environ.get(f"{EXISTING}USER") or SUPERUSER,
        password=os.environ.get(f"{EXISTING}PASSWORD", ""),
        throwaway=False,
    )


def find_bindir() -> Path:
    """Where initdb, pg_ctl and postgres live: Debian's newest version, else ``PATH``."""
    needed = ("initdb", "pg_ctl", "postgres")

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parent.name))

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(bindir, b), os.X_OK) for b in needed):
            return Path(bindir)
    found = shutil.which("initdb")
    if found and all(shutil.which(b) for b in needed):
        return Path(found).parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) under "
        "/usr/lib/postgresql/*/bin or on PATH: install Debian's `postgresql` (scripts/test.sh "
        f"does so as root), or point {EXISTING}HOST/PORT/USER/PASSWORD at a server"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThrowawayCluster:
    """One private cluster under a temp dir; :meth:`stop` is idempotent and never raises."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="orchestra-dbt-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.started = False

    def _command(self, binary: str, *args: str) -> list[str]:
        command = [str(self.bindir / binary), *args]
        return ["runuser", "-u", SERVER_USER, "--", *command] if self.as_root else command

    def _run(self, binary: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> None:
        done = subprocess.run(
            self._command(binary, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,  # runuser keeps the cwd: it must be one the server user can enter
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{binary} {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "\n-- server log --\n" + self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self) -> PgServer:
        if self.as_root:
            try:
                owner = pwd.getpwnam(SERVER_USER)
            except KeyError as e:
                raise PostgresUnavailable(
                    f"running as root, but there is no {SERVER_USER!r} user to run the cluster"
                ) from e
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o700)
        self._run(
            "initdb", "--pgdata", str(self.data), "--username", SUPERUSER, "--auth", "trust",
            "--encoding", "UTF8", "--locale", "C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        # Only TCP from 127.0.0.1 (plus the private socket); no password: the port is ours.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        for attempt in range(3):
            self.port = free_port()
            settings = SETTINGS | {
                "port": str(self.port),
                "unix_socket_directories": f"'{self.root}'",
            }
            # Appending keeps the file's owner (the server user); the last setting wins.
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("\n# orchestra-dbt tests\n")
                conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
            self.started = True  # from here on, stop() must look for a postmaster
            try:
                self._run(
                    "pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log),
                    "--wait", "--timeout", str(int(START_TIMEOUT)),
                    timeout=START_TIMEOUT + 10,
                )  # fmt: skip
            except RuntimeError:
                # Someone took the port between our probe and the bind: try another one.
                if attempt < 2 and "already in use" in self._log_tail():
                    continue
                raise
            break
        server = PgServer("127.0.0.1", self.port, SUPERUSER, "", throwaway=True)
        wait_ready(server, START_TIMEOUT)
        return server

    def stop(self) -> None:
        try:
            if self.started and (self.data / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    self._run(
                        "pg_ctl", "stop", "--pgdata", str(self.data), "--mode", "fast",
                        "--wait", "--timeout", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 10,
                    )  # fmt: skip
                self._kill_leftover()
        finally:
            self.started = False
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftover(self) -> None:
        """If a fast stop did not finish, end the postmaster we started (by its pid file)."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)  # its children exit with it; the data dir is thrown away


def wait_ready(server: PgServer, timeout: float) -> None:
    """Poll until a connection succeeds, at most ``timeout`` seconds."""
    import psycopg2

    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            server.connect().close()
            return
        except psycopg2.OperationalError as e:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"PostgreSQL on {server.host}:{server.port} not ready in {timeout:.0f}s: {e}"
                ) from e
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    """The existing server named by ``ORCHESTRA_TEST_PG_*``, else a throwaway cluster."""
    named = existing_server()
    if named is not None:
        wait_ready(named, 10.0)
        yield named
        return
    cluster = ThrowawayCluster(find_bindir())
    # Belt and braces beyond the finally: an interpreter exit mid-session, and a SIGTERM
    # (a CI job cancelled), which would otherwise end the process without any cleanup.
    atexit.register(cluster.stop)
    restore = _stop_on_sigterm(cluster)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        restore()
        atexit.unregister(cluster.stop)


def _stop_on_sigterm(cluster: ThrowawayCluster) -> Callable[[], None]:
    """While the cluster runs, SIGTERM stops it first, then ends the process as before."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None  # someone else handles SIGTERM: leave it to them

    def handler(signum: int, frame: FrameType | None) -> None:
        cluster.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore
