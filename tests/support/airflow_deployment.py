"""A running Airflow deployment for tests: long-lived components around one ``AIRFLOW_HOME``.

The scheduler and Celery tests start ``airflow api-server``, ``dag-processor``,
``scheduler`` (and Celery workers) as subprocesses on 127.0.0.1, each logging to a file,
and poll the metadata DB with bounded timeouts. What differs between them (the executor,
the metadata DB) comes in through ``extra`` (environment variables) and :meth:`query`.
They act on the deployment (trigger, unpause, backfill) through the API server's public
REST API (:meth:`Deployment.api`), not the ``airflow`` CLI: every CLI call imports Airflow
again, seconds of CPU.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from support.airflow_env import AirflowEnv, stop_processes, wait_for

T = TypeVar("T")
STARTUP_TIMEOUT = 120.0
HEARTBEAT_SEC = 2
API_TIMEOUT = 120.0
# The simple auth manager (Airflow's default) hands out an admin token without credentials
# (``GET /auth/token``) only in this mode: fine for a deployment on 127.0.0.1 in a test.
ALL_ADMINS = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}


def scheduler_env(api_port: int) -> dict[str, str]:
    """What every component of a deployment needs to find and trust the execution API."""
    return {
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        # The scheduler signs the task identity tokens the API server checks.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": str(HEARTBEAT_SEC),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


class ApiError(AssertionError):
    """A non-2xx answer of the API server."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}\n{body[-4000:]}")
        self.status = status
        self.body = body


@dataclass
class Deployment:
    """Airflow components (subprocesses) sharing one ``AirflowEnv`` and environment."""

    env: AirflowEnv
    extra: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_url: str = field(default="", init=False)
    _token: str = field(default="", init=False, repr=False)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The metadata DB; ``?`` placeholders."""
        return self.env.query(sql, params)

    # -- processes ---------------------------------------------------------------------------

    def start(self, name: str, *args: str, extra_env: Mapping[str, str] | None = None) -> None:
        """``airflow <args>`` in its own session, logging to ``<logs>/<name>.log``."""
        with (self.logs / f"{name}.log").open("wb") as sink:
            self.procs[name] = subprocess.Popen(
                self.env._argv(args),
                env=self.env.environ(self.extra | dict(extra_env or {})),
                cwd=self.env.root,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_api_server(self, port: int) -> None:
        """The API server (execution API included), once it answers its health check."""
        self.start(
            "api-server", "api-server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", extra_env=ALL_ADMINS,
        )  # fmt: skip
        self.api_url = f"http://127.0.0.1:{port}"

        def api_up() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/execution/health", timeout=15
                ) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        self.wait(api_up, STARTUP_TIMEOUT, "the execution API")

    def stop(self) -> None:
        stop_processes(list(self.procs.values()))

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]
                raise AssertionError(f"airflow {name} exited ({proc.returncode}):\n{tail}")

    # -- the REST API ------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: Any = None, timeout: float = API_TIMEOUT
    ) -> Any:
        assert self.api_url, "the API server is not started"
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(
            self.api_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def api(self, method: str, path: str, body: Any = None, timeout: float = API_TIMEOUT) -> Any:
        """``method path`` on the API server (e.g. ``/api/v2/...``) as an admin; the JSON answer.

        Raises :class:`ApiError` (an ``AssertionError``) on a non-2xx answer.
        """
        if not self._token:
            self._token = self._request("GET", "/auth/token", timeout=timeout)["access_token"]
        return self._request(method, path, body, timeout)

    def unpause(self, dag_id: str) -> None:
        """What ``airflow dags unpause <dag_id>`` does, through the REST API."""
        dag = self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        assert dag["is_paused"] is False, dag

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``airflow <args>``: seconds of CPU each (Airflow's imports); prefer :meth:`api`."""
        result = self.env.airflow(*args, extra_env=self.extra, timeout=timeout)
        assert result.returncode == 0, f"airflow {' '.join(args)}:\n{result.stdout[-4000:]}"
        return result

    def wait(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """``wait_for``, failing fast if a component died and showing the runs on timeout."""

        def check() -> T | None:
            self.check_alive()
            return condition()

        try:
            return wait_for(check, timeout, what, interval=0.5)
        except AssertionError as exc:
            runs = self.query("select dag_id, run_id, run_type, state from dag_run order by id")
            tis = self.query(
                "select dag_id, run_id, task_id, state from task_instance order by start_date"
            )
            raise AssertionError(f"{exc}\nDAG runs: {runs}\ntask instances: {tis}") from None

    def wait_parsed(self, dag_ids: set[str]) -> None:
        def parsed() -> bool:
            return {r[0] for r in self.query("select dag_id from dag where is_stale = false")} >= (
                dag_ids
            )

        self.wait(parsed, STARTUP_TIMEOUT, f"DAGs {sorted(dag_ids)} to be parsed")
