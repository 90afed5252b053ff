"""A real S3-compatible HTTP endpoint for tests: moto's server on 127.0.0.1.

The server runs in a thread of the test process (``ThreadedMotoServer``) and
is reached over real HTTP with boto3 and an explicit ``endpoint_url``, so the
code under test goes through botocore's full request path (signing, retries,
error parsing) exactly as it would against AWS.

Nothing here may ever contact AWS: every client is built with the server's
``endpoint_url``, fake credentials are exported, and the EC2 metadata lookup
(which would otherwise be tried by the default credential chain and wait for a
timeout) is disabled.

Typical use, from a test module::

    @pytest.fixture(scope="session")
    def s3_server() -> Iterator[MotoS3Server]:
        with MotoS3Server() as server:
            yield server

    def test_x(s3_server: MotoS3Server) -> None:
        params = s3_server.create_bucket()
        store = S3StateStore(params.bucket, "state.json", **params.store_kwargs())
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

REGION = "us-east-1"
FAKE_ACCESS_KEY_ID = "testing"
FAKE_SECRET_ACCESS_KEY = "testing"

# Applied for the server's lifetime (and inherited by spawned worker
# processes): fake keys for the default chain, no EC2 metadata probing, and
# no user ~/.aws files whose profiles or endpoints could redirect requests.
_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_UNSET_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

_bucket_numbers = itertools.count()

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class S3Params:
    """Where a test bucket lives and how to sign requests to it."""

    endpoint_url: str
    bucket: str
    region_name: str = REGION
    aws_access_key_id: str = FAKE_ACCESS_KEY_ID
    aws_secret_access_key: str = FAKE_SECRET_ACCESS_KEY

    def store_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``S3StateStore`` (everything but bucket and key)."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
        }

    def client(self, service: str = "s3") -> Any:
        """A boto3 client for the moto server, independent of the store under test."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            region_name=self.region_name,
        ).client(service, endpoint_url=self.endpoint_url)


class _SerializedApp:
    """WSGI middleware that handles one request at a time.

    moto's conditional PUT checks ``If-Match`` / ``If-None-Match`` and then
    stores the object in two separate steps with no lock in between
    (``S3Response.put_object`` in moto 5.2), and the threaded server runs each
    request in its own thread. Two conditional writes racing through that gap
    can both succeed, which real S3 never allows, so concurrency tests would
    fail for reasons outside the code under test. Serialising requests makes
    every request atomic, which is the guarantee S3 gives; clients still race
    freely between their read and their conditional write, which is the window
    the code under test has to handle.
    """

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        with self._lock:
            result = self._app(environ, start_response)
            try:
                # The body is produced inside the lock too, so a response never
                # reflects state from after a later request.
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


_FAULTS = (
    ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
)


class _FlakyApp:
    """WSGI middleware answering a share of S3 requests with SlowDown (503) or InternalError (500).

    The two errors real S3 sends under load; moto never does. Seeded, so a
    failing run can be replayed. moto's own control endpoints are left alone.
    """

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._rate = 0.0
        self._random = random.Random(0)
        self.injected = 0

    def configure(self, rate: float, seed: int) -> None:
        with self._lock:
            self._rate, self._random, self.injected = rate, random.Random(seed), 0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            fault = None
            control = environ.get("PATH_INFO", "").startswith("/moto-api")
            if self._rate and not control and self._random.random() < self._rate:
                fault = self._random.choice(_FAULTS)
                self.injected += 1
        if fault is None:
            return self._app(environ, start_response)
        # The request body is read so the connection stays usable.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)
        status, code, message = fault
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>"
        ).encode()
        start_response(
            status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        )
        return [body]


class MotoS3Server:
    """moto's threaded server on 127.0.0.1 and an OS-assigned free port.

    ``serialize`` (default on) makes the server handle one request at a time;
    see ``_SerializedApp`` for why concurrency tests need it.
    """

    def __init__(self, *, serialize: bool = True) -> None:
        self._serialize = serialize
        self._server: Any = None
        self._flaky: _FlakyApp | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_log_level = logging.NOTSET
        self.endpoint_url = ""

    def __enter__(self) -> MotoS3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        for name in (*_ENV, *_UNSET_ENV):
            self._saved_env[name] = os.environ.get(name)
        os.environ.update(_ENV)
        for name in _UNSET_ENV:
            os.environ.pop(name, None)

        # werkzeug logs every request at INFO; hundreds of lines per test
        # would bury the output that matters. Errors are still logged.
        werkzeug_log = logging.getLogger("werkzeug")
        self._saved_log_level = werkzeug_log.level
        werkzeug_log.setLevel(logging.WARNING)

        from moto.server import ThreadedMotoServer

        # Port 0 lets the OS pick a free port at bind time, so there is no
        # window in which another process could take a port chosen earlier.
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._server = server
        # ThreadedMotoServer has no option for these, so the app of its
        # werkzeug server is wrapped once it exists (before any request).
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is None or not hasattr(wsgi_server, "app"):
            self.stop()
            raise RuntimeError("moto's ThreadedMotoServer internals changed; update me")
        if self._serialize:
            wsgi_server.app = _SerializedApp(wsgi_server.app)
        self._flaky = _FlakyApp(wsgi_server.app)
        wsgi_server.app = self._flaky
        host, port = server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        logging.getLogger("werkzeug").setLevel(self._saved_log_level)

    @contextlib.contextmanager
    def flaky(self, rate: float, *, seed: int = 0) -> Iterator[_FlakyApp]:
        """Answer a ``rate`` share of S3 requests with SlowDown or InternalError meanwhile.

        Server-wide: tests using this must not run concurrently with others.
        The yielded object's ``injected`` counts the errors sent.
        """
        assert self._flaky is not None, "server is not running"
        self._flaky.configure(rate, seed)
        try:
            yield self._flaky
        finally:
            self._flaky.configure(0.0, seed)

    def params(self, bucket: str) -> S3Params:
        return S3Params(endpoint_url=self.endpoint_url, bucket=bucket)

    def create_bucket(self, prefix: str = "state") -> S3Params:
        """Create a new, uniquely named bucket and return how to reach it."""
        bucket = f"{prefix}-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}"
        params = self.params(bucket)
        params.client().create_bucket(Bucket=bucket)
        return params

    def create_user(self, name: str, policy: dict[str, Any] | None = None) -> tuple[str, str]:
        """An IAM user with ``policy`` inline (or none); returns (access key id, secret).

        Only meaningful inside ``iam_auth()``: with authorization off, moto lets
        every request through whatever its credentials.
        """
        iam = self.params("unused").client("iam")
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(
                UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy)
            )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @contextlib.contextmanager
    def iam_auth(self) -> Iterator[None]:
        """Make the server check signatures and IAM policies for the duration.

        moto ignores credentials, IAM policies and bucket policies unless its
        IAM authorization is switched on, which is a server-wide setting (the
        ``INITIAL_NO_AUTH_ACTION_COUNT`` budget, here set through moto's
        ``/moto-api/reset-auth`` endpoint). Tests using this must not run
        concurrently with other tests on the same server.
        """
        previous = self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth(previous)

    def _reset_auth(self, count: str) -> str:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            # Not form-encoded (urllib's default), or Flask would parse the
            # body as a form and moto would see no data.
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body: dict[str, str] = json.loads(response.read())
        return body["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
