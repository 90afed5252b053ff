"""Hook for the ``orchestra_dbt`` connection: where dbt state is kept and how to reach it.

The connection form is declared in
:mod:`airflow_provider_orchestra_dbt.get_provider_info` (``conn-fields`` /
``ui-field-behaviour``); custom fields arrive here under their bare names in
``Connection.extra``. Standard fields used:

* ``password`` -- Orchestra API key (``http`` backend), labelled "API key" in the UI;
* ``login`` -- AWS access key id (``s3`` backend, only without ``aws_conn_id``), with the
  secret in the sensitive ``aws_secret_access_key`` extra field.

Secrets (API key, AWS keys, session token, credentials inside the base or endpoint URL)
are kept out of ``repr`` and are never put into exception messages or log lines; messages
built from other text are passed through :meth:`StateConnectionConfig.redact` as a second
line of defence. Each secret is also registered with Airflow's secrets masker, in every
form it could be printed in (verbatim, URL-encoded, JSON-escaped), so that a task log
masks it whatever wrote it there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from airflow.sdk import BaseHook

from airflow_provider_orchestra_dbt.get_provider_info import BACKENDS, CONN_TYPE
from airflow_provider_orchestra_dbt.state.http import ORCHESTRA_ENVS
from airflow_provider_orchestra_dbt.state.retry import DEFAULT_RETRY_BUDGET, DEFAULT_TIMEOUT
from airflow_provider_orchestra_dbt.state.s3 import split_s3_uri
from airflow_provider_orchestra_dbt.state.secrets import redact, secret_forms, url_credentials

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from airflow_provider_orchestra_dbt.state import StateStore

DEFAULT_BACKEND: Final = BACKENDS[0]
DEFAULT_ORCHESTRA_ENV: Final = ORCHESTRA_ENVS[0]


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    return redact(text, secrets)


def _mask_in_logs(secrets: tuple[str | None, ...]) -> None:
    """Register every printable form of ``secrets`` with Airflow's secrets masker."""
    from airflow.sdk.log import mask_secret

    for secret in secrets:
        for form in secret_forms(secret or ""):
            mask_secret(form)


class _ConfigError(ValueError):
    """Invalid connection configuration (a ``ValueError``); message names the connection."""


@dataclass(frozen=True)
class StateConnectionConfig:
    """Settings of an ``orchestra_dbt`` connection, parsed and validated.

    Build with :meth:`from_connection`. Secret fields are excluded from ``repr``.
    """

    conn_id: str
    backend: str = DEFAULT_BACKEND
    orchestra_env: str = DEFAULT_ORCHESTRA_ENV
    base_url: str | None = None
    state_uri: str | None = None
    region_name: str | None = None
    endpoint_url: str | None = None
    aws_conn_id: str | None = None
    integration_account_id: str | None = None
    """Optional prefix for state keys (lets several projects/accounts share one store)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds; for network backends (``http``, ``s3``)."""
    retry_budget: float = DEFAULT_RETRY_BUDGET
    """Seconds a network backend keeps retrying throttling, server errors and lost races."""
    api_key: str | None = field(default=None, repr=False)
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_connection(cls, conn: Connection) -> StateConnectionConfig:
        """Parse ``conn`` (custom fields from ``conn.extra_dejson``, bare keys).

        Raises:
            ValueError: a field is invalid; the message names the connection id and never
                contains a secret value.
        """
        conn_id = str(conn.conn_id)
        raw_extra = conn.extra_dejson
        extra: Mapping[str, Any] = raw_extra if isinstance(raw_extra, Mapping) else {}
        urls = (extra.get("base_url"), extra.get("endpoint_url"))
        secrets = tuple(
            value
            for value in (
                conn.password,
                conn.login,
                extra.get("aws_secret_access_key"),
                *(part for url in urls if isinstance(url, str) for part in url_credentials(url)),
            )
            if isinstance(value, str) and value
        )
        try:
            return cls._parse(conn_id, conn, extra, secrets)
        except _ConfigError as exc:
            # Messages quote only non-secret fields, each redacted before quoting (in case a
            # secret was pasted into the wrong field); redact the whole text once more. ``from
            # None``: the unredacted message must not reach the traceback as the cause.
            raise ValueError(_redact(str(exc), secrets)) from None

    @classmethod
    def _parse(
        cls,
        conn_id: str,
        conn: Connection,
        extra: Mapping[str, Any],
        secrets: tuple[str, ...],
    ) -> StateConnectionConfig:
        fields = _ExtraFields(conn_id, extra, secrets)
        backend = fields.choice("backend", BACKENDS, DEFAULT_BACKEND)
        orchestra_env = fields.choice("orchestra_env", ORCHESTRA_ENVS, DEFAULT_ORCHESTRA_ENV)
        timeout = fields.seconds("timeout", DEFAULT_TIMEOUT, allow_zero=False)
        retry_budget = fields.seconds("retry_budget", DEFAULT_RETRY_BUDGET, allow_zero=True)
        state_uri = fields.text("state_uri")
        base_url = fields.text("base_url")
        _check_backend_fields(fields, conn, backend, state_uri, base_url)

        login = conn.login.strip() if isinstance(conn.login, str) and conn.login.strip() else None
        return cls(
            conn_id=conn_id,
            backend=backend,
            orchestra_env=orchestra_env,
            base_url=base_url,
            state_uri=state_uri,
            region_name=fields.text("region_name"),
            endpoint_url=fields.text("endpoint_url"),
            aws_conn_id=fields.text("aws_conn_id"),
            integration_account_id=fields.text("integration_account_id", allow_int=True),
            timeout=timeout,
            retry_budget=retry_budget,
            api_key=conn.password or None,
            aws_access_key_id=login,
            aws_secret_access_key=fields.text("aws_secret_access_key"),
        )

    @property
    def local_path(self) -> Path:
        """``state_uri`` as a path, ``~`` expanded (``local`` backend)."""
        if self.state_uri is None:
            raise ValueError(f"Connection {self.conn_id!r}: 'state_uri' is not set")
        return Path(self.state_uri).expanduser()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret of this connection, credentials inside its URLs included."""
        found = (
            self.api_key,
            self.aws_access_key_id,
            self.aws_secret_access_key,
            *url_credentials(self.base_url),
            *url_credentials(self.endpoint_url),
        )
        return tuple(secret for secret in found if secret)

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret of this connection, in any encoding, as ``***``."""
        return _redact(text, self.secrets)


@dataclass(frozen=True)
class _ExtraFields:
    """Reads the custom fields of one connection, failing with a ``_ConfigError`` that names
    the connection and quotes only redacted values."""

    conn_id: str
    extra: Mapping[str, Any]
    secrets: tuple[str, ...] = field(repr=False)

    def fail(self, message: str) -> NoReturn:
        raise _ConfigError(f"Connection {self.conn_id!r}: {message}")

    def quote(self, value: object) -> str:
        # Redact before repr(): repr() escapes characters, which would defeat a later
        # substring redaction of a secret containing quotes or backslashes.
        return repr(_redact(value, self.secrets)) if isinstance(value, str) else repr(value)

    def text(self, name: str, *, allow_int: bool = False) -> str | None:
        """The field stripped, ``None`` when missing or blank."""
        value = self.extra.get(name)
        if value is None:
            return None
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.fail(f"extra field {name!r} must be a string, got {type(value).__name__}")
        return value.strip() or None

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        """The field lower-cased, one of ``allowed``; ``default`` when missing."""
        value = self.text(name)
        if value is None:
            return default
        if value.lower() not in allowed:
            # Quote the value as given (not lower-cased) so redaction still matches it.
            self.fail(f"unknown {name} {self.quote(value)}; allowed values: {', '.join(allowed)}")
        return value.lower()

    def seconds(self, name: str, default: float, *, allow_zero: bool) -> float:
        """The field as a finite number of seconds; ``default`` when missing or blank."""
        raw = self.extra.get(name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return default
        try:
            if isinstance(raw, bool):
                raise TypeError
            value = float(raw)
        except (TypeError, ValueError):
            self.fail(f"{name!r} must be a number of seconds, got {self.quote(raw)}")
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            kind = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
            self.fail(f"{name!r} must be {kind}, got {self.quote(raw)}")
        return value


def _check_backend_fields(
    fields: _ExtraFields,
    conn: Connection,
    backend: str,
    state_uri: str | None,
    base_url: str | None,
) -> None:
    """Fail unless the fields ``backend`` needs are set, and set right.

    The connection form cannot mark a field required for some backends only (see
    get_provider_info), so these checks are the only enforcement; they name the form's
    label too, for whoever filled the form in.
    """
    if backend == "local" and state_uri is None:
        fields.fail(
            "backend 'local' needs 'state_uri' (form field 'State URI') set to the path of "
            "the state JSON file (e.g. /shared/orchestra/state.json)"
        )
    if backend == "s3" and not _names_s3_object(state_uri):
        fields.fail(
            "backend 's3' needs 'state_uri' (form field 'State URI') of the form s3://bucket/key"
        )
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        fields.fail("'base_url' must start with http:// or https://")
    if backend == "http" and not (conn.password or "").strip():
        fields.fail("backend 'http' needs the Orchestra API key in the password field ('API key')")
    if backend == "s3" and bool(conn.login) != bool(fields.text("aws_secret_access_key")):
        fields.fail(
            "backend 's3' needs both the AWS access key id (login) and the AWS secret "
            "access key, or neither (then aws_conn_id or the default AWS credentials apply)"
        )


def _names_s3_object(uri: str | None) -> bool:
    if uri is None:
        return False
    try:
        split_s3_uri(uri)
    except ValueError:
        return False
    return True


class OrchestraDbtHook(BaseHook):
    """Resolve an ``orchestra_dbt`` connection into a dbt :class:`StateStore`.

    :param orchestra_dbt_conn_id: id of an ``orchestra_dbt`` connection.
    """

    conn_name_attr = "orchestra_dbt_conn_id"
    default_conn_name = "orchestra_dbt_default"
    conn_type = CONN_TYPE
    hook_name = "Orchestra dbt state"

    def __init__(self, orchestra_dbt_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.orchestra_dbt_conn_id = orchestra_dbt_conn_id

    @cached_property
    def config(self) -> StateConnectionConfig:
        """The parsed connection (looked up on first access, then cached)."""
        config = StateConnectionConfig.from_connection(
            self.get_connection(self.orchestra_dbt_conn_id)
        )
        _mask_in_logs(config.secrets)
        return config

    def get_conn(self) -> StateStore:
        """Alias of :meth:`get_state_store` (the generic hook API)."""
        return self.get_state_store()

    def get_state_store(self) -> StateStore:
        """Return the state store the connection points at.

        Raises:
            ValueError: the connection is misconfigured.
        """
        config = self.config
        if config.backend == "local":
            return self._local_state_store(config)
        if config.backend == "http":
            return self._http_state_store(config)
        if config.backend == "s3":
            return self._s3_state_store(config)
        # Unreachable: from_connection validates the backend.
        raise ValueError(f"Connection {config.conn_id!r}: unknown backend {config.backend!r}")

    @staticmethod
    def _local_state_store(config: StateConnectionConfig) -> StateStore:
        from airflow_provider_orchestra_dbt.state import LocalFileStateStore

        return LocalFileStateStore(config.local_path)

    @staticmethod
    def _http_state_store(config: StateConnectionConfig) -> StateStore:
        from airflow_provider_orchestra_dbt.state import (
            OrchestraHttpStateStore,
            orchestra_state_url,
        )

        return OrchestraHttpStateStore(
            orchestra_state_url(config.base_url, config.orchestra_env),
            config.api_key or "",
            timeout=config.timeout,
            retry_budget=config.retry_budget,
            key_prefix=config.integration_account_id,
            label=f"connection {config.conn_id!r}",
        )

    def _s3_state_store(self, config: StateConnectionConfig) -> StateStore:
        from airflow_provider_orchestra_dbt.state import S3StateStore

        assert config.state_uri is not None  # validated by from_connection
        credentials = self._aws_credentials(config)
        return S3StateStore.from_uri(
            config.state_uri,
            region_name=config.region_name or credentials.pop("region_name", None),
            endpoint_url=config.endpoint_url or credentials.pop("endpoint_url", None),
            label=f"connection {config.conn_id!r}",
            timeout=config.timeout,
            retry_budget=config.retry_budget,
            **credentials,
        )

    def _aws_credentials(self, config: StateConnectionConfig) -> dict[str, Any]:
        """An AWS connection if named, else keys held here, else boto3's default chain."""
        if config.aws_conn_id:
            aws = self.get_connection(config.aws_conn_id)
            extra = aws.extra_dejson if isinstance(aws.extra_dejson, Mapping) else {}
            found: dict[str, Any] = {
                "aws_access_key_id": aws.login or extra.get("aws_access_key_id"),
                "aws_secret_access_key": aws.password or extra.get("aws_secret_access_key"),
                "aws_session_token": extra.get("aws_session_token"),
                "region_name": extra.get("region_name"),
                "endpoint_url": extra.get("endpoint_url"),
            }
            found = {k: v for k, v in found.items() if v}
            _mask_in_logs(
                (
                    found.get("aws_secret_access_key"),
                    found.get("aws_session_token"),
                    *url_credentials(found.get("endpoint_url")),
                )
            )
            return found
        if config.aws_access_key_id and config.aws_secret_access_key:
            return {
                "aws_access_key_id": config.aws_access_key_id,
                "aws_secret_access_key": config.aws_secret_access_key,
            }
        return {}

    def test_connection(self) -> tuple[bool, str]:
        """Check the connection by reading the state it points at; never raises."""
        try:
            config = self.config
        except Exception as exc:
            # from_connection already redacts; a lookup failure carries no secret.
            return False, str(exc) or type(exc).__name__
        try:
            if config.backend == "local":
                return self._test_local(config)
            store = self.get_state_store()
            probe = getattr(store, "probe", None)
            if probe is not None:
                return True, config.redact(str(probe()))
            document = store.load()
            return True, f"{store.description}: {_count(len(document.entries))}"
        except Exception as exc:
            return False, config.redact(str(exc) or type(exc).__name__)

    def _test_local(self, config: StateConnectionConfig) -> tuple[bool, str]:
        from airflow_provider_orchestra_dbt.state import StateError

        path = config.local_path
        # The store follows symlinks; check the file it will really read and replace.
        target = Path(os.path.realpath(path))
        try:
            if target.is_dir():
                return False, f"local state path {path} is a directory, not a file"
            if not target.exists():
                return _describe_missing_local_file(path, target)
            document = self._local_state_store(config).load()
        except StateError as exc:
            # State errors already name the file ("state file /x/state.json is not ...").
            return False, config.redact(str(exc))
        except OSError as exc:
            return False, config.redact(f"cannot read local state file {path}: {exc}")
        return True, f"local state file {path}: {_count(len(document.entries))}"


def _count(entries: int) -> str:
    return f"{entries:,} {'entry' if entries == 1 else 'entries'}"


def _describe_missing_local_file(path: Path, target: Path) -> tuple[bool, str]:
    directory = target.parent
    if directory.is_dir():
        if os.access(directory, os.W_OK | os.X_OK):
            return True, f"no state file yet at {path}; directory is writable"
        return False, f"no state file yet at {path} and directory {directory} is not writable"
    # The store creates missing parent directories on first save.
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
        return True, (
            f"no state file yet at {path}; directory {directory} does not exist yet and will be "
            "created on first save"
        )
    return False, (
        f"no state file yet at {path}; directory {directory} does not exist and cannot be "
        f"created ({ancestor} is not a writable directory)"
    )
