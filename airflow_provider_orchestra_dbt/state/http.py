"""State kept by Orchestra, read and written through its public state API.

The API holds one document per integration (``DBT_CORE`` here)::

    GET   <base>/api/engine/public/state/DBT_CORE  -> {"state": {"<key>": {entry}, ...}}
    PATCH <base>/api/engine/public/state/DBT_CORE  <- {"state": {<changed entries>}}

and merges a PATCH per key, keeping the entry with the newer ``last_updated``.
Because the server merges, a save sends only the entries a run changed and
needs no lock or compare-and-swap: concurrent writers cannot lose each other's
updates, and an older write can never replace a newer one.

``requests`` is imported inside methods so that importing the state package
stays cheap and free of third-party imports; it comes with the ``http`` extra, and a
store built without it says which extra to install.
"""

from __future__ import annotations

import copy
import email.utils
import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from airflow_provider_orchestra_dbt import __version__
from airflow_provider_orchestra_dbt.state.errors import (
    StateError,
    StateFormatError,
    require_extra,
)
from airflow_provider_orchestra_dbt.state.model import (
    STATE_KEY,
    EntryUpdates,
    StateDocument,
    entries_to_json,
    validate_update,
)
from airflow_provider_orchestra_dbt.state.retry import (
    DEFAULT_RETRY_BUDGET,
    DEFAULT_TIMEOUT,
    UNREACHABLE_ATTEMPTS,
    RetryClock,
    check_budget,
)
from airflow_provider_orchestra_dbt.state.secrets import mask_url_credentials, redact

if TYPE_CHECKING:
    import requests

__all__ = [
    "DEFAULT_BACKOFF_SECONDS",
    "DEFAULT_RETRY_BUDGET",
    "DEFAULT_TIMEOUT",
    "ORCHESTRA_ENVS",
    "STATE_PATH",
    "OrchestraHttpStateStore",
    "orchestra_state_url",
]

log = logging.getLogger(__name__)

STATE_PATH = "/api/engine/public/state/DBT_CORE"
"""Path of the dbt Core state document below an Orchestra base URL."""

ORCHESTRA_ENVS = ("app", "stage", "dev")
"""Orchestra environments; each is served from ``https://<env>.getorchestra.io``."""

DEFAULT_BACKOFF_SECONDS = 0.5

# Establishing a connection either works quickly or not at all, so the connect
# phase gets a shorter budget than reading a (possibly large) document.
_CONNECT_TIMEOUT_MAX = 10.0
# Bounds on waiting between attempts: a misbehaving server must not be able to
# park a task for an hour with a huge Retry-After, and exponential growth must
# not outlast the task's own timeout.
_BACKOFF_MAX = 30.0
_RETRY_AFTER_MAX = 60.0
# Transient by definition: rate limiting, request timeout at a proxy, and
# server or gateway failures. 501 and 505 are 5xx but describe a permanent
# mismatch (method or protocol not supported), so retrying cannot help.
_RETRY_STATUSES = frozenset({408, 429}) | (frozenset(range(500, 600)) - {501, 505})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_DETAIL_MAX = 300
_CHUNK = 64 * 1024


def orchestra_state_url(base_url: str | None, env: str = "app") -> str:
    """The state endpoint for an explicit ``base_url`` or an Orchestra ``env``.

    ``base_url`` wins when given (e.g. ``"https://orchestra.example.com"``); a
    trailing slash is dropped, and a URL that already ends with the state path
    is taken as the endpoint itself. Otherwise ``env`` (``app``, ``stage`` or
    ``dev``) selects ``https://<env>.getorchestra.io``.

    Raises:
        ValueError: ``base_url`` is not an ``http(s)://host[...]`` URL without
            credentials, query or fragment, or ``env`` is unknown.
    """
    if base_url is not None and base_url.strip():
        base = _check_url(base_url.strip(), "Orchestra base URL").rstrip("/")
        if base.endswith(STATE_PATH):
            return base
        return base + STATE_PATH
    name = env.strip().lower()
    if name not in ORCHESTRA_ENVS:
        raise ValueError(
            f"unknown Orchestra environment {env!r}: expected one of {', '.join(ORCHESTRA_ENVS)}"
            " or an explicit base URL"
        )
    return f"https://{name}.getorchestra.io{STATE_PATH}"


def _check_url(url: str, what: str) -> str:
    # Credentials in the URL would end up in ``description``, which is logged
    # verbatim, so they are refused (and masked in the error) rather than used.
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # from None: urllib's message may quote the URL, credentials unmasked.
        raise ValueError(f"malformed {what} {mask_url_credentials(url)!r}: {exc}") from None
    shown = mask_url_credentials(url)
    expected = "expected http(s)://host[:port][/path]"
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"malformed {what} {shown!r}: {expected}")
    if not parts.hostname:
        raise ValueError(f"malformed {what} {shown!r}: no host name; {expected}")
    # Also an '@' that urlsplit puts in the path: a password pasted unencoded
    # with a '/' in it ends the authority early.
    if parts.username is not None or parts.password is not None or shown != url:
        raise ValueError(
            f"malformed {what} {shown!r}: credentials in the URL are not supported; "
            "put the API key in the connection's password field"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"malformed {what} {shown!r}: no query or fragment allowed")
    if port == 0:
        raise ValueError(f"malformed {what} {shown!r}: port 0 is not a valid port")
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Retry(Exception):
    """An attempt failed in a way worth retrying; ``cause`` says how.

    ``unreachable`` marks failures to connect or to get a whole answer in
    time, which are retried a few times only (see ``UNREACHABLE_ATTEMPTS``);
    ``wait`` is the server's ``Retry-After``, if it sent one.
    """

    def __init__(self, cause: str, wait: float | None = None, *, unreachable: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.wait = wait
        self.unreachable = unreachable


@dataclass(frozen=True)
class _Reply:
    """A response whose body was read in full within the attempt's deadline."""

    status: int
    reason: str
    headers: Any
    body: bytes


class OrchestraHttpStateStore:
    """The Orchestra state document, through ``GET``/``PATCH`` on the public API.

    Loads are filtered to ``key_prefix`` when one is set (Orchestra shares one
    document between integration accounts, and the dbt-orchestra tool filters
    the same way). Saves send only the given updates; the server merges them.

    Every request must be answered in full within ``timeout`` seconds: a
    deadline for the whole exchange, not for each read, so a server dripping
    its answer cannot hold a task for longer. 408, 429 and 5xx are retried
    with exponential backoff and full jitter (``Retry-After`` honoured, in
    seconds or as an HTTP date) until ``retry_budget`` seconds have passed, so
    a minute of throttling is ridden out. Refused connections and timeouts are
    tried ``UNREACHABLE_ATTEMPTS`` times. ``max_attempts``, if given, caps the
    attempts as well. Every other failure, and running out of budget, raises:
    a load never falls back to an empty state, because an empty state would
    make the run rebuild everything and then overwrite the good state with
    whatever it produced.

    The API key is sent only in the ``Authorization`` header. It never appears
    (verbatim, URL-encoded or JSON-escaped) in ``repr``, ``description``, log
    records or error messages.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        max_attempts: int | None = None,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        key_prefix: str | None = None,
        label: str = "",
    ) -> None:
        self._url = _check_url(url.strip(), "Orchestra state URL")
        self._label = label
        who = label or self.description
        require_extra(who, "http", "requests")
        # A key pasted from a file or a UI often carries a trailing newline;
        # requests would reject it with an error that quotes the whole header.
        key = (api_key or "").strip()
        if not key:
            raise ValueError(f"{who} has no API key (password field)")
        if not all(33 <= ord(char) <= 126 for char in key):
            # The key itself is deliberately not quoted.
            raise ValueError(
                f"{who}: the API key (password field) contains spaces, control or "
                "non-ASCII characters; paste it again"
            )
        if timeout <= 0:
            raise ValueError(f"{who}: timeout must be > 0, got {timeout}")
        budget = check_budget(retry_budget, who)
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"{who}: max_attempts must be >= 1, got {max_attempts}")
        if backoff_seconds < 0:
            raise ValueError(f"{who}: backoff_seconds must be >= 0, got {backoff_seconds}")
        prefix = (key_prefix or "").strip().rstrip(".")
        self._api_key = key
        self._timeout = float(timeout)
        self._budget = budget
        self._max_attempts = max_attempts
        self._backoff = float(backoff_seconds)
        self._key_prefix = prefix or None
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        # What this store last knew the server to hold (filtered to the
        # prefix); ``save`` returns it with the updates applied.
        self._known = StateDocument.empty()

        host = urlsplit(self._url).hostname or ""
        if urlsplit(self._url).scheme.lower() == "http" and not _is_loopback(host):
            log.warning(
                "%s uses plain http: the API key is sent unencrypted; use https",
                self.description,
            )

    @property
    def url(self) -> str:
        """The state endpoint requests go to."""
        return self._url

    @property
    def timeout(self) -> float:
        """Seconds one request may take in all."""
        return self._timeout

    @property
    def retry_budget(self) -> float:
        """Seconds a call keeps retrying before it fails."""
        return self._budget

    @property
    def key_prefix(self) -> str | None:
        """Prefix (without the trailing dot) that loaded keys must carry, if any."""
        return self._key_prefix

    @property
    def description(self) -> str:
        return f"Orchestra state API {self._url}"

    def __repr__(self) -> str:
        parts = [repr(self._url)]
        if self._key_prefix:
            parts.append(f"key_prefix={self._key_prefix!r}")
        if self._label:
            parts.append(f"label={self._label!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def close(self) -> None:
        """Close pooled connections; the store reconnects if used again."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> OrchestraHttpStateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def load(self) -> StateDocument:
        """Fetch the document, keeping only entries under ``key_prefix`` if set.

        Raises:
            StateFormatError: the response is not a JSON state document.
            StateError: the API could not be reached, rejected the key, was not
                found, or kept failing until the attempts ran out.
        """
        document = self._parse(self._request("GET"))
        with self._lock:
            self._known = document
        return _copy(document)

    def save(self, updates: EntryUpdates) -> StateDocument:
        """PATCH ``updates`` to the API, which merges them per key (newer wins).

        Returns the last loaded document with ``updates`` merged in under the
        same rule; the server's document is the truth and may hold newer
        entries from other writers. Empty ``updates`` send nothing.

        A PATCH may be retried after a timeout even though the server might
        have applied the first one: applying the same entries twice under a
        newer-wins merge gives the same result, so the retry is harmless.

        Raises:
            StateFormatError: ``updates`` is not valid state or has a key
                outside ``key_prefix``; nothing was sent.
            StateError: the request failed (see :meth:`load`).
        """
        origin = f"state update for {self.description}"
        entries = validate_update(updates, origin=origin)
        if self._key_prefix:
            outside = sorted(key for key in entries if not self._in_prefix(key))
            if outside:
                raise StateFormatError(
                    f"{origin}: {len(outside)} key(s) lack the prefix "
                    f"'{self._key_prefix}.' and would never be loaded back, "
                    f"e.g. {outside[0]!r}"
                )
        state = entries_to_json(entries)
        body = json.dumps({STATE_KEY: state}, allow_nan=False, separators=(",", ":")).encode()
        if entries:
            self._request("PATCH", body)
        with self._lock:
            self._known = self._known.merged(entries)
            return _copy(self._known)

    def probe(self) -> str:
        """Read the document and summarise it, for a connection test.

        Raises:
            StateError: as :meth:`load`.
        """
        count = len(self.load().entries)
        noun = "entry" if count == 1 else "entries"
        scope = f" under prefix '{self._key_prefix}.'" if self._key_prefix else ""
        return f"Orchestra state API reachable: {count:,} {noun}{scope}"

    # -- internals ---------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.description} ({self._label})" if self._label else self.description

    def _in_prefix(self, key: str) -> bool:
        return self._key_prefix is None or key.startswith(f"{self._key_prefix}.")

    def _redact(self, text: str) -> str:
        # Last line of defence for text that came from elsewhere (a server
        # echoing the request, an exception quoting a header).
        return redact(text, (self._api_key,))

    def _fail(self, message: str) -> NoReturn:
        # ``from None``: a requests exception in the context would carry the
        # prepared request, Authorization header included, along with it.
        raise StateError(self._redact(message)) from None

    def _authorize(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        # Set as the session's auth hook rather than a default header: with a
        # plain header, requests would replace it with Basic auth from a
        # ~/.netrc entry for the host, and would keep it across redirects.
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        return request

    def _get_session(self) -> requests.Session:
        import requests

        with self._lock:
            if self._session is None:
                session = requests.Session()
                session.auth = self._authorize
                session.headers["User-Agent"] = (
                    f"airflow-provider-orchestra-dbt/{__version__} "
                    f"python-requests/{requests.__version__}"
                )
                session.headers["Accept"] = "application/json"
                self._session = session
            return self._session

    def _request(self, method: str, body: bytes | None = None) -> _Reply:
        session = self._get_session()
        clock = RetryClock(self._budget, self._backoff, _BACKOFF_MAX)
        attempt = unreachable = 0
        while True:
            attempt += 1
            try:
                return self._attempt(session, method, body)
            except _Retry as retry:
                failure = retry
            unreachable += failure.unreachable
            if unreachable >= UNREACHABLE_ATTEMPTS or attempt == self._max_attempts:
                break
            wait = failure.wait
            # A server's Retry-After is a floor, so waiting less is pointless;
            # our own backoff may be cut short for one last try at the deadline.
            clamp = wait is None
            if wait is None:
                wait = clock.backoff(attempt)
            if wait > clock.remaining() and not clamp:
                break
            log.warning(
                "%s: %s attempt %d failed (%s); retrying in %.2fs (%.0fs of %gs retry budget left)",
                self._where,
                method,
                attempt,
                self._redact(failure.cause),
                min(wait, max(clock.remaining(), 0.0)),
                max(clock.remaining(), 0.0),
                self._budget,
            )
            if not clock.sleep(wait, clamp=clamp):
                break
        noun = "attempt" if attempt == 1 else "attempts"
        self._fail(
            f"{self._where}: {method} failed after {attempt} {noun} in {clock.elapsed():.1f}s"
            f" ({self._give_up_reason(failure, unreachable, attempt, clock)});"
            f" last error: {failure.cause}"
        )

    def _give_up_reason(
        self, failure: _Retry, unreachable: int, attempt: int, clock: RetryClock
    ) -> str:
        if unreachable >= UNREACHABLE_ATTEMPTS:
            return f"the endpoint failed to answer {unreachable} times"
        if attempt == self._max_attempts:
            return "no attempts left"
        if failure.wait is not None and failure.wait > clock.remaining():
            return f"Retry-After {failure.wait:g}s exceeds the retry budget left"
        return f"retry budget of {self._budget:g}s used up"

    def _attempt(self, session: requests.Session, method: str, body: bytes | None) -> _Reply:
        import requests

        deadline = time.monotonic() + self._timeout
        connect_timeout = min(self._timeout, _CONNECT_TIMEOUT_MAX)
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            response = session.request(
                method,
                self._url,
                data=body,
                headers=headers,
                timeout=(connect_timeout, self._timeout),
                # Streamed so the body is read under the deadline below; a
                # read timeout alone restarts with every byte that arrives.
                stream=True,
                # A redirected PATCH can silently turn into a GET, which would
                # report success without saving; redirects are reported instead.
                allow_redirects=False,
            )
        except requests.ConnectTimeout:
            # from None: a requests exception carries the prepared request, API key included.
            raise _Retry(
                f"could not connect within {connect_timeout:g}s", unreachable=True
            ) from None
        except requests.Timeout:
            # from None: a requests exception carries the prepared request, API key included.
            raise _Retry(f"no response within {self._timeout:g}s", unreachable=True) from None
        except requests.exceptions.SSLError as exc:
            # Certificate problems do not fix themselves between attempts.
            self._fail(f"{self._where}: TLS error: {_exception_text(exc)}")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            # from None: a requests exception carries the prepared request, API key included.
            raise _Retry(_exception_text(exc), unreachable=True) from None
        except requests.RequestException as exc:
            self._fail(f"{self._where}: {method} failed: {_exception_text(exc)}")

        reply = self._read(response, deadline)
        status = reply.status
        if 200 <= status < 300:
            return reply
        reason = f"HTTP {status}{' ' + reply.reason if reply.reason else ''}"
        # Redacted before it is cut short, which could leave half a key behind.
        detail = _detail(self._redact(reply.body.decode("utf-8", "replace")))
        if status in _RETRY_STATUSES:
            wait = None
            if status in _RETRY_AFTER_STATUSES:
                wait = _retry_after_seconds(reply.headers.get("Retry-After"))
            raise _Retry(f"{reason}{detail}", wait)
        if status in (401, 403):
            self._fail(
                f"{self._where} rejected the API key (HTTP {status}){detail}: "
                "check the API key in the password field"
            )
        if status == 404:
            self._fail(
                f"{self._where} not found (HTTP 404){detail}: "
                "check the base URL / Orchestra environment"
            )
        if 300 <= status < 400:
            location = reply.headers.get("Location", "")
            target = f" to {location}" if location else ""
            self._fail(
                f"{self._where} redirected ({reason}){target}: "
                "set the base URL to the address the API is served from"
            )
        self._fail(f"{self._where} refused the {method} ({reason}){detail}")

    def _read(self, response: requests.Response, deadline: float) -> _Reply:
        """Read the whole body by ``deadline``, or raise ``_Retry``."""
        raw = response.raw
        # Each read may block for at most the time left, so the deadline holds
        # even against a server sending one byte just before every timeout.
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        chunks: list[bytes] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                if sock is not None:
                    sock.settimeout(remaining)
                chunk = raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
        except Exception as exc:
            response.close()
            if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
                # from None: a requests exception carries the request, API key included.
                raise _Retry(
                    f"no complete response within {self._timeout:g}s", unreachable=True
                ) from None
            # from None: a requests exception carries the prepared request, API key included.
            raise _Retry(f"response cut short: {_exception_text(exc)}", unreachable=True) from None
        # Read to the end, so the connection can be kept alive for the next call.
        raw.release_conn()
        return _Reply(
            response.status_code, response.reason or "", response.headers, b"".join(chunks)
        )

    def _parse(self, reply: _Reply) -> StateDocument:
        content_type = reply.headers.get("Content-Type", "")
        hint = "" if "json" in content_type.lower() else f" (Content-Type {content_type!r})"
        # ``required``: an empty 200 is not "no state" but a broken response,
        # and treating it as empty would rebuild and overwrite everything.
        # ``keep``: another account's entries, which this store never uses,
        # must not make its load fail.
        return StateDocument.from_json_bytes(
            reply.body,
            origin=f"{self._where} response{hint}",
            required=True,
            keep=self._in_prefix,
        )


def _detail(body: str) -> str:
    # A short excerpt of the error body, because APIs put the actual reason
    # there ({"detail": "..."}) and the status alone is vague.
    text = " ".join(body.split())
    if not text:
        return ""
    if len(text) > _DETAIL_MAX:
        text = text[:_DETAIL_MAX] + "..."
    return f": {text}"


def _copy(document: StateDocument) -> StateDocument:
    # Callers get their own copy so that editing it cannot alter what the
    # store remembers as the server's document (entries are immutable: shared).
    return StateDocument(dict(document.entries), copy.deepcopy(document.extra))


def _exception_text(exc: BaseException) -> str:
    # requests wraps urllib3's MaxRetryError, whose text repeats the pool and
    # URL; the underlying reason ("Connection refused", ...) is what helps.
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    text = str(reason) if reason is not None else str(exc)
    return text or type(exc).__name__


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait per a ``Retry-After`` header, capped; ``None`` if absent or unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _RETRY_AFTER_MAX)
