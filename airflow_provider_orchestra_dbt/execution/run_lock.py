"""One run at a time per dbt project and target on a machine.

Two runs of the same project and target collide in the warehouse: DuckDB lets one process
write its file, and on PostgreSQL two runs rebuilding a model clash on dbt's
``<model>__dbt_tmp`` relations. So a run holds an exclusive ``flock`` on a file of the
project+target's cache dir from before it reads the state until its dbt worker has exited;
the next run waits (bounded, interruptible), then plans on what the first one built.

The holder writes who it is into the lock file (pid, host, start time and a label such as
the Airflow task), so a waiting run can say whom it waits for. The lock is released by the
kernel once its holders are gone, so a crashed run never blocks the next one.

The holders are the run *and its dbt worker*: the run opens the file before it starts the
worker and hands the worker that descriptor (``open``). A ``flock`` belongs to the open file
description, not to a process, so the lock taken on it later is held by every process with a
copy and is free only when the last copy is closed. A run killed outright (SIGKILL by the
OOM killer, a lost node) thus leaves the lock taken until its worker, which may still be
writing to the warehouse for a moment, has died too (the worker dies with its parent, see
``worker/dbt_worker.py``). A lock the worker took on its own file would not do: the parent
could not wait for it, and a worker that has not started yet would hold nothing. No Airflow
imports.

Runs on *different* machines share no kernel, so on top of that the run takes a lease in the
state store (``state/lease.py``) when the store can keep one: the flock first, then the
lease, both held for the same span. The lease's heartbeat renews it while the run goes on;
should it be lost (the run was paused past its expiry and another run took it over), the run
is told through ``on_lease_lost`` and stops dbt.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_provider_orchestra_dbt.state.errors import StateError
from airflow_provider_orchestra_dbt.state.lease import (
    Lease,
    LeaseInterrupted,
    LeaseRecord,
    LeaseTimeout,
    LeaseUnavailable,
)
from airflow_provider_orchestra_dbt.state.locking import (
    LockInterrupted,
    LockTimeout,
    flock_exclusive,
    open_lock_file,
)

if TYPE_CHECKING:
    from airflow_provider_orchestra_dbt.execution.executor import RunLogger

__all__ = ["LOCK_FILE_NAME", "Holder", "RunLock", "RunLockError", "RunLockStopped"]

LOCK_FILE_NAME = "run.lock"
# Polling bounds: a run waits minutes, so a quarter second of lag after the holder
# finishes costs nothing, and stop() interrupts a wait at once anyway.
_FIRST_POLL = 0.02
_MAX_POLL = 0.25
_MAX_HOLDER_BYTES = 4096
# A run waiting for a lease says again whom it waits for at least this often (seconds).
_REPEAT_WAITING = 60.0


class RunLockError(RuntimeError):
    """The lock could not be taken: another run held it past the timeout, or it failed."""


class RunLockStopped(RunLockError):
    """The run was stopped while it waited for the lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds a run lock, as written into the lock file."""

    pid: int
    host: str
    since: str
    label: str = ""

    @classmethod
    def current(cls, label: str = "") -> Holder:
        since = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return cls(pid=os.getpid(), host=socket.gethostname(), since=since, label=label)

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """None for an empty or half-written file (the holder may be writing it right now)."""
        try:
            raw = json.loads(data)
            return cls(
                pid=int(raw["pid"]),
                host=str(raw["host"]),
                since=str(raw["since"]),
                label=str(raw.get("label") or ""),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")

    def describe(self) -> str:
        text = f"pid {self.pid} on {self.host} since {self.since}"
        return f"{text} ({self.label})" if self.label else text


class RunLock:
    """An exclusive lock on ``path`` held for one run; ``what`` names the project and target.

    ``acquire`` waits at most ``timeout`` seconds (0: do not wait) and returns early with
    :class:`RunLockStopped` once ``stop`` is set. Use as a context manager or call
    ``acquire``/``release``; ``release`` is idempotent. ``open`` first to share the lock with
    a child process.
    """

    def __init__(
        self,
        path: Path,
        *,
        what: str,
        timeout: float,
        log: RunLogger,
        label: str = "",
        stop: threading.Event | None = None,
        lease: Lease | None = None,
        on_lease_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.lease = lease
        self._on_lease_lost = on_lease_lost
        self.what = what
        self.timeout = timeout
        self.label = label
        self.log = log
        self._stop = stop
        self._fd: int | None = None
        self._locked = False
        self._writable = False

    @property
    def held(self) -> bool:
        return self._locked

    def open(self) -> int:
        """Open the lock file (once) without locking it; returns the descriptor.

        A child process started with this descriptor (``pass_fds``) shares the lock that
        ``acquire`` takes on it later: the lock stays taken while the child keeps the
        descriptor, even after this process has died or called ``release``.
        """
        if self._fd is None:
            self._fd = self._open()
        return self._fd

    def holder(self) -> Holder | None:
        """Who holds the lock now, as far as the lock file says."""
        try:
            with open(self.path, "rb") as handle:
                return Holder.from_bytes(handle.read(_MAX_HOLDER_BYTES))
        except OSError:
            return None

    def acquire(self) -> float:
        """Take the lock; returns the seconds spent waiting for another run."""
        if self._locked:
            raise RunLockError(f"the run lock {self.path} is already held by this run")
        fd = self.open()
        announced: list[str] = []
        waited = self._take_flock(fd, announced)
        self._locked = True
        if self.lease is not None:
            waited += self._acquire_lease(self.lease, self.timeout - waited)
        if self._writable:
            with contextlib.suppress(OSError):  # the description is a courtesy to waiters
                os.ftruncate(fd, 0)
                os.pwrite(fd, Holder.current(self.label).to_bytes(), 0)
        if announced:
            self.log.info("Got the run lock of %s after waiting %.1fs", self.what, waited)
        return waited

    def _take_flock(self, fd: int, announced: list[str]) -> float:
        """Wait for the flock on ``fd``, saying whom for in ``announced``; on failure the
        descriptor is closed. Returns the seconds waited."""
        try:
            return flock_exclusive(
                fd,
                timeout=self.timeout,
                stop=self._stop,
                on_wait=lambda waited: self._announce_flock_wait(waited, announced),
                first_interval=_FIRST_POLL,
                max_interval=_MAX_POLL,
            )
        except LockTimeout as exc:
            self.release()
            holder = self.holder()
            raise RunLockError(
                f"another run of {self.what} holds its run lock {self.path}: "
                f"{holder.describe() if holder else 'holder unknown'}; gave up after "
                f"{exc.waited:.0f}s (lock_timeout={self.timeout:g}). Runs of one project and "
                "target take turns on a machine: raise lock_timeout to wait longer"
            ) from exc
        except LockInterrupted as exc:
            self.release()
            raise RunLockStopped(f"stopped while waiting for the run lock of {self.what}") from exc
        except OSError as exc:
            self.release()
            raise RunLockError(f"cannot lock {self.path}: {exc}") from exc

    def _announce_flock_wait(self, waited: float, announced: list[str]) -> None:
        """Log whom the run waits for: once, then again whenever the holder changes."""
        holder = self.holder()
        text = holder.describe() if holder else None
        if not announced:
            self.log.info(
                "Waiting for another run of %s to finish: it holds the run lock %s (%s); "
                "waiting up to %gs (lock_timeout)",
                self.what,
                self.path,
                text or "holder unknown",
                self.timeout,
            )
            announced.append(text or "")
        elif text and text != announced[-1]:
            self.log.info(
                "Still waiting after %.0fs: the run lock of %s is now held by %s",
                waited,
                self.what,
                text,
            )
            announced.append(text)

    def _acquire_lease(self, lease: Lease, timeout: float) -> float:
        """Take the lease after the flock; on failure the flock is released too."""
        announced: list[tuple[float, str]] = []

        def on_wait(waited: float, holder: LeaseRecord | None) -> None:
            self._announce_lease_wait(lease, waited, holder, announced)

        try:
            waited = lease.acquire(timeout=max(timeout, 0.0), stop=self._stop, on_wait=on_wait)
        except LeaseTimeout as exc:
            self.release()
            holder = exc.holder.describe() if exc.holder else "holder unknown"
            raise RunLockError(
                f"another run of {self.what} holds its lease {lease.location}: {holder}; gave "
                f"up after {self.timeout:g}s in all (lock_timeout). Runs of one project and "
                "target take turns across machines: raise lock_timeout to wait longer"
            ) from exc
        except LeaseInterrupted as exc:
            self.release()
            raise RunLockStopped(f"stopped while waiting for the lease of {self.what}") from exc
        except LeaseUnavailable as exc:
            self.log.warning(
                "Runs of %s on other machines are not kept apart: the state store cannot keep "
                "its lease (%s). Allow this run to write %s to fix it",
                self.what,
                exc,
                lease.location,
            )
            self.lease = None
            return 0.0
        except StateError as exc:
            self.release()
            raise RunLockError(f"cannot take the lease of {self.what}: {exc}") from exc
        if lease.taken_over is not None:
            self.log.warning(
                "Took over the lease %s of %s from %s: it was not renewed for %gs, so that run "
                "crashed, lost its machine or was paused",
                lease.location,
                self.what,
                lease.taken_over.describe(),
                lease.taken_over.ttl,
            )
        if announced:
            self.log.info("Got the lease of %s after waiting %.1fs", self.what, waited)
        lease.start_heartbeat(self._lease_lost, self._lease_renewal_failed)
        return waited

    def _announce_lease_wait(
        self,
        lease: Lease,
        waited: float,
        holder: LeaseRecord | None,
        announced: list[tuple[float, str]],
    ) -> None:
        """Log whom the run waits for: once, then when the holder changes or every minute."""
        text = holder.describe() if holder else "holder unknown"
        if not announced:
            self.log.info(
                "Waiting for another run of %s (on another machine, or from another "
                "checkout): it holds the lease %s (%s); waiting up to %gs (lock_timeout)",
                self.what,
                lease.location,
                text,
                self.timeout,
            )
        elif holder is not None and (
            text.split(";")[0] != announced[-1][1].split(";")[0]
            or waited - announced[-1][0] >= _REPEAT_WAITING
        ):
            self.log.info(
                "Still waiting after %.0fs for the lease of %s: held by %s",
                waited,
                self.what,
                text,
            )
        else:
            return
        announced.append((waited, text))

    def _lease_lost(self, reason: str) -> None:
        error = getattr(self.log, "error", self.log.warning)
        error(
            "Lost the lease of %s: %s. Another run may be building the same models now",
            self.what,
            reason,
        )
        if self._on_lease_lost is not None:
            self._on_lease_lost(reason)

    def _lease_renewal_failed(self, reason: str) -> None:
        self.log.warning("Could not renew the lease of %s (will retry): %s", self.what, reason)

    def release(self, *, give_back_lease: bool = True) -> None:
        """Close our descriptor: the lock is free once no child holds a copy either.

        The lease is given back too, or with ``give_back_lease=False`` (the worker may still
        run) left to expire within its ttl.
        """
        if self.lease is not None:
            if give_back_lease:
                self.lease.release()
            else:
                self.lease.abandon()
        fd, self._fd = self._fd, None
        locked, self._locked = self._locked, False
        if fd is None:
            return
        if locked and self._writable:
            # Waiters must not read our description once we are gone.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = open_lock_file(self.path, writable=True)
                self._writable = True
            except PermissionError:
                # Another user's lock file: it still serialises, we just cannot sign it.
                fd = open_lock_file(self.path)
                self._writable = False
        except OSError as exc:
            raise RunLockError(f"cannot open the run lock {self.path}: {exc}") from exc
        return fd
