"""State kept in a JSON file on a local (or POSIX-locking network) filesystem."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from airflow_provider_orchestra_dbt.state.errors import StateError
from airflow_provider_orchestra_dbt.state.lease import LEASE_DIR, LeaseUnavailable
from airflow_provider_orchestra_dbt.state.locking import (
    LockTimeout,
    flock_exclusive,
    open_lock_file,
)
from airflow_provider_orchestra_dbt.state.model import (
    EntryUpdates,
    StateDocument,
    validate_update,
)

__all__ = ["DEFAULT_LOCK_TIMEOUT", "LocalFileStateStore"]

DEFAULT_LOCK_TIMEOUT = 60.0
"""Seconds ``save`` waits for the lock before giving up."""

_DEFAULT_MODE = 0o644
_REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class LocalFileStateStore:
    """A state document in a JSON file, safe for concurrent writers on one host.

    Writers serialise on an exclusive ``flock`` of a sibling ``<name>.lock``
    file, re-read the document under the lock, merge and atomically replace
    the file. Readers take no lock: the data file is only ever swapped with
    ``os.replace``, so a reader sees either the old or the new document whole.

    The lock lives in a separate file because the data file is replaced on
    every save; a lock on it would be held on an inode that is no longer the
    file's. The lock file is never deleted, since deleting it would let two
    writers lock two different inodes under the same name.

    A symlinked state path is followed: the link's target is the file that is
    locked, replaced and given the ``.lock`` sibling.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        if lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0, got {lock_timeout}")
        self._path = Path(os.path.abspath(path))
        self._lock_timeout = lock_timeout

    @property
    def path(self) -> Path:
        """The state file as configured (absolute, symlinks not resolved)."""
        return self._path

    @property
    def lock_path(self) -> Path:
        """The sibling file whose ``flock`` serialises writers."""
        target = self._target()
        return target.with_name(target.name + ".lock")

    @property
    def description(self) -> str:
        return f"local file {self._path}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._path)!r})"

    def load(self) -> StateDocument:
        """Read the state file; a missing file is an empty state.

        Raises:
            StateFormatError: the file is not valid state.
            StateError: the file exists but cannot be read.
        """
        target = self._target()
        data = self._read(target)
        if data is None:
            return StateDocument.empty()
        return StateDocument.from_json_bytes(data, origin=f"state file {target}")

    def save(self, updates: EntryUpdates) -> StateDocument:
        """Merge ``updates`` into the file under the lock and replace it atomically.

        Creates the file and its parent directories on first use. An existing
        file's permission bits are kept; a new file gets ``0o644``.

        Raises:
            StateFormatError: the stored file or ``updates`` is not valid state;
                the file is left untouched.
            StateError: the lock was not acquired within ``lock_timeout`` or
                the file could not be read or written.
        """
        entries = validate_update(updates, origin=f"state update for {self.description}")

        target = self._target()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create directory {target.parent}: {exc}") from exc

        with self._locked(target.with_name(target.name + ".lock")):
            data = self._read(target)
            current = (
                StateDocument.empty()
                if data is None
                else StateDocument.from_json_bytes(data, origin=f"state file {target}")
            )
            merged = current.merged(entries)
            self._write(target, merged.to_json_bytes())
        return merged

    # -- leases (state/lease.py): one file per project and target next to the state ----------

    def lease_path(self, name: str) -> Path:
        """The file of lease ``name``: ``<state file's dir>/orchestra_dbt_leases/<name>``."""
        return self._target().parent / LEASE_DIR / name

    def lease_location(self, name: str) -> str:
        return f"local file {self.lease_path(name)}"

    def read_lease(self, name: str) -> tuple[bytes | None, str | None]:
        """The lease record and its version (a digest), or ``(None, None)`` when there is none.

        Raises:
            StateError: the file exists but cannot be read.
        """
        with _lease_errors():
            data = self._read(self.lease_path(name))
        return (None, None) if data is None else (data, _digest(data))

    def write_lease(self, name: str, data: bytes, version: str | None) -> str | None:
        """Replace the lease file if it is still at ``version`` (None: still absent).

        Decided under the lease file's own lock (not the state file's: a renewal must not
        wait behind a slow save), so on a file system whose ``flock`` holds across machines
        (NFSv4, EFS, ...) runs on different machines exclude each other too. Returns the new
        version, or None when another run changed the file first.

        Raises:
            StateError: the lock or the file failed.
        """
        path = self.lease_path(name)
        with _lease_errors():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"cannot create directory {path.parent}: {exc}") from exc
            with self._locked(path.with_name(path.name + ".lock")):
                current = self._read(path)
                if (None if current is None else _digest(current)) != version:
                    return None
                self._write(path, data)
        return _digest(data)

    def _target(self) -> Path:
        # Resolved on every call rather than once, because the symlink may be
        # created or repointed after the store is constructed.
        return Path(os.path.realpath(self._path))

    @staticmethod
    def _read(target: Path) -> bytes | None:
        # Opening directly (no exists() check first) means a file that vanishes
        # in between is simply reported as missing.
        try:
            with open(target, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state file {target}: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self, lock_path: Path) -> Iterator[None]:
        try:
            fd = open_lock_file(lock_path)
        except OSError as exc:
            raise StateError(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            self._acquire(fd, lock_path)
            yield
        finally:
            # Closing the descriptor releases the lock.
            os.close(fd)

    def _acquire(self, fd: int, lock_path: Path) -> None:
        try:
            flock_exclusive(fd, timeout=self._lock_timeout)
        except LockTimeout as exc:
            raise StateError(
                f"timed out after {self._lock_timeout:g}s waiting for lock file {lock_path}"
            ) from exc
        except OSError as exc:
            raise StateError(f"cannot lock {lock_path}: {exc}") from exc

    @staticmethod
    def _write(target: Path, payload: bytes) -> None:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = _DEFAULT_MODE
        except OSError as exc:
            raise StateError(f"cannot stat state file {target}: {exc}") from exc

        tmp_path: str | None = None
        try:
            # Same directory as the target so os.replace is a same-filesystem
            # rename, which is what makes it atomic.
            fd, tmp_path = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
            )
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_path, target)
            tmp_path = None
            _fsync_directory(target.parent)
        except OSError as exc:
            raise StateError(f"cannot write state file {target}: {exc}") from exc
        finally:
            if tmp_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_path)


@contextlib.contextmanager
def _lease_errors() -> Iterator[None]:
    """``LeaseUnavailable`` for a lease this user may not keep here (permissions, read-only)."""
    try:
        yield
    except StateError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in _REFUSED:
            raise LeaseUnavailable(str(exc)) from cause
        raise


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry itself is on disk;
    # without this a crash could bring back the previous document.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
