"""A lease kept in the state store: runs on different machines take turns.

The machine-local run lock (``execution/run_lock.py``) keeps runs of one project and target on
one machine apart. Workers on several machines share only the state store, so that is where
they meet: a run takes a *lease*, a small JSON record next to the state document, before it
reads the state and gives it back once its dbt worker has exited. The store writes the record
with a compare-and-swap (S3: ``If-None-Match``/``If-Match``; the local file store: under the
state file's ``flock``), so two runs can never both believe they hold it.

A lease is kept alive by its holder (:meth:`Lease.start_heartbeat` renews it every third of
its ``ttl``). A holder that crashes, loses its machine or is paused stops renewing, and the
lease goes *stale*: a waiter takes it over once it has seen the record unchanged for one
``ttl`` on its own monotonic clock. Only the waiter's own clock counts (the record's expiry
is written for people to read), so clocks that disagree between machines never hand out a
live lease; a crashed holder blocks the others for at most one ``ttl`` after they start
waiting.

A holder whose renewals have not succeeded for two thirds of its ``ttl`` (the store is
unreachable, or a renewal hangs), or that finds its lease taken over (it was paused for
longer than a ``ttl``), must assume another run may take over or be building already: it is
told through ``on_lost``, and the run stops dbt rather than race the other run in the
warehouse. A store that refuses leases altogether (access denied to the lease's key, a
read-only file system, no conditional writes) raises :class:`LeaseUnavailable`, which a run
reports and then goes on without a lease.

Standard library only; the clock is injectable so the logic is testable in milliseconds.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from airflow_provider_orchestra_dbt.state.errors import StateError
from airflow_provider_orchestra_dbt.state.store import LeaseStore

__all__ = [
    "DEFAULT_LEASE_TTL",
    "LEASE_DIR",
    "Clock",
    "Lease",
    "LeaseInterrupted",
    "LeaseLost",
    "LeaseRecord",
    "LeaseTimeout",
    "LeaseUnavailable",
    "SystemClock",
    "lease_file_name",
]

DEFAULT_LEASE_TTL = 60.0
"""Seconds a lease lives without renewal: how long a crashed holder can block the others."""

LEASE_DIR = "orchestra_dbt_leases"
"""The folder next to the state document (same directory or key prefix) holding leases."""

_VERSION = 1
_FIRST_POLL = 0.05
_MAX_POLL = 1.0
_JOIN_SLICE = 0.1  # seconds: how soon a heartbeat waiting for a renewal notices release()
_RELEASE_WAIT = 5.0  # seconds release() waits for a renewal in flight
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class LeaseTimeout(Exception):
    """The lease was still held by another run when the timeout ran out."""

    def __init__(self, waited: float, holder: LeaseRecord | None) -> None:
        super().__init__(f"lease still held after {waited:.1f}s")
        self.waited = waited
        self.holder = holder


class LeaseInterrupted(Exception):
    """The ``stop`` event was set while waiting."""


class LeaseUnavailable(StateError):
    """The store cannot keep this lease at all (no permission, read-only, no conditional writes)."""


class LeaseLost(StateError):
    """Another run holds our lease now (ours had expired), or it could not be renewed."""


class Clock(Protocol):
    """The time a lease reads and waits on; tests give a fake one to skip the waiting."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds``; True when ``event`` was set."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``Event.wait``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(seconds, 0.0))


@dataclass(frozen=True)
class LeaseRecord:
    """One lease as stored: who holds it, until when, and a token proving whose it is."""

    token: str
    holder: Mapping[str, Any]
    ttl: float
    expires_at: float  # epoch seconds, by the holder's clock
    revision: int = 0
    released: bool = False

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord | None:
        """None for a record that is not ours to read (damaged, another format): it is stale."""
        try:
            raw = json.loads(data)
            return cls(
                token=str(raw["token"]),
                holder=dict(raw.get("holder") or {}),
                ttl=float(raw["ttl"]),
                expires_at=float(raw["expires_at"]),
                revision=int(raw.get("revision") or 0),
                released=bool(raw.get("released")),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "version": _VERSION,
                "token": self.token,
                "holder": dict(self.holder),
                "ttl": self.ttl,
                "expires_at": self.expires_at,
                "expires": _iso(self.expires_at),
                "revision": self.revision,
                "released": self.released,
            },
            indent=1,
        ).encode("utf-8")

    def describe(self) -> str:
        """``pid 12 on host-a since <t> (label), lease expires <t>`` for a waiter's log."""
        holder = self.holder
        text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        if holder.get("since"):
            text += f" since {holder['since']}"
        if holder.get("label"):
            text += f" ({holder['label']})"
        if self.expires_at <= 0:
            return text
        return f"{text}; lease expires {_iso(self.expires_at)} unless renewed"


def lease_file_name(*parts: str | None) -> str:
    """A file name for a lease from machine-independent facts (project, profile, target)."""
    cleaned = [_NAME_CHARS.sub("_", part).strip("._") or "_" for part in parts if part]
    return "--".join(cleaned or ["default"])[:200] + ".json"


class Lease:
    """One run's lease called ``name`` in ``store``.

    ``acquire`` waits for it (bounded by ``timeout``, interrupted by ``stop``) and
    ``release`` gives it back only if it is still ours. ``holder`` is what waiters are told
    (pid, host, since, label).
    """

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        *,
        holder: Mapping[str, Any],
        ttl: float = DEFAULT_LEASE_TTL,
        clock: Clock | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0, got {ttl}")
        self.store = store
        self.name = name
        self.holder = dict(holder)
        self.ttl = float(ttl)
        self.clock: Clock = clock or SystemClock()
        self.token = uuid.uuid4().hex
        self._version: str | None = None
        self._revision = 0
        self._renewed = 0.0  # monotonic time of our last successful write
        # The other holder's record as first seen: (version, monotonic time seen).
        self._seen: tuple[str | None, float] | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken_over: LeaseRecord | None = None
        self.blocking: LeaseRecord | None = None

    @property
    def location(self) -> str:
        return self.store.lease_location(self.name)

    @property
    def held(self) -> bool:
        return self._version is not None

    # -- taking it -----------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """One attempt: True when the lease is ours now.

        Otherwise ``blocking`` is the live holder's record (None when unknown: a record this
        version cannot read, damaged or written by a newer one, which goes stale like any
        other; or a race lost just now, whose winner the next attempt sees).
        """
        data, version = self.store.read_lease(self.name)
        record = LeaseRecord.from_bytes(data) if data is not None else None
        live = data is not None and not (record is not None and record.released)
        self.blocking = record if live else None
        if live:
            if record is not None and record.token == self.token:
                # Our own write, whose answer was lost (the store retried it and reported a
                # conflict with itself): it is ours.
                self._version, self._revision = version, record.revision
                self._renewed = self.clock.monotonic()
                self.blocking = None
                return True
            ttl = record.ttl if record is not None and record.ttl > 0 else self.ttl
            if not self._stale(version, ttl):
                return False
        if self._write(version, fresh=True) is None:
            self.blocking = None
            return False
        if live:
            self.taken_over = record or LeaseRecord("?", {"label": "unreadable record"}, 0, 0)
        self.blocking = None
        return True

    def acquire(
        self,
        *,
        timeout: float,
        stop: threading.Event | None = None,
        on_wait: Callable[[float, LeaseRecord | None], None] | None = None,
    ) -> float:
        """Take the lease, polling with backoff; returns the seconds waited.

        Raises:
            LeaseTimeout: still held by another run after ``timeout`` seconds.
            LeaseInterrupted: ``stop`` was set.
            StateError: the store failed.
        """
        event = stop or threading.Event()
        start = self.clock.monotonic()
        interval = _FIRST_POLL
        while True:
            if event.is_set():
                raise LeaseInterrupted
            acquired = self.try_acquire()
            holder = self.blocking
            now = self.clock.monotonic()
            if not acquired:
                waited = now - start
                remaining = start + timeout - now
                if remaining <= 0:
                    raise LeaseTimeout(waited, holder)
                if on_wait is not None:
                    on_wait(waited, holder)
                if self.clock.wait(event, min(remaining, interval * random.uniform(0.5, 1.0))):
                    raise LeaseInterrupted
                interval = min(interval * 2, _MAX_POLL)
                continue
            return now - start

    def _stale(self, version: str | None, ttl: float) -> bool:
        """True once this version of the record has been seen unchanged for ``ttl`` seconds."""
        now = self.clock.monotonic()
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, now)
        return now - self._seen[1] >= ttl

    # -- keeping it ----------------------------------------------------------------------------

    def renew(self) -> None:
        """Push the expiry one ``ttl`` on.

        Raises:
            LeaseLost: the lease is not ours any more (or was never taken).
            StateError: the store failed; the lease may still be ours.
        """
        with self._lock:
            if self._version is None:
                raise LeaseLost(f"{self.location}: the lease is not held")
            if self._write(self._version, fresh=False) is not None:
                return
            # A conflict: another run took it over, or our own previous write went through
            # without our hearing of it (its answer lost, then retried).
            data, version = self.store.read_lease(self.name)
            record = LeaseRecord.from_bytes(data) if data is not None else None
            if record is not None and record.token == self.token and not record.released:
                self._version, self._revision = version, record.revision
                if self._write(version, fresh=False) is not None:
                    return
            self._version = None
            raise LeaseLost(f"{self.location}: another run took the lease over")

    def start_heartbeat(
        self, on_lost: Callable[[str], None], on_error: Callable[[str], None] | None = None
    ) -> None:
        """Renew every ``ttl / 3`` in a daemon thread until ``release``.

        ``on_lost(reason)`` is called once, from that thread, when the lease was taken over
        or no renewal has succeeded for two thirds of the ``ttl`` (a waiter may take it over
        after one ``ttl``), including when a renewal hangs that long; ``on_error`` for each
        failed renewal before that.
        """
        if self._thread is not None:
            return
        self._halt.clear()
        self._thread = threading.Thread(
            target=self._beat, args=(on_lost, on_error), name=f"lease {self.name}", daemon=True
        )
        self._thread.start()

    def _beat(self, on_lost: Callable[[str], None], on_error: Callable[[str], None] | None) -> None:
        while not self.clock.wait(self._halt, self.ttl / 3):
            outcome: list[BaseException | None] = []
            # In a thread of its own, so that a renewal stuck in the network cannot keep the
            # holder from noticing that its lease is running out.
            call = threading.Thread(
                target=_outcome, args=(self.renew, outcome), name=f"renew {self.name}", daemon=True
            )
            call.start()
            deadline = self._renewed + self.ttl * 2 / 3
            while call.is_alive() and not self._halt.is_set():
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    break
                call.join(min(left, _JOIN_SLICE))
            if self._halt.is_set():
                return
            error = outcome[0] if outcome else None
            if isinstance(error, LeaseLost):
                on_lost(str(error))
                return
            if outcome and error is None:
                continue
            silent = self.clock.monotonic() - self._renewed
            if silent >= self.ttl * 2 / 3:
                cause = f": {error}" if error is not None else " (the store does not answer)"
                on_lost(
                    f"{self.location}: the lease was not renewed for {silent:.1f}s, and another "
                    f"run may take it over after {self.ttl:g}s{cause}"
                )
                return
            if on_error is not None:
                on_error(str(error))

    def abandon(self) -> None:
        """Stop renewing without giving the lease back: it expires within one ``ttl``.

        For a run that cannot tell whether its dbt worker is gone.
        """
        self._stop_heartbeat()
        if self._lock.acquire(timeout=_RELEASE_WAIT):
            self._version = None
            self._lock.release()

    def release(self) -> bool:
        """Give the lease back if it is still ours; True when it was. Never raises StateError.

        Should a renewal be stuck in the store, the lease is left to expire instead.
        """
        self._stop_heartbeat()
        if not self._lock.acquire(timeout=_RELEASE_WAIT):
            return False
        try:
            version, self._version = self._version, None
            if version is None:
                return False
            released = LeaseRecord(
                token=self.token,
                holder=self.holder,
                ttl=self.ttl,
                expires_at=self.clock.time(),
                revision=self._revision + 1,
                released=True,
            )
            try:
                return self.store.write_lease(self.name, released.to_bytes(), version) is not None
            except StateError:
                return False  # it expires on its own within one ttl
        finally:
            self._lock.release()

    def _stop_heartbeat(self) -> None:
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- pieces --------------------------------------------------------------------------------

    def _write(self, version: str | None, *, fresh: bool) -> str | None:
        """Write our record conditioned on ``version``; the new version, or None if beaten."""
        revision = 0 if fresh else self._revision + 1
        started = self.clock.monotonic()
        record = LeaseRecord(
            token=self.token,
            holder=self.holder,
            ttl=self.ttl,
            expires_at=self.clock.time() + self.ttl,
            revision=revision,
        )
        new_version = self.store.write_lease(self.name, record.to_bytes(), version)
        if new_version is not None:
            self._version, self._revision, self._renewed = new_version, revision, started
        return new_version


def _outcome(call: Callable[[], None], outcome: list[BaseException | None]) -> None:
    """Run ``call``, appending None or what it raised."""
    try:
        call()
        outcome.append(None)
    except BaseException as exc:  # handed over to the thread that waits for it
        outcome.append(exc)


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")
