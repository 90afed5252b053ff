"""Persisted run state: which dbt nodes were built, from what, and when.

Standard library only, so it can be imported (and tested) without Airflow or
dbt installed. The S3 and Orchestra API stores need boto3 and requests (the ``s3`` and
``http`` extras) only once built.
"""

from airflow_provider_orchestra_dbt.state.errors import (
    MissingExtraError,
    StateConflictError,
    StateError,
    StateFormatError,
)
from airflow_provider_orchestra_dbt.state.http import OrchestraHttpStateStore, orchestra_state_url
from airflow_provider_orchestra_dbt.state.local import (
    DEFAULT_LOCK_TIMEOUT,
    LocalFileStateStore,
)
from airflow_provider_orchestra_dbt.state.model import (
    EntryStatus,
    EntryUpdates,
    StateDocument,
    StateEntries,
    StateEntry,
    entries_to_json,
    entry_timestamp,
    format_timestamp,
    is_newer,
    merge_entries,
    parse_timestamp,
    validate_entries,
)
from airflow_provider_orchestra_dbt.state.s3 import S3StateStore
from airflow_provider_orchestra_dbt.state.store import StateStore
from airflow_provider_orchestra_dbt.state.uri import SUPPORTED_STATE_URIS, store_from_uri

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "SUPPORTED_STATE_URIS",
    "EntryStatus",
    "EntryUpdates",
    "LocalFileStateStore",
    "MissingExtraError",
    "OrchestraHttpStateStore",
    "S3StateStore",
    "StateConflictError",
    "StateDocument",
    "StateEntries",
    "StateEntry",
    "StateError",
    "StateFormatError",
    "StateStore",
    "entries_to_json",
    "entry_timestamp",
    "format_timestamp",
    "is_newer",
    "merge_entries",
    "orchestra_state_url",
    "parse_timestamp",
    "store_from_uri",
    "validate_entries",
]
