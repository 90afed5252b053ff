"""A stand-in for Orchestra's public state API, served over real HTTP on 127.0.0.1.

Implements the contract the HTTP state store relies on, and nothing more:

* ``GET   /api/engine/public/state/DBT_CORE`` -> ``{"state": {...}}``
* ``PATCH /api/engine/public/state/DBT_CORE`` with ``{"state": {...}}`` merges per
  key: the entry with the newer ``last_updated`` wins (an update wins a tie).
* ``Authorization: Bearer <token>`` is required (401 otherwise); other paths are 404.

The merge is written here independently of the package's ``merge_entries`` so
that tests compare the client against the contract, not against itself.

Every request is recorded (the Authorization value masked) and faults can be
queued for the next requests: a status with headers and body, a raw body with
status 200, or a delay before answering. ``stop()`` (or leaving the ``with``
block) cuts open keep-alive connections and interrupts programmed delays, so it
returns promptly even while a client is mid-request.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import socket
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

STATE_PATH = "/api/engine/public/state/DBT_CORE"
DEFAULT_TOKEN = "test-api-key-0123456789"
MASKED = "<masked>"
WORKER_TIMESTAMP = "2025-01-01T00:00:00+00:00"


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``headers`` has Authorization masked.

    Recorded on arrival, so a request still held by a programmed delay is
    already counted; ``status`` is ``None`` until the answer is decided (and
    stays ``None`` if the server stopped during the delay).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or before) serving a request normally.

    ``delay`` seconds pass before anything is sent. Then, if ``status`` is set,
    that status is sent with ``headers`` and ``body``; otherwise the request is
    served normally (a pure delay).
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    drip: float = 0.0
    """Seconds between single bytes of the body (a server that answers, very slowly)."""


def _timestamp(entry: object) -> datetime | None:
    if not isinstance(entry, dict):
        return None
    value = entry.get("last_updated")
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _incoming_wins(stored: object, incoming: object) -> bool:
    new, old = _timestamp(incoming), _timestamp(stored)
    if old is None:
        return True
    return new is not None and new >= old


class OrchestraStateServer:
    """The fake API. Use as a context manager, or call ``start()``/``stop()``."""

    def __init__(self, token: str = DEFAULT_TOKEN, state: Mapping[str, Any] | None = None) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._entries: dict[str, Any] = copy.deepcopy(dict(state or {}))
        self._extra: dict[str, Any] = {}
        self._faults: deque[Fault] = deque()
        self._flaky: tuple[float, random.Random, tuple[Fault, ...]] | None = None
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> OrchestraStateServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        httpd = _Server(("127.0.0.1", 0), handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # Handler threads blocked reading an idle keep-alive connection
            # only wake up when the socket is shut down under them.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OrchestraStateServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server is not running"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_url(self) -> str:
        return self.base_url + STATE_PATH

    # -- state and records -------------------------------------------------

    @property
    def entries(self) -> dict[str, Any]:
        """A copy of the stored ``state`` object."""
        with self._lock:
            return copy.deepcopy(self._entries)

    def set_document(self, document: Mapping[str, Any]) -> None:
        """Replace the stored document (``state`` plus any other top-level fields)."""
        with self._lock:
            raw = copy.deepcopy(dict(document))
            self._entries = raw.pop("state", {})
            self._extra = raw

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, method: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- faults ------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str = b"",
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (before auth and routing)."""
        data = body.encode() if isinstance(body, str) else body
        self._queue(count, Fault(status=status, headers=dict(headers or {}), body=data))

    def delay_next(self, count: int, seconds: float) -> None:
        """Sleep ``seconds`` before serving each of the next ``count`` requests."""
        self._queue(count, Fault(delay=seconds))

    def raw_next(
        self, count: int, body: bytes | str, *, content_type: str = "application/json"
    ) -> None:
        """Answer the next ``count`` requests with 200 and exactly ``body``."""
        data = body.encode() if isinstance(body, str) else body
        self._queue(count, Fault(status=200, headers={"Content-Type": content_type}, body=data))

    def drip_next(self, count: int, seconds_per_byte: float) -> None:
        """Serve the next ``count`` requests normally, but send their bodies a byte at a time."""
        self._queue(count, Fault(drip=seconds_per_byte))

    def flaky(self, rate: float, faults: tuple[Fault, ...], *, seed: int = 0) -> None:
        """From now on answer a ``rate`` share of requests with one of ``faults``, at random.

        Seeded, so a failing run can be replayed; ``rate`` 0 switches it off.
        """
        with self._lock:
            self._flaky = (rate, random.Random(seed), faults) if rate else None

    def _queue(self, count: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * count)

    # -- used by the handler -----------------------------------------------

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._flaky is not None:
                rate, chance, faults = self._flaky
                if chance.random() < rate:
                    return chance.choice(faults)
            return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _get(self) -> bytes:
        with self._lock:
            return json.dumps({**self._extra, "state": self._entries}).encode()

    def _patch(self, updates: Mapping[str, Any]) -> None:
        with self._lock:
            for key, incoming in updates.items():
                if key not in self._entries or _incoming_wins(self._entries[key], incoming):
                    self._entries[key] = copy.deepcopy(incoming)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of
    # concurrent clients, which then stall for the 1 s + 2 s SYN retransmits.
    request_queue_size = 128
    owner: OrchestraStateServer

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner._track(request, True)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.owner._track(request, False)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that clients keep connections alive as they would in production.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body
    # waits for the client's delayed ACK (~40 ms) on every response.
    disable_nagle_algorithm = True
    owner: OrchestraStateServer

    def log_message(self, format: str, *args: Any) -> None:
        # Keep test output clean; requests are recorded instead.
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        # The body is always read, even for errors, so the connection stays usable.
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {
            name: (MASKED if name.lower() == "authorization" else value)
            for name, value in self.headers.items()
        }
        path = urlsplit(self.path).path
        record = RecordedRequest(self.command, path, headers, body)
        self.owner._record(record)
        status, reply_headers, reply, drip = self._respond(path, body)
        if status == 0:
            return  # the server is stopping; drop the connection
        record.status = status
        try:
            self.send_response(status)
            for name, value in reply_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            if not drip:
                self.wfile.write(reply)
            for index in range(len(reply) if drip else 0):
                self.wfile.write(reply[index : index + 1])
                self.wfile.flush()
                if self.owner._stopping.wait(drip):
                    break
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (timed out) while we were delayed.
            self.close_connection = True

    def _respond(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes, float]:
        fault = self.owner._next_fault()
        drip = fault.drip if fault is not None else 0.0
        if fault is not None:
            if fault.delay and self.owner._stopping.wait(fault.delay):
                self.close_connection = True
                return 0, {}, b"", 0.0
            if fault.status is not None:
                headers = {"Content-Type": "application/json", **fault.headers}
                return fault.status, headers, fault.body, drip
        return (*self._serve(path, body), drip)

    def _serve(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        json_type = {"Content-Type": "application/json"}
        if self.headers.get("Authorization") != f"Bearer {self.owner.token}":
            return 401, json_type, b'{"detail": "Invalid API key"}'
        if path != STATE_PATH:
            return 404, json_type, b'{"detail": "Not Found"}'
        if self.command == "GET":
            return 200, json_type, self.owner._get()
        if self.command != "PATCH":
            return 405, {**json_type, "Allow": "GET, PATCH"}, b'{"detail": "Method Not Allowed"}'
        try:
            document = json.loads(body)
        except ValueError:
            return 400, json_type, b'{"detail": "body is not JSON"}'
        updates = document.get("state") if isinstance(document, dict) else None
        if not isinstance(updates, dict) or not all(isinstance(e, dict) for e in updates.values()):
            return 422, json_type, b'{"detail": "expected {\\"state\\": {key: entry}}"}'
        self.owner._patch(updates)
        return 200, json_type, b'{"status": "ok"}'


def save_distinct_keys(url: str, token: str, worker: int, count: int, start: Any) -> None:
    """Body of a spawned writer process: wait on ``start``, then save ``count`` keys one by one.

    Lives here rather than in the test module because a spawned child imports
    the module that defines its target, and this one is stdlib-only while the
    test module pulls in pytest: eight children compiling pytest (bytecode
    caching is off in CI) cost seconds before the first save.
    """
    from airflow_provider_orchestra_dbt.state import OrchestraHttpStateStore

    store = OrchestraHttpStateStore(url, token, timeout=10.0, backoff_seconds=0.05)
    # Import requests and open the connection first, so that the saves of all
    # workers really overlap instead of being staggered by start-up.
    store.load()
    start.wait()
    for index in range(count):
        key = f"db.w{worker}.k{index}"
        store.save({key: {"checksum": f"{worker}-{index}", "last_updated": WORKER_TIMESTAMP}})


def running_server(
    token: str = DEFAULT_TOKEN, state: Mapping[str, Any] | None = None
) -> Iterator[OrchestraStateServer]:
    """Generator for a pytest fixture: ``yield from running_server()``."""
    with OrchestraStateServer(token, state) as server:
        yield server
