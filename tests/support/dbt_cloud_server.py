"""A stand-in for dbt Cloud's v2 API, over HTTPS on 127.0.0.1, running real dbt for each step.

The official ``DbtCloudHook`` only speaks ``https://<tenant>/api/v2/accounts/...``, so the
server has a certificate of its own for 127.0.0.1 (``ca_file``: point ``REQUESTS_CA_BUNDLE``
and ``SSL_CERT_FILE`` at it). It serves what state-aware dbt Cloud jobs use, and nothing more:

* ``GET  /api/v2/accounts/``                                  the accounts (connection test)
* ``GET  /api/v2/accounts/<a>/jobs/<j>``                      a job's definition
* ``POST /api/v2/accounts/<a>/jobs/<j>/run/``                 trigger: cause, steps_override
* ``GET  /api/v2/accounts/<a>/runs/<r>/``                     a run and its status
* ``POST /api/v2/accounts/<a>/runs/<r>/cancel/``              cancel (kills the running step)
* ``GET  /api/v2/accounts/<a>/runs/<r>/artifacts/[?step=N]``  a step's artifact names
* ``GET  /api/v2/accounts/<a>/runs/<r>/artifacts/<path>``     one artifact (last step by default)

``Authorization: Token <token>`` is required (401), unknown accounts, jobs and runs are 404,
and ``fail_next`` answers the next requests with a status such as 429 (with ``Retry-After:
0``). Each run executes its steps (the job's, or ``steps_override``) one after another with
the environment's dbt on the job's project, each step's artifacts kept apart; runs of one job
queue, as in dbt Cloud, and share the job's parse cache. A failing step ends the run in
error. Statuses are dbt Cloud's: queued 1, starting 2, running 3, success 10, error 20,
cancelled 30.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from support.airflow_env import end_process

QUEUED, STARTING, RUNNING, SUCCESS, ERROR, CANCELLED = 1, 2, 3, 10, 20, 30
# A model that takes ten minutes without using the CPU (a dbt-duckdb Python model): put it in
# a job's project to have a run to cancel.
SLOW_PYTHON_MODEL = (
    "import time\n\n\ndef model(dbt, session):\n"
    "    time.sleep(600)\n    return session.sql('select 1 as n')\n"
)
HUMANIZED = {1: "Queued", 2: "Starting", 3: "Running", 10: "Success", 20: "Error", 30: "Cancelled"}


@dataclass
class Job:
    """A dbt Cloud job: a project, its profile's environment, and its steps."""

    id: int
    project_dir: Path
    env: dict[str, str]
    steps: list[str] = field(default_factory=lambda: ["dbt build"])
    environment_id: int = 1
    # dbt Cloud runs one run of a job at a time; later ones queue.
    turn: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class Run:
    id: int
    job: Job
    cause: str
    steps: list[str]
    directory: Path
    status: int = QUEUED
    process: ForkedStep | None = None
    finished_steps: int = 0
    cancelled: bool = False

    def data(self, account_id: int) -> dict[str, Any]:
        done = self.status in (SUCCESS, ERROR, CANCELLED)
        return {
            "id": self.id,
            "account_id": account_id,
            "job_definition_id": self.job.id,
            "environment_id": self.job.environment_id,
            "status": self.status,
            "status_humanized": HUMANIZED[self.status],
            "in_progress": not done,
            "is_complete": done,
            "is_success": self.status == SUCCESS,
            "is_error": self.status == ERROR,
            "is_cancelled": self.status == CANCELLED,
            "trigger": {"cause": self.cause, "steps_override": self.steps},
            "run_steps": [{"index": i + 1, "name": s} for i, s in enumerate(self.steps)],
            "href": f"https://cloud.example/runs/{self.id}",
        }


class ForkedStep:
    """One step's dbt, running in a fork of the fork server: ``pid``, ``poll()``, ``wait()``."""

    def __init__(self) -> None:
        self.pid = 0
        self.code: int | None = None
        self.started = threading.Event()
        self.done = threading.Event()

    def poll(self) -> int | None:
        return self.code

    def wait(self) -> int | None:
        self.done.wait()
        return self.code


class DbtForks:
    """Steps run by ``dbt_fork_server.py``: dbt is imported once, not once a step (seconds of
    CPU each, which a suite of state-aware runs pays dozens of times)."""

    def __init__(self) -> None:
        self._server = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("dbt_fork_server.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self._steps: dict[str, ForkedStep] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def start(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> ForkedStep:
        step = ForkedStep()
        ident = f"{id(step)}-{len(self._steps)}"
        request = {"id": ident, "argv": argv, "cwd": str(cwd), "env": env, "log": str(log)}
        with self._lock:
            self._steps[ident] = step
            assert self._server.stdin is not None
            self._server.stdin.write(json.dumps(request) + "\n")
            self._server.stdin.flush()
        if not step.started.wait(120):
            raise RuntimeError("the dbt fork server did not start the step")
        return step

    def _read(self) -> None:
        assert self._server.stdout is not None
        for line in self._server.stdout:
            message = json.loads(line)
            step = self._steps[message["id"]]
            if "pid" in message:
                step.pid = message["pid"]
                step.started.set()
            else:
                step.code = message["code"]
                step.done.set()

    def close(self) -> None:
        assert self._server.stdin is not None
        end_process(self._server, self._server.stdin.close, timeout=60)


class DbtCloudServer:
    """The fake API for one account and token; ``add_job`` before triggering it."""

    def __init__(self, *, account_id: int = 70, token: str = "dbtc-fake-token-5f2e") -> None:
        self.account_id = account_id
        self.token = token
        self.jobs: dict[int, Job] = {}
        self.runs: dict[int, Run] = {}
        self.requests: list[tuple[str, str, int]] = []
        self._faults: deque[int] = deque()
        self._forks: DbtForks | None = None
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="fake-dbt-cloud-"))
        self.ca_file = self._root / "cert.pem"
        key_file = self._root / "key.pem"
        _self_signed(self.ca_file, key_file)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def tenant(self) -> str:
        """What goes in the dbt Cloud connection's host field."""
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def connection(self, token: str | None = None) -> dict[str, Any]:
        """An Airflow ``dbt_cloud`` connection to this server, as JSON for AIRFLOW_CONN_*."""
        return {
            "conn_type": "dbt_cloud",
            "login": str(self.account_id),
            "password": self.token if token is None else token,
            "host": self.tenant,
        }

    def add_job(self, job_id: int, project_dir: Path, env: dict[str, str], **kw: Any) -> Job:
        job = Job(job_id, project_dir, env, **kw)
        self.jobs[job_id] = job
        return job

    def fail_next(self, status: int, times: int = 1) -> None:
        self._faults.extend([status] * times)

    def start(self) -> DbtCloudServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        for run in self.runs.values():
            self._kill(run)
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._forks is not None:
            self._forks.close()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> DbtCloudServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dbt(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> int | None:
        """Run ``dbt <argv>`` outside any job (a test's reference build) as the steps run:
        in a fork of the process that imported dbt once. Returns its exit code."""
        with self._lock:
            if self._forks is None:
                self._forks = DbtForks()
            step = self._forks.start(argv, cwd, env, log)
        return step.wait()

    def wait_finished(self, run_id: int, timeout: float = 300) -> Run:
        """The run once it ended (for tests that trigger without polling through the API)."""
        deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
        run = self.runs[run_id]
        while run.status not in (SUCCESS, ERROR, CANCELLED):
            if dt.datetime.now() > deadline:
                raise TimeoutError(f"fake dbt Cloud run {run_id} still {HUMANIZED[run.status]}")
            threading.Event().wait(0.1)
        return run

    # -- runs ---------------------------------------------------------------------------------

    def _trigger(self, job: Job, body: dict[str, Any]) -> Run:
        with self._lock:
            run_id = 1000 + len(self.runs) + 1
            steps = body.get("steps_override") or job.steps
            run = Run(
                run_id, job, str(body.get("cause", "")), list(steps), self._root / str(run_id)
            )
            self.runs[run_id] = run
        threading.Thread(target=self._execute, args=(run,), daemon=True).start()
        return run

    def _execute(self, run: Run) -> None:
        with run.job.turn:
            if not run.cancelled:
                self._run_steps(run)

    def _run_steps(self, run: Run) -> None:
        run.status = RUNNING
        # One target directory per job, as a dbt Cloud environment keeps its checkout: dbt's
        # partial parse then re-parses only what changed between steps. Each step's
        # artifacts are copied to a directory of its own when it ends.
        work = self._root / f"job-{run.job.id}-target"
        for index, step in enumerate(run.steps, start=1):
            argv = shlex.split(step)
            if not argv or argv[0] != "dbt":
                run.status = ERROR
                return
            target = run.directory / f"step-{index}"
            for stale in work.glob("*.json"):
                stale.unlink()
            command = [*argv[1:], "--project-dir", str(run.job.project_dir)]
            command += ["--profiles-dir", str(run.job.project_dir), "--target-path", str(work)]
            command += ["--log-path", str(target / "logs")]
            env = os.environ | run.job.env | {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
            with self._lock:
                if run.cancelled:
                    return
                target.mkdir(parents=True)
                if self._forks is None:
                    self._forks = DbtForks()
                run.process = self._forks.start(
                    command, run.job.project_dir, dict(env), target / "step.log"
                )
            code = run.process.wait()
            for artifact in work.glob("*.json"):
                shutil.copy2(artifact, target / artifact.name)
            run.finished_steps = index
            if run.cancelled:
                return
            if code != 0:
                run.status = ERROR
                return
        run.status = SUCCESS

    def _cancel(self, run: Run) -> None:
        with self._lock:
            if run.status in (SUCCESS, ERROR, CANCELLED):
                return
            run.cancelled = True
            run.status = CANCELLED
        self._kill(run)

    @staticmethod
    def _kill(run: Run) -> None:
        if run.process is not None and run.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()

    def _artifacts(self, run: Run, step: int | None) -> Path | None:
        index = step or run.finished_steps
        target = run.directory / f"step-{index}"
        return target if index and target.is_dir() else None

    # -- HTTP ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def _answer(self, method: str) -> None:
                url = urlsplit(self.path)
                status, body = server._route(method, url.path, parse_qs(url.query), self)
                server.requests.append((method, url.path, status))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], request: BaseHTTPRequestHandler
    ) -> tuple[int, Any]:
        if self._faults:
            status = self._faults.popleft()
            return status, _error(status, "Too many requests" if status == 429 else "Fault")
        if request.headers.get("Authorization") != f"Token {self.token}":
            return 401, _error(401, "Invalid token header. No credentials provided.")
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        parts = [p for p in path.split("/") if p]
        if parts[:3] != ["api", "v2", "accounts"]:
            return 404, _error(404, "Not found")
        if len(parts) == 3:
            return 200, _page([{"id": self.account_id, "name": "fake"}])
        if parts[3] != str(self.account_id):
            return 404, _error(404, f"Account {parts[3]} not found")
        rest = parts[4:]
        if len(rest) >= 2 and rest[0] == "jobs":
            job = self.jobs.get(int(rest[1])) if rest[1].isdigit() else None
            if job is None:
                return 404, _error(404, f"Job {rest[1]} not found")
            if rest[2:] == ["run"] and method == "POST":
                body = json.loads(raw or b"{}")
                return 200, {"data": self._trigger(job, body).data(self.account_id)}
            if not rest[2:] and method == "GET":
                return 200, {
                    "data": {
                        "id": job.id,
                        "account_id": self.account_id,
                        "environment_id": job.environment_id,
                        "execute_steps": job.steps,
                    }
                }
            return 404, _error(404, "Not found")
        if len(rest) >= 2 and rest[0] == "runs":
            run = self.runs.get(int(rest[1])) if rest[1].isdigit() else None
            if run is None:
                return 404, _error(404, f"Run {rest[1]} not found")
            if rest[2:] == ["cancel"] and method == "POST":
                self._cancel(run)
                return 200, {"data": run.data(self.account_id)}
            if not rest[2:]:
                return 200, {"data": run.data(self.account_id)}
            if rest[2] == "artifacts":
                step = int(query["step"][0]) if query.get("step") else None
                target = self._artifacts(run, step)
                if target is None:
                    return 404, _error(404, f"Run {run.id} has no artifacts for that step")
                if len(rest) == 3:
                    return 200, {"data": sorted(p.name for p in target.glob("*.json"))}
                artifact = target / "/".join(rest[3:])
                if not artifact.is_file():
                    return 404, _error(404, f"Artifact {'/'.join(rest[3:])} not found")
                return 200, artifact.read_bytes()
        return 404, _error(404, "Not found")


def _error(status: int, message: str) -> dict[str, Any]:
    return {"status": {"code": status, "is_success": False, "user_message": message}, "data": None}


def _page(items: list[Any]) -> dict[str, Any]:
    return {
        "data": items,
        "extra": {
            "filters": {"limit": 100},
            "pagination": {"count": len(items), "total_count": len(items)},
        },
    }


def _self_signed(cert_file: Path, key_file: Path) -> None:
    """A key and a certificate for 127.0.0.1, valid for a day, signed by itself."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake dbt Cloud")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
