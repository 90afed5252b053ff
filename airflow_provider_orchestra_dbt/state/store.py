"""The interface every state backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from airflow_provider_orchestra_dbt.state.model import EntryUpdates, StateDocument

__all__ = ["LeaseStore", "StateStore"]


@runtime_checkable
class StateStore(Protocol):
    """Somewhere a state document is kept (a local file, an object store, ...).

    Many tasks write to one store at the same time (one per dbt node in a
    parallel DAG), each contributing a handful of entries, so a store is
    written by merging rather than by replacing the document.
    """

    @property
    def description(self) -> str:
        """Human-readable location for logs and errors, e.g. ``"local file /x.json"``.

        Must never contain credentials, since it is logged verbatim.
        """
        ...

    def load(self) -> StateDocument:
        """Return the stored document; a store that holds nothing yet is empty.

        Raises:
            StateFormatError: the stored document is not valid state.
            StateError: the store could not be read.
        """
        ...

    def save(self, updates: EntryUpdates) -> StateDocument:
        """Merge ``updates`` into the document as currently stored and persist it.

        ``updates`` are ``StateEntry`` objects or entries in their JSON form (validated).

        The merge follows ``merge_entries``: per key the newer ``last_updated``
        wins and an update never replaces a newer stored entry. Implementations
        must merge against the stored document at write time, not a copy read
        earlier, and must never lose an update that another writer saved
        concurrently (use a lock or a compare-and-swap retry loop). A stored
        document that is not valid state is never overwritten.

        Returns the merged document that was persisted.

        Raises:
            StateFormatError: the stored document or ``updates`` is not valid
                state; nothing was written.
            StateConflictError: concurrent writers kept winning and the store
                gave up retrying.
            StateError: the store could not be read or written.
        """
        ...


@runtime_checkable
class LeaseStore(Protocol):
    """A store that can also keep leases (``state/lease.py``): small records next to the state.

    Runs on different machines take turns through a lease, so a store offers these only if
    its writes are compare-and-swap for every machine sharing it: S3 (conditional writes)
    and the local file store (a ``flock`` on the state's lock file, which a shared file
    system must honour across machines). The Orchestra HTTP API has no such operation.
    """

    def lease_location(self, name: str) -> str:
        """Where lease ``name`` is kept, for logs (no credentials)."""
        ...

    def read_lease(self, name: str) -> tuple[bytes | None, str | None]:
        """The stored record and an opaque version of it, or ``(None, None)``.

        Raises:
            StateError: the store could not be read.
        """
        ...

    def write_lease(self, name: str, data: bytes, version: str | None) -> str | None:
        """Store ``data`` only if the record is still at ``version`` (None: still absent).

        Returns the new version, or None when the record had changed (nothing written).

        Raises:
            StateError: the store could not be written.
        """
        ...
