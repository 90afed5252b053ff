"""Persisted run state: which dbt nodes were built, from what, and when.

Standard library only, so it can be imported (and tested) without Airflow or
dbt installed.
"""

from airflow_provider_orchestra_dbt.state.errors import (
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
    StateDocument,
    StateEntries,
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
    "LocalFileStateStore",
    "OrchestraHttpStateStore",
    "S3StateStore",
    "StateConflictError",
    "StateDocument",
    "StateEntries",
    "StateError",
    "StateFormatError",
    "StateStore",
    "entry_timestamp",
    "format_timestamp",
    "is_newer",
    "merge_entries",
    "orchestra_state_url",
    "parse_timestamp",
    "store_from_uri",
    "validate_entries",
]
