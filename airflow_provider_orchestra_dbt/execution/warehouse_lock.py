"""Runs of one project and target take turns in the warehouse itself, where it can lock.

The flock (``execution/run_lock.py``) relates runs on one machine and the lease
(``state/lease.py``) runs that share a state location. Runs that share neither (two
checkouts with their own state files, a state store that keeps no lease, a developer's
laptop and an Airflow worker) still meet in the warehouse. On PostgreSQL the warehouse can
keep them apart: the dbt worker takes a session-level advisory lock on a connection of its
own, held until the worker exits. The server frees it the moment that connection closes, so
a killed run leaves nothing to expire.

The dbt worker makes each attempt (``pg_try_advisory_lock``, and on contention it names the
holder from ``pg_locks`` and ``pg_stat_activity``); this module decides how long to keep
trying, what to log and what to raise, so that the waiting can be tested without a server.
The key and the connection's ``application_name`` are computed here, so that every machine
derives the same key and the worker needs no knowledge of the run.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_orchestra_dbt.execution.run_lock import RunLockError, RunLockStopped

if TYPE_CHECKING:
    from airflow_provider_orchestra_dbt.execution.executor import RunLogger

__all__ = [
    "LOCKING_ADAPTERS",
    "LockAttempt",
    "WarehouseLockUnavailable",
    "advisory_lock_key",
    "application_name",
    "wait_for_warehouse_lock",
]

LOCKING_ADAPTERS = frozenset({"postgres"})
"""Adapter types whose warehouse keeps a run lock; other adapters rely on flock and lease."""

# Hashed with the lease's name, so that the key cannot equal one that hashes the same name
# for another purpose (other tools pick advisory keys too).
_KEY_NAMESPACE = b"airflow-provider-orchestra-dbt run lock\0"
# PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name.
_APPLICATION_NAME_BYTES = 63
# An attempt is one round trip to the server: a second of lag after the holder finishes
# costs nothing next to a run, and stop interrupts a wait between attempts at once.
_FIRST_POLL = 0.05
_MAX_POLL = 1.0


class WarehouseLockUnavailable(Exception):
    """The lock could not be tried at all (connection refused, permission denied...)."""


@dataclass(frozen=True)
class LockAttempt:
    """One try at the lock, as the dbt worker reports it."""

    locked: bool
    database: str = ""
    holder: Mapping[str, Any] | None = None

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> LockAttempt:
        holder = message.get("holder")
        return cls(
            locked=bool(message.get("locked")),
            database=str(message.get("database") or ""),
            holder=dict(holder) if isinstance(holder, Mapping) else None,
        )

    def describe_holder(self) -> str:
        """The holder's session as the server sees it, or ``holder unknown``."""
        holder = self.holder or {}
        if not holder.get("pid"):
            return "holder unknown"
        text = f"backend pid {holder['pid']}"
        if holder.get("application_name"):
            text += f", application {holder['application_name']!r}"
        if holder.get("client_addr"):
            text += f", from {holder['client_addr']}"
        if holder.get("backend_start"):
            text += f", connected since {holder['backend_start']}"
        return text


def advisory_lock_key(name: str) -> int:
    """A signed 64-bit key (PostgreSQL's ``bigint``) for the run lock named ``name``.

    ``name`` is the lease's name (``locations.lease_name``: project, profile, target and key
    prefix), which every machine computes alike; a hash, not Python's ``hash``, which is
    salted per process.
    """
    digest = hashlib.sha256(_KEY_NAMESPACE + name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def application_name(label: str, pid: int) -> str:
    """What the lock's connection calls itself, so that a waiter can say whom it waits for.

    The pid comes first because CLI runs all have the same label, and PostgreSQL keeps only
    63 bytes; cut at a character boundary, as the server would not.
    """
    text = f"orchestra-dbt pid {pid}: {label}".strip().rstrip(":")
    encoded = text.encode("utf-8")[:_APPLICATION_NAME_BYTES]
    return encoded.decode("utf-8", errors="ignore")


def wait_for_warehouse_lock(
    attempt: Callable[[], LockAttempt],
    *,
    what: str,
    timeout: float,
    log: RunLogger,
    stop: threading.Event,
    waited_before: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Call ``attempt`` until it gets the lock; returns the seconds spent waiting.

    ``timeout`` is the run's ``lock_timeout``, of which ``waited_before`` seconds went to the
    run's other locks: what is left bounds this wait (none left: one try). Raises
    :class:`RunLockError` on timeout or when the lock cannot be tried, and
    :class:`RunLockStopped` once ``stop`` is set. ``attempt`` raises
    :class:`RunLockStopped` itself when the stop interrupted a try.
    """
    start = clock()
    interval = _FIRST_POLL
    announced: list[str] = []
    while True:
        if stop.is_set():
            raise RunLockStopped(f"stopped while waiting for the warehouse lock of {what}")
        try:
            result = attempt()
        except WarehouseLockUnavailable as exc:
            raise RunLockError(
                f"cannot take the PostgreSQL advisory lock that keeps runs of {what} apart: {exc}"
            ) from exc
        waited = clock() - start
        remaining = timeout - waited_before - waited
        if result.locked:
            if announced:
                log.info("Got the PostgreSQL advisory lock of %s after waiting %.1fs", what, waited)
            return waited
        holder = result.describe_holder()
        where = f" in database {result.database!r}" if result.database else ""
        if remaining <= 0:
            raise RunLockError(
                f"another run of {what} holds the PostgreSQL advisory lock{where} that keeps "
                f"runs of it apart: {holder}; gave up after {waited_before + waited:.0f}s in "
                f"all (lock_timeout={timeout:g}). Runs of one project and target take turns in the "
                "warehouse: raise lock_timeout to wait longer"
            )
        if not announced:
            log.info(
                "Waiting for another run of %s to finish: it holds the PostgreSQL advisory "
                "lock%s (%s); waiting up to %gs (lock_timeout)",
                what,
                where,
                holder,
                timeout,
            )
            announced.append(holder)
        elif result.holder and holder != announced[-1]:
            log.info(
                "Still waiting after %.0fs: the PostgreSQL advisory lock of %s is now held by %s",
                waited,
                what,
                holder,
            )
            announced.append(holder)
        # Jittered, so that a crowd of waiters does not retry in lockstep.
        if stop.wait(min(remaining, interval * random.uniform(0.5, 1.0))):
            raise RunLockStopped(f"stopped while waiting for the warehouse lock of {what}")
        interval = min(interval * 2, _MAX_POLL)
