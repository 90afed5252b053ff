"""One dbt Cloud job driven through the official ``DbtCloudHook``: trigger, wait, read, cancel.

The state-aware dbt Cloud path (docs/design.md §2.2) needs a handful of calls on one job; the
provider's hook makes them (its connection, token handling, retries of connection errors),
and this class adds what a run needs on top: polling with a deadline that cancels
the run when it passes, a step's artifacts as JSON, and errors that name the account and job
and say what to check. The hook never puts the API token in its messages, and neither does
this class.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.dbt.cloud.hooks.dbt import DbtCloudHook

__all__ = ["DbtCloudJob", "DbtCloudJobDefinition", "DbtCloudJobError", "DbtCloudRun"]

QUEUED, STARTING, RUNNING, SUCCESS, ERROR, CANCELLED = 1, 2, 3, 10, 20, 30
TERMINAL = frozenset({SUCCESS, ERROR, CANCELLED})
STATUS_NAMES = {
    1: "queued",
    2: "starting",
    3: "running",
    10: "success",
    20: "error",
    30: "cancelled",
}
# HTTP 429: retried this often, waiting Retry-After (capped) or backing off exponentially.
RATE_LIMIT_RETRIES = 4
RATE_LIMIT_BACKOFF = 2.0
RATE_LIMIT_MAX_WAIT = 60.0
_HTTP_MEANINGS = {
    401: "the API token was refused: check the connection's API Token",
    403: "the API token may not do this: check its permissions for this job",
    404: "not found: check the job id and the connection's Account ID",
    429: "dbt Cloud kept rate-limiting the requests (HTTP 429) after retries: try again later",
}


class DbtCloudJobError(RuntimeError):
    """A dbt Cloud call failed; the message names the connection, account, job and run."""


@dataclass(frozen=True)
class DbtCloudRun:
    """A finished run: its id, dbt Cloud status (``SUCCESS``, ``ERROR``, ``CANCELLED``) and page."""

    id: int
    status: int
    href: str | None = None

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, str(self.status))

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class DbtCloudJobDefinition:
    """What a job runs when triggered as configured, and where: account and environment."""

    account_id: int | None
    environment_id: int | None
    steps: tuple[str, ...]


class DbtCloudJob:
    """Job ``job_id`` of the account in connection ``conn_id`` (or ``account_id``)."""

    def __init__(
        self,
        conn_id: str,
        job_id: int,
        *,
        account_id: int | None = None,
        poll_interval: float = 10.0,
        timeout: float = 24 * 3600.0,
    ) -> None:
        self.conn_id = conn_id
        self.job_id = job_id
        self.account_id = account_id
        self.poll_interval = poll_interval
        self.timeout = timeout

    @cached_property
    def hook(self) -> DbtCloudHook:
        # Imported here: the provider is an optional dependency, and DAG files that only
        # build the operator must parse without it.
        from airflow.providers.dbt.cloud.hooks.dbt import DbtCloudHook

        return DbtCloudHook(self.conn_id, retry_limit=3, retry_delay=1.0)

    @property
    def where(self) -> str:
        account = "its account" if self.account_id is None else f"account {self.account_id}"
        return f"dbt Cloud connection {self.conn_id!r}, {account}, job {self.job_id}"

    def trigger(self, steps: Sequence[str] | None, cause: str) -> int:
        """Start a run of the job with ``steps`` instead of its own (None: as configured);
        returns the run id."""
        response = self._call(
            "triggering a run",
            lambda: self.hook.trigger_job_run(
                job_id=self.job_id,
                cause=cause,
                account_id=self.account_id,
                steps_override=list(steps) if steps is not None else None,
            ),
        )
        return int(response.json()["data"]["id"])

    def definition(self) -> DbtCloudJobDefinition:
        """The job as configured in dbt Cloud: its environment and its steps."""
        response = self._call(
            "reading the job",
            lambda: self.hook.get_job(job_id=self.job_id, account_id=self.account_id),
        )
        data = response.json()["data"]
        return DbtCloudJobDefinition(
            account_id=data.get("account_id"),
            environment_id=data.get("environment_id"),
            steps=tuple(str(step) for step in data.get("execute_steps") or ()),
        )

    def run(self, run_id: int) -> DbtCloudRun:
        """The run as it is now (its status may not be terminal yet)."""
        response = self._call(
            f"reading run {run_id}",
            lambda: self.hook.get_job_run(run_id=run_id, account_id=self.account_id),
        )
        data = response.json()["data"]
        return DbtCloudRun(int(data["id"]), int(data["status"]), data.get("href"))

    def status(self, run_id: int) -> int:
        return self.run(run_id).status

    def wait(self, run_id: int, stop: threading.Event | None = None) -> DbtCloudRun:
        """Poll until the run ends. Past ``timeout``, once ``stop`` is set, or when waiting is
        cut short (Airflow's ``execution_timeout``, a signal), the run is cancelled first:
        no run is left behind."""
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                run = self.run(run_id)
                if run.finished:
                    return run
                if stop is not None and stop.is_set():
                    raise DbtCloudJobError(f"{self.where}: run {run_id} was stopped and cancelled")
                if time.monotonic() >= deadline:
                    raise DbtCloudJobError(
                        f"{self.where}: run {run_id} did not finish within {self.timeout:g} s "
                        "and was cancelled"
                    )
                if stop is not None:
                    stop.wait(self.poll_interval)
                else:
                    time.sleep(self.poll_interval)
        except BaseException:
            with contextlib.suppress(Exception):
                self.cancel(run_id)
            raise

    def cancel(self, run_id: int) -> None:
        self._call(
            f"cancelling run {run_id}",
            lambda: self.hook.cancel_job_run(run_id=run_id, account_id=self.account_id),
        )

    def artifact_names(self, run_id: int, step: int | None = None) -> list[str]:
        """The artifacts of a step; none for a step that wrote none (dbt Cloud answers 404)."""
        try:
            response = self._call(
                f"listing the artifacts of run {run_id}",
                lambda: self.hook.list_job_run_artifacts(
                    run_id=run_id, account_id=self.account_id, step=step
                ),
            )
        except DbtCloudJobError as exc:
            if step is not None and _http_status(exc.__cause__ or exc) == 404:
                return []
            raise
        return [str(name) for name in response.json()["data"]]

    def artifact(self, run_id: int, path: str, step: int | None = None) -> Any:
        """A JSON artifact of the run's step ``step`` (1-based; default: its last step)."""
        response = self._call(
            f"reading {path} of run {run_id}" + (f" step {step}" if step else ""),
            lambda: self.hook.get_job_run_artifact(
                run_id=run_id, path=path, account_id=self.account_id, step=step
            ),
        )
        try:
            return response.json()
        except ValueError:
            raise DbtCloudJobError(f"{self.where}: {path} of run {run_id} is not JSON") from None

    def _call(self, what: str, call: Any) -> Any:
        # The provider's hook retries connection errors but not HTTP 429 (it turns the
        # response into an AirflowException first), so rate limits are waited out here.
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                return call()
            except Exception as exc:
                # The provider raises AirflowException("404:Not Found") or requests' errors.
                code = _http_status(exc)
                if code == 429 and attempt < RATE_LIMIT_RETRIES:
                    time.sleep(_retry_after(exc, attempt))
                    continue
                meaning = _HTTP_MEANINGS.get(code or 0) or (
                    f"HTTP {code}" if code else f"{type(exc).__name__}: {exc}"
                )
                raise DbtCloudJobError(f"{self.where}: {what} failed: {meaning}") from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(exc: BaseException, attempt: int) -> float:
    """Seconds to wait before retrying a 429: the server's Retry-After, else backing off."""
    # The provider raises AirflowException while handling requests' HTTPError, which has it.
    # (A Response is falsy when its status is an error: compare with None.)
    responses = (getattr(e, "response", None) for e in (exc, exc.__cause__, exc.__context__))
    response = next((r for r in responses if r is not None), None)
    headers = getattr(response, "headers", None) or {}
    try:
        wanted = float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        wanted = RATE_LIMIT_BACKOFF * 2**attempt
    return min(max(wanted, 0.0), RATE_LIMIT_MAX_WAIT)


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    match = re.match(r"(\d{3}):", str(exc))
    return int(match.group(1)) if match else None
