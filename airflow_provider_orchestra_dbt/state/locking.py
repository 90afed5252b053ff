"""Exclusive ``flock`` with a bounded, interruptible wait: standard library only.

Shared by the local state store (short critical sections: a read-merge-replace) and the
per-project run lock (a whole dbt run). Both poll with ``LOCK_NB`` rather than block in
``flock``, so that a wait can time out and be interrupted from another thread.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LockInterrupted", "LockTimeout", "flock_exclusive", "open_lock_file"]

LOCK_FILE_MODE = 0o644


class LockTimeout(Exception):
    """The lock was still held by someone else when the timeout ran out."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"lock still held after {waited:.1f}s")
        self.waited = waited


class LockInterrupted(Exception):
    """The ``stop`` event was set while waiting."""


def open_lock_file(path: Path, *, writable: bool = False) -> int:
    """Open (creating if needed) a file to lock; the descriptor is not inherited by children.

    ``flock`` works on a read-only descriptor, so users who cannot write the file can still
    share its lock; ask for ``writable`` only to store something in it.
    """
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CREAT | os.O_CLOEXEC
    return os.open(path, flags, LOCK_FILE_MODE)


def flock_exclusive(
    fd: int,
    *,
    timeout: float,
    stop: threading.Event | None = None,
    on_wait: Callable[[float], None] | None = None,
    first_interval: float = 0.001,
    max_interval: float = 0.01,
) -> float:
    """Lock ``fd`` exclusively, polling until ``timeout`` seconds have passed.

    Returns the seconds spent waiting. ``timeout`` 0 tries once. Between attempts it sleeps
    with exponential backoff and jitter (so a crowd of waiters does not retry in lockstep),
    and before each sleep calls ``on_wait(seconds waited so far)``.

    Raises:
        LockTimeout: still held by another descriptor when the timeout ran out.
        LockInterrupted: ``stop`` was set before or while waiting.
        OSError: ``flock`` failed for another reason than the lock being held.
    """
    event = stop or threading.Event()
    start = time.monotonic()
    deadline = start + timeout
    interval = first_interval
    while True:
        if event.is_set():
            raise LockInterrupted
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return time.monotonic() - start
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            raise LockTimeout(now - start)
        if on_wait is not None:
            on_wait(now - start)
        if event.wait(min(remaining, interval * random.uniform(0.5, 1.0))):
            raise LockInterrupted
        interval = min(interval * 2, max_interval)
