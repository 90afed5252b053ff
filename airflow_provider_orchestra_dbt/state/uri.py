"""The state store a URI names, for callers without an Airflow connection (the command line).

A connection carries secrets in fields of their own; a URI given on a command line is seen
by every user of the machine (``ps``) and kept in shell histories. So no store here takes a
secret from the URI: S3 uses boto3's default credential chain, and the Orchestra API, whose
key has no such chain, is not offered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from airflow_provider_orchestra_dbt.state.errors import StateError
from airflow_provider_orchestra_dbt.state.local import LocalFileStateStore
from airflow_provider_orchestra_dbt.state.s3 import S3StateStore
from airflow_provider_orchestra_dbt.state.secrets import mask_url_credentials, url_credentials
from airflow_provider_orchestra_dbt.state.store import StateStore

__all__ = ["SUPPORTED_STATE_URIS", "store_from_uri"]

SUPPORTED_STATE_URIS = "a path, file:///abs/path/state.json or s3://bucket/path/state.json"

# Two characters at least, so that a Windows drive letter (C:\state.json) stays a path; any
# longer prefix before a colon is taken for a scheme, so that a mistyped URI (s3:/bucket/key)
# fails instead of quietly becoming a local file named after it.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def store_from_uri(uri: str, *, label: str = "") -> StateStore:
    """The store ``uri`` names: a local file (a plain path or ``file://``) or an S3 object.

    An S3 store is built as the hook builds one for a connection with neither keys nor
    ``aws_conn_id``: credentials and region from boto3's default chain (environment,
    ``~/.aws``, instance or task role), the endpoint from boto3's own ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL`` when set. ``label`` (e.g. the flag that gave ``uri``) starts
    every error message, here and in the store's own.

    Raises:
        StateError: ``uri`` is empty, malformed, carries credentials or has a scheme
            other than ``file`` and ``s3``; the message quotes it with credentials masked.
    """
    prefix = f"{label}: " if label else ""
    shown = repr(mask_url_credentials(uri))

    def fail(problem: str) -> StateError:
        return StateError(f"{prefix}state URI {shown} {problem}")

    if not uri.strip():
        raise fail(f"is empty; supported: {SUPPORTED_STATE_URIS}")
    match = _SCHEME.match(uri)
    if match is None:
        return LocalFileStateStore(Path(uri).expanduser())
    if url_credentials(uri):
        raise fail(
            "carries credentials, which are not taken from a URI (it is visible to other "
            "users and kept in shell histories); S3 credentials come from the AWS "
            "environment variables, ~/.aws or an instance role"
        )
    scheme = match.group(1).lower()
    if scheme == "file":
        return LocalFileStateStore(_file_path(uri, fail))
    if scheme == "s3":
        return S3StateStore.from_uri(uri, label=label)
    if scheme in ("http", "https"):
        raise fail(
            "names the Orchestra API, whose API key there is no safe way to give here (use "
            f"the operator with an orchestra_dbt connection); supported: {SUPPORTED_STATE_URIS}"
        )
    raise fail(f"has the unsupported scheme {scheme!r}; supported: {SUPPORTED_STATE_URIS}")


def _file_path(uri: str, fail: Callable[[str], StateError]) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise fail(
            f"names the host {parts.netloc!r}; a file URI names a local absolute path "
            "(file:///abs/path/state.json)"
        )
    # '?' and '#' are percent-encoded in a file URI's path; unencoded, they cut the path short.
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise fail("has a query or fragment; percent-encode '?' and '#' in the path (%3F, %23)")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise fail(
            "does not name an absolute path (expected file:///abs/path/state.json); give a "
            "relative path without file:"
        )
    return Path(path)
