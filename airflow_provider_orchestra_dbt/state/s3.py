"""State kept as one JSON object in Amazon S3 or an S3-compatible store.

Concurrent writers are made safe with S3 conditional writes rather than a
lock: a save reads the object and its ETag, merges, and writes back only if
the object is still the one it read (``If-Match``), or still absent
(``If-None-Match: *``). A writer that loses the race re-reads, re-merges and
tries again, so no writer's entries are ever lost.

Lost races are retried with full jitter until ``retry_budget`` seconds have
passed, not for a fixed number of rounds: with dozens of tasks finishing at
once a writer may lose many rounds in a row, and a count that suits two
writers gives up long before the crowd has drained. Throttling (``SlowDown``)
and 5xx are retried by botocore's ``standard`` retry mode within each call,
under the same budget; an endpoint that refuses connections or never answers
is given up on after a few attempts of ``timeout`` seconds each.

boto3 is imported inside the methods that need it: this module is imported
while Airflow parses DAG files, and importing boto3 there would slow down
every parse for DAGs that never touch S3. It comes with the ``s3`` extra; a store built
without it says which extra to install.
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
from collections.abc import Iterator
from typing import Any

from airflow_provider_orchestra_dbt.state.errors import (
    StateConflictError,
    StateError,
    require_extra,
)
from airflow_provider_orchestra_dbt.state.lease import LEASE_DIR, LeaseUnavailable
from airflow_provider_orchestra_dbt.state.model import (
    EntryUpdates,
    StateDocument,
    validate_update,
)
from airflow_provider_orchestra_dbt.state.retry import (
    DEFAULT_RETRY_BUDGET,
    DEFAULT_TIMEOUT,
    UNREACHABLE_ATTEMPTS,
    RetryClock,
    check_budget,
)
from airflow_provider_orchestra_dbt.state.secrets import (
    mask_url_credentials,
    redact,
    url_credentials,
)

__all__ = ["DEFAULT_RETRY_BUDGET", "DEFAULT_TIMEOUT", "S3StateStore", "split_s3_uri"]

# Backoff between conflicting rounds: the first retry comes quickly because
# most conflicts are two tasks finishing at nearly the same moment; the cap
# keeps the waits of a long losing streak short enough to keep taking turns
# (32 writers on a 2,000-entry object: ~10 s for all on moto, vs ~11 s with
# a 2 s cap and ~13 s with 4 s).
_BACKOFF_START = 0.02
_BACKOFF_MAX = 1.0

_CONNECT_TIMEOUT_MAX = 10.0
# botocore's standard mode waits a random 0..2**(n-1) s, at most 20 s, after
# attempt n; 12 attempts wait about 75 s in all on average, enough to ride out
# a minute of throttling, and the retry budget cuts them short.
_CLIENT_MAX_ATTEMPTS = 12
_BOTOCORE_MAX_BACKOFF = 20.0

# Seconds one lease read or write keeps retrying throttling and 5xx (the heartbeat
# renews every ttl/3 and tries again on the next beat).
_LEASE_RETRY_BUDGET = 10.0

_URI_SCHEME = "s3://"
_CONTENT_TYPE = "application/json"

# Error codes that mean "another writer got there first": 412 when the ETag
# (or absence) we conditioned on no longer holds, 409 when S3 saw two
# conditional writes to the key in flight at once.
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_NO_SUCH_KEY_CODES = frozenset({"NoSuchKey"})
_NO_SUCH_BUCKET_CODES = frozenset({"NoSuchBucket"})
_ACCESS_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "Forbidden"})


class S3StateStore:
    """A state document stored as a single S3 object, safe for concurrent writers.

    Credentials are the explicit keys when given, otherwise boto3's default
    chain (environment, shared config, instance or task role). They are kept
    only to build the client and never appear in ``repr``, ``description`` or
    error messages.

    ``label`` says where the configuration came from (e.g. ``"connection
    'my_conn'"``) and is added to every error message, so an operator can tell
    which Airflow connection to fix.
    """

    def __init__(
        self,
        bucket: str,
        key: str,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        label: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        max_attempts: int | None = None,
        client: Any | None = None,
    ) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self._budget = check_budget(retry_budget, label or "S3 state store")
        self._timeout = float(timeout)
        self._bucket = bucket
        self._key = key
        self._region_name = region_name or None
        self._endpoint_url = endpoint_url or None
        self._label = label
        self._max_attempts = max_attempts
        self._access_key_id = aws_access_key_id or None
        self._secret_access_key = aws_secret_access_key or None
        self._session_token = aws_session_token or None
        self._client = client
        self._hooked = False
        # The deadline of the call in progress, per thread: botocore's event
        # hooks get no reference to the call that triggered them.
        self._calls = threading.local()
        # boto3 sessions are not thread-safe, so the one-time client build is
        # serialised; the client itself may then be shared by threads.
        self._client_lock = threading.Lock()

        if not bucket:
            raise StateError(f"{self._where()}: the S3 bucket name is empty")
        if not key or key.endswith("/"):
            raise StateError(
                f"{self._where()}: the S3 key {key!r} does not name an object"
                " (it is empty or ends with '/')"
            )
        if (self._access_key_id is None) != (self._secret_access_key is None):
            raise StateError(
                f"{self._where()}: an access key id and a secret access key must be given"
                " together (or neither, to use the default AWS credential chain)"
            )
        if self._session_token is not None and self._access_key_id is None:
            raise StateError(
                f"{self._where()}: a session token was given without an access key id"
                " and secret access key"
            )
        require_extra(self._where(), "s3", "boto3", "botocore")

    @classmethod
    def from_uri(cls, uri: str, **kwargs: Any) -> S3StateStore:
        """Build a store from ``s3://bucket/path/to/key.json``.

        Raises:
            StateError: ``uri`` is not an ``s3://`` URI naming a bucket and a key.
        """
        label = kwargs.get("label", "")
        prefix = f"{label}: " if label else ""
        try:
            bucket, key = split_s3_uri(uri)
        except ValueError as exc:
            raise StateError(f"{prefix}state URI {uri!r} {exc}") from exc
        return cls(bucket, key, **kwargs)

    @property
    def timeout(self) -> float:
        """Seconds one request may take in all."""
        return self._timeout

    @property
    def retry_budget(self) -> float:
        """Seconds a call keeps retrying before it fails."""
        return self._budget

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def key(self) -> str:
        return self._key

    @property
    def uri(self) -> str:
        return f"{_URI_SCHEME}{self._bucket}/{self._key}"

    @property
    def description(self) -> str:
        if self._endpoint_url is None:
            return f"S3 object {self.uri}"
        return f"S3 object {self.uri} at {mask_url_credentials(self._endpoint_url)}"

    def __repr__(self) -> str:
        parts = [repr(self.uri)]
        if self._endpoint_url is not None:
            parts.append(f"endpoint_url={mask_url_credentials(self._endpoint_url)!r}")
        if self._label:
            parts.append(f"label={self._label!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def load(self) -> StateDocument:
        """Read the object; a missing object is an empty state.

        Raises:
            StateFormatError: the object is not valid state.
            StateError: the bucket is missing, access is denied, the endpoint
                cannot be reached, or the read failed otherwise.
        """
        with self._deadline():
            document, _ = self._read()
        return document

    def save(self, updates: EntryUpdates) -> StateDocument:
        """Merge ``updates`` into the object with a conditional write, retrying on conflict.

        Raises:
            StateFormatError: the stored object or ``updates`` is not valid
                state; nothing was written.
            StateConflictError: other writers changed the object on every
                round until the retry budget (or ``max_attempts``) ran out.
            StateError: the object could not be read or written.
        """
        entries = validate_update(updates, origin=f"state update for {self.description}")

        with self._deadline() as clock:
            attempt = 0
            while True:
                attempt += 1
                current, etag = self._read()
                merged = current.merged(entries)
                if etag is not None and merged == current:
                    # Nothing would change (e.g. every update is older than what is
                    # stored); skipping the write is equivalent to winning it.
                    return current
                if self._put(merged.to_json_bytes(compact=True), etag):
                    return merged
                if attempt == self._max_attempts or not clock.sleep(clock.backoff(attempt)):
                    break
        raise StateConflictError(
            f"{self._where()}: gave up saving state after {attempt} attempts in"
            f" {clock.elapsed():.1f}s: other writers changed the object every time"
        )

    def probe(self) -> str:
        """Check that the state can be read and return a one-line summary.

        Meant for connection tests: it reports whether the object exists and
        how many entries it holds, or, when there is no object yet, that the
        bucket is reachable (so the first save can create it).

        Raises:
            StateFormatError: the object exists but is not valid state.
            StateError: as for ``load``.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        with self._deadline():
            document, etag = self._read()
            if etag is not None:
                count = len(document.entries)
                noun = "entry" if count == 1 else "entries"
                return f"{self.description} found, {count:,} {noun}"
            try:
                self._get_client().head_bucket(Bucket=self._bucket)
            except (BotoCoreError, ClientError) as exc:
                # from None: botocore's text may quote endpoint credentials (see _redact).
                raise self._error("cannot check the bucket", exc) from None
        return f"no state object yet at {self.uri}; bucket reachable"

    def write_object(self, key: str, body: bytes, content_type: str) -> None:
        """Write another object of the state's bucket (a run picture), with the same client.

        Raises:
            StateError: the write failed.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with self._deadline():
                self._get_client().put_object(
                    Bucket=self._bucket, Key=key, Body=body, ContentType=content_type
                )
        except (BotoCoreError, ClientError) as exc:
            # from None: botocore's text may quote endpoint credentials (see _redact).
            raise self._error(f"cannot write {_URI_SCHEME}{self._bucket}/{key}", exc) from None

    def read_object(self, key: str) -> bytes | None:
        """Read another object of the state's bucket; ``None`` when there is no such key.

        Raises:
            StateError: the read failed otherwise.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with self._deadline():
                response = self._get_client().get_object(Bucket=self._bucket, Key=key)
                data: bytes = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            if _error_code(exc) in _NO_SUCH_KEY_CODES:
                return None
            # from None: botocore's text may quote endpoint credentials (see _redact).
            raise self._error(f"cannot read {_URI_SCHEME}{self._bucket}/{key}", exc) from None
        return data

    # -- leases (state/lease.py): one object per project and target next to the state ---------

    def lease_key(self, name: str) -> str:
        """The key of lease ``name``: ``<state key's folder>/orchestra_dbt_leases/<name>``."""
        folder = posixpath.dirname(self._key)
        return posixpath.join(folder, LEASE_DIR, name) if folder else f"{LEASE_DIR}/{name}"

    def lease_location(self, name: str) -> str:
        return f"{_URI_SCHEME}{self._bucket}/{self.lease_key(name)}"

    def read_lease(self, name: str) -> tuple[bytes | None, str | None]:
        """The lease record and its ETag, or ``(None, None)`` when there is none.

        Raises:
            StateError: the read failed.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.lease_key(name)
        try:
            with self._lease_deadline():
                response = self._get_client().get_object(Bucket=self._bucket, Key=key)
                data: bytes = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            if _error_code(exc) in _NO_SUCH_KEY_CODES:
                return None, None
            action = f"cannot read the lease {self.lease_location(name)}"
            # from None: botocore's text may quote endpoint credentials (see _redact).
            raise self._lease_error(action, exc) from None
        return data, str(response["ETag"])

    def write_lease(self, name: str, data: bytes, version: str | None) -> str | None:
        """Write the lease record if it is still at ``version`` (None: still absent).

        Returns the new ETag, or None when another run changed it first.

        Raises:
            StateError: the write failed otherwise.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            with self._lease_deadline():
                response = self._get_client().put_object(
                    Bucket=self._bucket,
                    Key=self.lease_key(name),
                    Body=data,
                    ContentType=_CONTENT_TYPE,
                    **condition,
                )
        except (BotoCoreError, ClientError) as exc:
            code = _error_code(exc)
            if code in _CONFLICT_CODES or (version is not None and code in _NO_SUCH_KEY_CODES):
                return None
            action = f"cannot write the lease {self.lease_location(name)}"
            # from None: botocore's text may quote endpoint credentials (see _redact).
            raise self._lease_error(action, exc) from None
        return str(response["ETag"])

    def _lease_error(self, action: str, exc: BaseException) -> StateError:
        """``LeaseUnavailable`` when no retry can help (no permission, no conditional writes)."""
        error = self._error(action, exc)
        if _error_code(exc) in _ACCESS_DENIED_CODES | {"NotImplemented"}:
            return LeaseUnavailable(str(error))
        return error

    @contextlib.contextmanager
    def _lease_deadline(self) -> Iterator[RetryClock]:
        """As ``_deadline``, on a short budget: a lease call is retried by its caller's loop,
        and a renewal stuck for minutes would outlive the lease it renews."""
        clock = RetryClock(min(self._budget, _LEASE_RETRY_BUDGET), _BACKOFF_START, _BACKOFF_MAX)
        outer = getattr(self._calls, "clock", None)
        self._calls.clock = clock
        try:
            yield clock
        finally:
            self._calls.clock = outer

    def _read(self) -> tuple[StateDocument, str | None]:
        """Return the stored document and its ETag, or an empty one and ``None``."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._get_client()
        try:
            response = client.get_object(Bucket=self._bucket, Key=self._key)
            data: bytes = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            if _error_code(exc) in _NO_SUCH_KEY_CODES:
                return StateDocument.empty(), None
            # from None: botocore's text may quote endpoint credentials (see _redact).
            raise self._error("cannot read state", exc) from None
        etag: str = response["ETag"]
        return StateDocument.from_json_bytes(data, origin=self.description), etag

    def _put(self, payload: bytes, etag: str | None) -> bool:
        """Write ``payload`` if the object is unchanged since it was read.

        Returns False when another writer got there first.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            self._get_client().put_object(
                Bucket=self._bucket,
                Key=self._key,
                Body=payload,
                ContentType=_CONTENT_TYPE,
                **condition,
            )
        except (BotoCoreError, ClientError) as exc:
            code = _error_code(exc)
            # NoSuchKey on an If-Match write means the object was deleted after
            # we read it: the next round sees it missing and creates it.
            if code in _CONFLICT_CODES or (etag is not None and code in _NO_SUCH_KEY_CODES):
                return False
            # from None: botocore's text may quote endpoint credentials (see _redact).
            raise self._error("cannot write state", exc) from None
        return True

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[RetryClock]:
        """Bound the botocore calls made inside, in this thread, by the retry budget."""
        clock = RetryClock(self._budget, _BACKOFF_START, _BACKOFF_MAX)
        outer = getattr(self._calls, "clock", None)
        self._calls.clock = clock
        try:
            yield clock
        finally:
            self._calls.clock = outer

    def _veto_retry(self, attempts: int, caught_exception: Any = None, **_: Any) -> bool | None:
        """``needs-retry`` hook, run before botocore's own: False stops the retries.

        None leaves the decision (and the wait) to botocore's retry mode.
        """
        from botocore.exceptions import ConnectionError, HTTPClientError

        clock: RetryClock | None = getattr(self._calls, "clock", None)
        if clock is None:
            return None
        if attempts == 1:
            self._calls.unreachable = 0
        if isinstance(caught_exception, ConnectionError | HTTPClientError):
            self._calls.unreachable += 1
            if self._calls.unreachable >= UNREACHABLE_ATTEMPTS:
                return False
        # botocore's wait before the next attempt is random up to this bound; a
        # retry that might start past the deadline is not made at all, which
        # keeps the budget a hard bound (at the cost of giving up a little early).
        longest_wait = min(_BOTOCORE_MAX_BACKOFF, 2.0 ** min(attempts - 1, 10))
        return False if clock.remaining() < longest_wait else None

    def _get_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._build_client()
            if not self._hooked:
                self._hooked = True
                events = getattr(getattr(self._client, "meta", None), "events", None)
                if events is not None:
                    # First, so that its veto is seen before the retry mode's answer.
                    events.register_first("needs-retry.s3", self._veto_retry)
            return self._client

    def _build_client(self) -> Any:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        options: dict[str, Any] = {
            "connect_timeout": min(self._timeout, _CONNECT_TIMEOUT_MAX),
            "read_timeout": self._timeout,
            "retries": {"max_attempts": _CLIENT_MAX_ATTEMPTS, "mode": "standard"},
        }
        if self._endpoint_url is not None:
            # S3-compatible stores (MinIO, Ceph, ...) commonly serve only
            # path-style URLs and reject the checksum headers recent botocore
            # sends by default; AWS itself needs neither setting.
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        try:
            session = boto3.session.Session(
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret_access_key,
                aws_session_token=self._session_token,
                region_name=self._region_name,
            )
            return session.client("s3", endpoint_url=self._endpoint_url, config=Config(**options))
        except (BotoCoreError, ValueError) as exc:
            # from None: botocore's text may quote endpoint credentials (see _redact).
            raise self._error("cannot create the S3 client", exc) from None

    def _where(self) -> str:
        return f"{self.description} ({self._label})" if self._label else self.description

    def _error(self, action: str, exc: BaseException) -> StateError:
        """Turn a boto3/botocore failure into a ``StateError`` saying what is wrong."""
        return StateError(self._redact(f"{self._where()}: {action}: {self._explain(exc)}"))

    def _explain(self, exc: BaseException) -> str:
        from botocore.exceptions import (
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )

        code = _error_code(exc)
        if code is not None:
            return self._explain_code(code, exc)
        if isinstance(exc, ConnectionError | HTTPClientError):
            return f"cannot reach endpoint {self._endpoint_for_messages()}: {exc}"
        if isinstance(exc, NoCredentialsError):
            return (
                "no AWS credentials found: set them on the connection or in the"
                " default AWS credential chain (environment, ~/.aws, instance role)"
            )
        if isinstance(exc, PartialCredentialsError):
            return f"incomplete AWS credentials: {exc}"
        if isinstance(exc, NoRegionError):
            return "no AWS region configured: set region_name on the connection"
        return f"{type(exc).__name__}: {exc}"

    def _explain_code(self, code: str, exc: BaseException) -> str:
        if code in _NO_SUCH_BUCKET_CODES or code == "404":
            return f"bucket {self._bucket!r} does not exist"
        if code in _ACCESS_DENIED_CODES:
            return (
                f"access denied to {self.uri}: the credentials need s3:GetObject and"
                " s3:PutObject on the key (and s3:ListBucket on the bucket)"
            )
        if code == "InvalidAccessKeyId":
            return "the AWS access key id is not recognised by the endpoint"
        if code == "SignatureDoesNotMatch":
            return "the request signature was rejected: check the secret access key"
        if code in {"ExpiredToken", "InvalidToken", "TokenRefreshRequired"}:
            return "the AWS session token is invalid or has expired"
        if code == "NotImplemented":
            # Some S3-compatible stores lack conditional writes; without them
            # concurrent saves could silently lose each other's entries.
            return (
                "the endpoint does not support a feature this store needs (conditional"
                " writes with If-Match / If-None-Match)"
            )
        message = getattr(exc, "response", {}).get("Error", {}).get("Message") or str(exc)
        return f"{code}: {message}"

    def _endpoint_for_messages(self) -> str:
        if self._endpoint_url is not None:
            return mask_url_credentials(self._endpoint_url)
        client = self._client
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
        return str(endpoint) if endpoint else "(default AWS endpoint)"

    def _redact(self, text: str) -> str:
        # Messages are built from botocore's text, which could in principle
        # echo request details; secrets are masked as a last line of defence.
        return redact(
            text,
            (self._secret_access_key, self._session_token, *url_credentials(self._endpoint_url)),
        )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """The bucket and the object key of ``s3://bucket/path/to/key.json``.

    Parsed by hand rather than with urllib: '?' and '#' are legal in S3 keys and a URL parser
    would cut the key short at them. The scheme may be in any case.

    Raises:
        ValueError: ``uri`` is not an ``s3://`` URI naming a bucket and an object key; the
            message says what is wrong, worded to follow the quoted URI.
    """
    if not uri.lower().startswith(_URI_SCHEME):
        raise ValueError("is not an s3://bucket/key URI")
    bucket, _, key = uri[len(_URI_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError("does not name a bucket")
    if not key or key.endswith("/"):
        raise ValueError("does not name an object key (expected s3://bucket/path/to/state.json)")
    return bucket, key


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError``, or ``None`` for other errors.

    Responses to HEAD requests have no body, so their code is the bare HTTP
    status ("404", "403").
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code:
        return str(code)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(status) if status else None
