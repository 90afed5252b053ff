"""OrchestraHttpStateStore against a real HTTP server implementing Orchestra's state API.

The server (``support.orchestra_server``) runs on 127.0.0.1 in this process;
faults (error statuses, Retry-After, slow answers, garbage bodies) are
programmed per test. Timeouts and backoffs are kept tiny so the whole file runs
in seconds; the only sleeps are the server's programmed delays and the store's
own backoff.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support.concurrency import run_in_processes
from support.orchestra_server import (
    DEFAULT_TOKEN,
    MASKED,
    STATE_PATH,
    Fault,
    OrchestraStateServer,
    save_distinct_keys,
)

from airflow_provider_orchestra_dbt import __version__
from airflow_provider_orchestra_dbt.state import (
    OrchestraHttpStateStore,
    StateDocument,
    StateError,
    StateFormatError,
    StateStore,
    format_timestamp,
    orchestra_state_url,
)
from airflow_provider_orchestra_dbt.state import http as http_module
from airflow_provider_orchestra_dbt.state.model import entries_to_json
from airflow_provider_orchestra_dbt.state.secrets import secret_forms

pytestmark = pytest.mark.integration

T0 = "2025-01-01T00:00:00+00:00"
T1 = "2025-01-01T01:00:00+00:00"
T2 = "2025-01-01T02:00:00+00:00"
LABEL = "connection 'orchestra_dbt_default'"
WRONG_KEY = "wrong-key-9876543210"
FAST: dict[str, Any] = {"timeout": 2.0, "max_attempts": 3, "backoff_seconds": 0.01}


def _entry(checksum: str, last_updated: str = T0, **fields: object) -> dict[str, Any]:
    return {"checksum": checksum, "last_updated": last_updated, **fields}


@pytest.fixture
def server() -> Iterator[OrchestraStateServer]:
    with OrchestraStateServer() as running:
        yield running


def _store(server: OrchestraStateServer, **overrides: Any) -> OrchestraHttpStateStore:
    options = {**FAST, "label": LABEL, **overrides}
    url = options.pop("url", server.state_url)
    api_key = options.pop("api_key", DEFAULT_TOKEN)
    return OrchestraHttpStateStore(url, api_key, **options)


def _closed_port() -> int:
    # Bound then released: nothing listens there, so connecting is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- URL and construction ---------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "env", "expected"),
    [
        (None, "app", f"https://app.getorchestra.io{STATE_PATH}"),
        (None, "stage", f"https://stage.getorchestra.io{STATE_PATH}"),
        ("", " DEV ", f"https://dev.getorchestra.io{STATE_PATH}"),
        ("https://orchestra.example.com/", "app", f"https://orchestra.example.com{STATE_PATH}"),
        ("http://127.0.0.1:8080/proxy//", "app", f"http://127.0.0.1:8080/proxy{STATE_PATH}"),
        (f"https://x.example.com{STATE_PATH}", "app", f"https://x.example.com{STATE_PATH}"),
    ],
)
def test_state_url(base_url: str | None, env: str, expected: str) -> None:
    assert orchestra_state_url(base_url, env) == expected


@pytest.mark.parametrize(
    "base_url",
    [
        "app.getorchestra.io",
        "ftp://app.getorchestra.io",
        "https://",
        "https:///path",
        "http://host:99999",
        "http://host:port",
        "https://host/?env=app",
        "https://host/#top",
    ],
)
def test_malformed_base_url_is_named(base_url: str) -> None:
    with pytest.raises(ValueError, match="malformed Orchestra base URL") as info:
        orchestra_state_url(base_url)
    assert repr(base_url) in str(info.value)


def test_credentials_in_base_url_are_refused_and_masked() -> None:
    with pytest.raises(ValueError, match="credentials in the URL") as info:
        orchestra_state_url("https://user:s3cret@orchestra.example.com")
    assert "s3cret" not in str(info.value)
    assert "***@orchestra.example.com" in str(info.value)


SYMBOL_SECRETS = ('k3y/with"quote\\back+plus%25pct-1a2b', '/\\+%2F"-tail-3c4d')


@pytest.mark.parametrize("secret", SYMBOL_SECRETS)
@pytest.mark.parametrize("host", ["orchestra.example.com", "orchestra.example.com:99999"])
def test_credentials_with_symbols_in_base_url_are_masked(secret: str, host: str) -> None:
    # Unencoded, a '/' ends the authority early and a bad port makes the URL malformed:
    # either way the password must not appear.
    with pytest.raises(ValueError) as info:
        orchestra_state_url(f"https://user:{secret}@{host}")
    message = str(info.value)
    assert "***@" in message
    for form in secret_forms(secret):
        assert form not in message


def test_unknown_env() -> None:
    with pytest.raises(ValueError, match="unknown Orchestra environment 'prod'"):
        orchestra_state_url(None, "prod")


@pytest.mark.parametrize("api_key", ["", "   ", "\n"])
def test_missing_api_key(server: OrchestraStateServer, api_key: str) -> None:
    with pytest.raises(ValueError) as info:
        _store(server, api_key=api_key)
    assert str(info.value) == f"{LABEL} has no API key (password field)"
    assert server.requests == []


def test_api_key_with_inner_whitespace_is_refused_without_quoting_it(
    server: OrchestraStateServer,
) -> None:
    with pytest.raises(ValueError, match=r"API key .* contains spaces") as info:
        _store(server, api_key="abc\r\nX-Injected: 1")
    assert "abc" not in str(info.value)


def test_surrounding_whitespace_of_the_key_is_ignored(server: OrchestraStateServer) -> None:
    assert _store(server, api_key=f"  {DEFAULT_TOKEN}\n").load() == StateDocument.empty()


def test_is_a_state_store_with_a_safe_description(server: OrchestraStateServer) -> None:
    store = _store(server, key_prefix="acct1")
    assert isinstance(store, StateStore)
    assert store.description == f"Orchestra state API {server.state_url}"
    assert repr(store) == (
        f"OrchestraHttpStateStore({server.state_url!r}, key_prefix='acct1', label={LABEL!r})"
    )


def test_plain_http_to_a_remote_host_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        OrchestraHttpStateStore(orchestra_state_url("http://orchestra.example.com"), "k")
        OrchestraHttpStateStore(orchestra_state_url("http://localhost:8080"), "k")
    (record,) = caplog.records
    assert "http://orchestra.example.com" in record.getMessage()
    assert "unencrypted" in record.getMessage()


# -- the contract -------------------------------------------------------------


def test_round_trip(server: OrchestraStateServer) -> None:
    store = _store(server)
    assert store.load() == StateDocument.empty()

    returned = store.save({"db.s.a": _entry("a"), "db.s.b": _entry("b", sources={"src": T0})})

    assert server.entries == {"db.s.a": _entry("a"), "db.s.b": _entry("b", sources={"src": T0})}
    assert entries_to_json(returned.entries) == server.entries
    assert entries_to_json(_store(server).load().entries) == server.entries
    assert store.probe() == "Orchestra state API reachable: 2 entries"


def test_requests_carry_auth_json_and_user_agent(server: OrchestraStateServer) -> None:
    store = _store(server)
    store.load()
    store.save({"k": _entry("a")})

    get, patch = server.requests
    assert (get.method, get.path, get.status) == ("GET", STATE_PATH, 200)
    assert (patch.method, patch.path, patch.status) == ("PATCH", STATE_PATH, 200)
    for request in (get, patch):
        assert request.headers["Authorization"] == MASKED
        assert request.headers["Accept"] == "application/json"
        assert request.headers["User-Agent"].startswith(
            f"airflow-provider-orchestra-dbt/{__version__} "
        )
    assert patch.headers["Content-Type"] == "application/json"


def test_patch_carries_only_the_changed_entries(server: OrchestraStateServer) -> None:
    server.set_document(
        {"state": {"a": _entry("a"), "b": _entry("b"), "c": _entry("c", sources={"s": T0})}}
    )
    store = _store(server)
    loaded = store.load()
    assert set(loaded.entries) == {"a", "b", "c"}
    server.clear_requests()

    changed = {"b": _entry("b2", T1)}
    returned = store.save(changed)

    (patch,) = server.requests
    assert patch.json() == {"state": changed}
    # The returned document is what was loaded with the update applied.
    assert entries_to_json(returned.entries) == {
        **entries_to_json(loaded.entries),
        "b": _entry("b2", T1),
    }
    assert server.entries == entries_to_json(returned.entries)


def test_save_of_nothing_sends_nothing(server: OrchestraStateServer) -> None:
    server.set_document({"state": {"a": _entry("a")}})
    store = _store(server)
    store.load()
    server.clear_requests()

    assert entries_to_json(store.save({}).entries) == {"a": _entry("a")}
    assert server.requests == []


def test_invalid_update_is_refused_before_sending(server: OrchestraStateServer) -> None:
    store = _store(server)
    with pytest.raises(
        StateFormatError, match=r"state update for Orchestra state API .*'checksum'"
    ):
        store.save({"k": {"last_updated": T0}})
    with pytest.raises(StateFormatError, match="not JSON-serialisable"):
        store.save({"k": _entry("a", run={"rows": float("nan")})})
    assert server.requests == []


def test_older_update_never_replaces_newer_entry(server: OrchestraStateServer) -> None:
    server.set_document({"state": {"k": _entry("new", T2)}})
    store = _store(server)
    store.load()

    returned = store.save({"k": _entry("old", T1)})

    assert server.entries == {"k": _entry("new", T2)}
    assert entries_to_json(returned.entries) == {"k": _entry("new", T2)}


def test_dbt_orchestra_document_loads_and_keeps_its_fields(server: OrchestraStateServer) -> None:
    # Shaped like what the dbt-orchestra CLI writes: UTC with a "Z", sources
    # per entry, and fields (and a top-level key) this package does not use.
    theirs: dict[str, Any] = {
        "state": {
            "analytics.core.orders": {
                "checksum": "9f2c",
                "last_updated": "2025-03-01T10:00:00Z",
                "sources": {"source.shop.raw.orders": "2025-03-01T09:55:00Z"},
                "model_type": "table",
            },
            "analytics.core.customers": {
                "checksum": "71aa",
                "last_updated": "2025-03-01T10:00:00Z",
                "sources": {},
            },
        },
        "version": 2,
    }
    server.set_document(theirs)
    store = _store(server)

    loaded = store.load()
    assert entries_to_json(loaded.entries) == theirs["state"]
    assert loaded.extra == {"version": 2}

    # A run rebuilds orders: the engine carries the entry's other fields over.
    rebuilt = {
        **loaded.entries["analytics.core.orders"].to_json(),
        "checksum": "a0b1",
        "last_updated": "2025-03-02T10:00:00+00:00",
        "status": "success",
    }
    store.save({"analytics.core.orders": rebuilt})

    stored = server.entries
    assert stored["analytics.core.customers"] == theirs["state"]["analytics.core.customers"]
    assert stored["analytics.core.orders"] == {
        "checksum": "a0b1",
        "last_updated": "2025-03-02T10:00:00+00:00",
        "sources": {"source.shop.raw.orders": "2025-03-01T09:55:00Z"},
        "model_type": "table",
        "status": "success",
    }


def test_key_prefix_filters_loads_and_guards_saves(server: OrchestraStateServer) -> None:
    server.set_document(
        {
            "state": {
                "acct1.db.s.a": _entry("a"),
                "acct10.db.s.b": _entry("b"),
                "acct2.db.s.c": _entry("c"),
                "db.s.d": _entry("d"),
                # Another account's broken entry must not break this account's load.
                "acct2.db.s.bad": {"checksum": 7},
            }
        }
    )
    store = _store(server, key_prefix="acct1")

    assert entries_to_json(store.load().entries) == {"acct1.db.s.a": _entry("a")}
    assert store.probe() == "Orchestra state API reachable: 1 entry under prefix 'acct1.'"

    with pytest.raises(StateFormatError, match=r"lack the prefix 'acct1\.'.*'db\.s\.x'"):
        store.save({"db.s.x": _entry("x")})
    assert entries_to_json(store.save({"acct1.db.s.x": _entry("x")}).entries) == {
        "acct1.db.s.a": _entry("a"),
        "acct1.db.s.x": _entry("x"),
    }


def test_probe_formats_large_counts(server: OrchestraStateServer) -> None:
    server.set_document({"state": {f"db.s.m{i}": _entry(str(i)) for i in range(1234)}})
    assert _store(server).probe() == "Orchestra state API reachable: 1,234 entries"


# -- errors that are not retried --------------------------------------------


def test_wrong_key_is_rejected_without_retry(server: OrchestraStateServer) -> None:
    store = _store(server, api_key=WRONG_KEY)

    with pytest.raises(StateError) as info:
        store.load()
    message = str(info.value)
    assert f"{store.description} ({LABEL}) rejected the API key (HTTP 401)" in message
    assert "Invalid API key" in message
    assert len(server.requests) == 1

    with pytest.raises(StateError, match=r"rejected the API key \(HTTP 401\)"):
        store.save({"k": _entry("a")})
    assert len(server.requests) == 2
    assert server.entries == {}


def test_forbidden_is_reported_as_a_rejected_key(server: OrchestraStateServer) -> None:
    server.fail_next(1, 403)
    with pytest.raises(StateError, match=r"rejected the API key \(HTTP 403\)"):
        _store(server).load()
    assert len(server.requests) == 1


def test_wrong_base_path_is_not_found(server: OrchestraStateServer) -> None:
    url = orchestra_state_url(server.base_url + "/not-orchestra")
    store = _store(server, url=url)

    with pytest.raises(StateError) as info:
        store.load()
    assert str(info.value).startswith(f"Orchestra state API {url} ({LABEL}) not found (HTTP 404)")
    assert str(info.value).endswith("check the base URL / Orchestra environment")
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_client_errors_on_patch_are_not_retried(
    server: OrchestraStateServer, status: int
) -> None:
    server.fail_next(1, status, body='{"detail": "entry too large"}')
    with pytest.raises(StateError, match=rf"refused the PATCH \(HTTP {status}.*entry too large"):
        _store(server).save({"k": _entry("a")})
    assert len(server.requests) == 1
    assert server.entries == {}


def test_redirect_is_reported_not_followed(server: OrchestraStateServer) -> None:
    # Following it would turn the PATCH into a GET and report a save that never happened.
    server.fail_next(1, 302, headers={"Location": "https://elsewhere.example.com/state"})
    with pytest.raises(StateError, match=r"redirected .*302.* to https://elsewhere\.example\.com"):
        _store(server).save({"k": _entry("a")})
    assert len(server.requests) == 1


# -- retried errors -----------------------------------------------------------


def test_server_error_is_retried_then_succeeds(server: OrchestraStateServer) -> None:
    server.set_document({"state": {"k": _entry("a")}})
    server.fail_next(2, 500)

    assert entries_to_json(_store(server).load().entries) == {"k": _entry("a")}
    assert [r.status for r in server.requests] == [500, 500, 200]


def test_server_error_on_patch_is_retried_then_saved(server: OrchestraStateServer) -> None:
    server.fail_next(1, 503)
    _store(server).save({"k": _entry("a")})
    assert [(r.method, r.status) for r in server.requests] == [("PATCH", 503), ("PATCH", 200)]
    assert server.entries == {"k": _entry("a")}


def test_persistent_server_error_gives_up_with_the_last_cause(
    server: OrchestraStateServer,
) -> None:
    server.fail_next(3, 502, body="upstream down")
    with pytest.raises(StateError) as info:
        _store(server).load()
    message = str(info.value)
    assert message.startswith(f"Orchestra state API {server.state_url} ({LABEL}): GET failed")
    assert "after 3 attempts" in message
    assert "last error: HTTP 502 Bad Gateway: upstream down" in message
    assert len(server.requests) == 3


def test_rate_limit_honours_retry_after(server: OrchestraStateServer) -> None:
    server.fail_next(1, 429, headers={"Retry-After": "1"})
    started = time.monotonic()

    assert _store(server).load() == StateDocument.empty()

    # The store's own backoff is 10 ms, so only Retry-After explains the wait.
    assert time.monotonic() - started >= 0.95
    assert [r.status for r in server.requests] == [429, 200]


def test_retry_after_is_capped(
    server: OrchestraStateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_module, "_RETRY_AFTER_MAX", 0.05)
    server.fail_next(1, 429, headers={"Retry-After": "3600"})
    started = time.monotonic()

    _store(server).load()

    assert time.monotonic() - started < 1.0
    assert len(server.requests) == 2


def test_retry_after_as_http_date(server: OrchestraStateServer) -> None:
    # A date in the past means "now".
    server.fail_next(1, 503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    _store(server).load()
    assert [r.status for r in server.requests] == [503, 200]


def test_timeouts_are_retried_then_reported_in_bounded_time(
    server: OrchestraStateServer,
) -> None:
    server.delay_next(3, 2.0)
    store = _store(server, timeout=0.2, max_attempts=3)
    started = time.monotonic()

    with pytest.raises(StateError) as info:
        store.load()

    elapsed = time.monotonic() - started
    assert elapsed < 1.5, elapsed
    assert "GET failed after 3 attempts" in str(info.value)
    assert "last error: no response within 0.2s" in str(info.value)
    assert len(server.requests) == 3


def test_one_slow_answer_is_retried(server: OrchestraStateServer) -> None:
    server.set_document({"state": {"k": _entry("a")}})
    server.delay_next(1, 2.0)
    assert entries_to_json(_store(server, timeout=0.2).load().entries) == {"k": _entry("a")}
    assert len(server.requests) == 2


def test_unreachable_endpoint_gives_up_naming_the_url() -> None:
    url = orchestra_state_url(f"http://127.0.0.1:{_closed_port()}")
    store = OrchestraHttpStateStore(url, DEFAULT_TOKEN, label=LABEL, **FAST)
    started = time.monotonic()

    with pytest.raises(StateError) as info:
        store.load()

    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(f"Orchestra state API {url} ({LABEL}): GET failed after 3 attempts")
    assert "Connection refused" in message


def test_a_dripping_answer_is_cut_off_at_the_deadline_and_retried(
    server: OrchestraStateServer,
) -> None:
    # Every byte arrives well within the timeout, so only a deadline for the
    # whole answer stops this one; the retry then gets a normal answer.
    server.set_document({"state": {"k": _entry("a")}})
    server.drip_next(1, 0.1)
    started = time.monotonic()

    assert entries_to_json(_store(server, timeout=0.5).load().entries) == {"k": _entry("a")}

    assert time.monotonic() - started < 1.5
    assert len(server.requests) == 2


def test_an_endlessly_dripping_server_fails_within_a_few_timeouts(
    server: OrchestraStateServer,
) -> None:
    server.set_document({"state": {"k": _entry("a")}})
    server.drip_next(10, 0.1)
    store = _store(server, timeout=0.4, max_attempts=None, retry_budget=60)
    started = time.monotonic()

    with pytest.raises(StateError) as info:
        store.load()

    # Three answers of 0.4 s each plus two short waits, not 60 s of budget.
    assert time.monotonic() - started < 2.5
    message = str(info.value)
    assert "GET failed after 3 attempts" in message
    assert "the endpoint failed to answer 3 times" in message
    assert "last error: no complete response within 0.4s" in message


def test_throttling_is_ridden_out_honouring_retry_after(server: OrchestraStateServer) -> None:
    server.fail_next(3, 429, headers={"Retry-After": "0.3"}, body='{"detail": "slow down"}')
    store = _store(server, max_attempts=None, retry_budget=5)
    started = time.monotonic()

    store.save({"k": _entry("a")})

    assert time.monotonic() - started >= 0.85
    assert [r.status for r in server.requests] == [429, 429, 429, 200]
    assert server.entries == {"k": _entry("a")}


def test_retry_after_beyond_the_budget_gives_up_at_once(server: OrchestraStateServer) -> None:
    server.fail_next(1, 503, headers={"Retry-After": "30"})
    store = _store(server, max_attempts=None, retry_budget=2)
    started = time.monotonic()

    with pytest.raises(StateError) as info:
        store.load()

    assert time.monotonic() - started < 1.0
    assert "GET failed after 1 attempt in " in str(info.value)
    assert "Retry-After 30s exceeds the retry budget left" in str(info.value)


def test_persistent_errors_give_up_when_the_budget_is_spent(
    server: OrchestraStateServer,
) -> None:
    server.flaky(1.0, (Fault(status=502),))
    store = _store(server, max_attempts=None, retry_budget=0.5, backoff_seconds=0.05)
    started = time.monotonic()

    with pytest.raises(StateError) as info:
        store.load()

    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5, elapsed
    assert "(retry budget of 0.5s used up); last error: HTTP 502" in str(info.value)
    assert len(server.requests) > 3


def test_a_fifth_of_calls_failing_loses_nothing(server: OrchestraStateServer) -> None:
    faults = (
        Fault(status=429, headers={"Retry-After": "0"}),
        Fault(status=429),
        Fault(status=500),
        Fault(status=502),
        Fault(status=503),
        Fault(status=504),
    )
    server.flaky(0.2, faults, seed=3)
    store = _store(server, max_attempts=None, retry_budget=30)

    for index in range(40):
        store.save({f"db.main.m{index}": _entry(str(index))})
        assert f"db.main.m{index}" in store.load().entries

    statuses = [r.status for r in server.requests]
    assert statuses.count(200) == 80
    assert len(statuses) > 80, "no fault was injected"
    assert len(server.entries) == 40


# -- bodies that are not state ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (
            "<html>Sign in</html>",
            "text/html",
            r"response \(Content-Type 'text/html'\) is not valid JSON",
        ),
        ("", "application/json", "response is empty"),
        ("{}", "application/json", "top-level 'state' object is missing"),
        ('{"items": []}', "application/json", "top-level 'state' object is missing"),
        ("[1, 2]", "application/json", "must be a JSON object, got array"),
        ('{"state": []}', "application/json", "'state' must be an object, got array"),
        ('{"state": null}', "application/json", "'state' must be an object, got null"),
        ('{"state": {"k": {"checksum": 1}}}', "application/json", "'checksum' must be a string"),
        ('{"state": {"k": {"checksum": NaN}}}', "application/json", "NaN"),
    ],
)
def test_body_that_is_not_state_is_a_format_error(
    server: OrchestraStateServer, body: str, content_type: str, match: str
) -> None:
    server.raw_next(1, body, content_type=content_type)
    store = _store(server)
    with pytest.raises(StateFormatError, match=match) as info:
        store.load()
    assert str(info.value).startswith(f"{store.description} ({LABEL}) response")
    assert len(server.requests) == 1


# -- concurrency ------------------------------------------------------------

PROCESSES = 8
KEYS_PER_PROCESS = 50
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.timeout(60)
def test_concurrent_processes_lose_no_update(server: OrchestraStateServer) -> None:
    run_in_processes(
        save_distinct_keys,
        lambda worker, start: (server.state_url, DEFAULT_TOKEN, worker, KEYS_PER_PROCESS, start),
        processes=PROCESSES,
        timeout=45,
    )

    expected = {
        f"db.w{worker}.k{index}" for worker in range(PROCESSES) for index in range(KEYS_PER_PROCESS)
    }
    assert len(expected) == 400
    assert set(server.entries) == expected
    assert len(server.requests_for("PATCH")) == 400
    assert all(len(r.json()["state"]) == 1 for r in server.requests_for("PATCH"))


def test_interleaved_writes_of_one_key_keep_the_newest(server: OrchestraStateServer) -> None:
    # Threads sharing one store also exercise the store's own thread safety.
    threads, writes = 8, 25
    store = _store(server)
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        order = list(range(writes))
        random.Random(worker).shuffle(order)
        start.wait()
        try:
            for step in order:
                when = BASE_TIME + timedelta(seconds=step * threads + worker)
                store.save({"db.main.shared": _entry(f"{worker}-{step}", format_timestamp(when))})
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=write, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=30)
    assert errors == []

    newest = BASE_TIME + timedelta(seconds=(writes - 1) * threads + threads - 1)
    expected = _entry(f"{threads - 1}-{writes - 1}", format_timestamp(newest))
    assert server.entries == {"db.main.shared": expected}
    assert entries_to_json(store.load().entries) == {"db.main.shared": expected}


# -- secrets ----------------------------------------------------------------


def _exception_texts(exc: BaseException) -> Iterator[str]:
    seen: BaseException | None = exc
    while seen is not None:
        yield str(seen)
        yield repr(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)


def test_api_key_never_leaks(
    server: OrchestraStateServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = (DEFAULT_TOKEN, WRONG_KEY)
    texts: list[str] = []

    def expect_error(call: Any) -> None:
        with pytest.raises(StateError) as info:
            call()
        texts.extend(_exception_texts(info.value))

    good = _store(server, timeout=0.2)
    wrong = _store(server, api_key=WRONG_KEY)
    unreachable = OrchestraHttpStateStore(
        orchestra_state_url(f"http://127.0.0.1:{_closed_port()}"), DEFAULT_TOKEN, **FAST
    )
    texts += [repr(good), repr(wrong), good.description, repr(unreachable)]

    good.save({"k": _entry("a")})
    texts.append(good.probe())
    expect_error(wrong.load)
    expect_error(lambda: wrong.save({"k": _entry("b")}))
    expect_error(unreachable.load)
    server.fail_next(3, 500)
    expect_error(good.load)
    server.delay_next(3, 1.0)
    expect_error(good.load)
    server.raw_next(1, "not json")
    expect_error(good.load)
    # A server that echoes the request, header and all, into its error body.
    server.fail_next(1, 400, body=f"bad request; Authorization: Bearer {DEFAULT_TOKEN}")
    expect_error(lambda: good.save({"k": _entry("c")}))

    for bad in ("", "a b"):
        with pytest.raises(ValueError) as value_error:
            OrchestraHttpStateStore(server.state_url, bad, label=LABEL)
        texts.extend(_exception_texts(value_error.value))

    logged = [caplog.text] + [record.getMessage() for record in caplog.records]
    assert any("urllib3" in record.name for record in caplog.records), "debug logs not captured"
    assert any("retrying in" in record.getMessage() for record in caplog.records)
    for text in texts + logged:
        for secret in secrets:
            assert secret not in text
    assert all(r.headers["Authorization"] == MASKED for r in server.requests)


@pytest.mark.parametrize("api_key", SYMBOL_SECRETS)
def test_api_key_with_symbols_never_leaks_in_any_encoding(
    api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    from urllib.parse import quote, quote_plus

    caplog.set_level(logging.DEBUG)
    # What a server echoing the request back might write: JSON-escaped (with and
    # without '/' escaped), URL-encoded either way, or verbatim.
    echoes = [
        json.dumps({"detail": f"bad key {api_key}"}),
        json.dumps({"detail": f"bad key {api_key}"}).replace("/", "\\/"),
        f"token={quote(api_key, safe='')}&again={quote_plus(api_key)}",
    ]
    texts: list[str] = []
    with OrchestraStateServer(token=api_key) as server:
        store = _store(server, api_key=api_key)
        for echo in echoes:
            server.fail_next(1, 500, body=echo)  # logged in the retry warning
            server.fail_next(1, 400, body=echo)  # quoted in the error
            with pytest.raises(StateError) as info:
                store.save({"k": _entry("a")})
            texts.extend(_exception_texts(info.value))
    logged = [caplog.text] + [record.getMessage() for record in caplog.records]
    assert any("retrying in" in text for text in logged)
    assert any("***" in text for text in texts)
    for text in texts + logged:
        for form in secret_forms(api_key):
            assert form not in text, (form, text)
