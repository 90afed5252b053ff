"""S3StateStore against a real S3 HTTP endpoint (moto's server on 127.0.0.1).

Every request goes over HTTP through boto3 with an explicit endpoint_url, so
signing, conditional-write headers, error parsing and botocore's retries are
exercised for real; nothing contacts AWS.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
from support.concurrency import SPAWN, run_in_processes
from support.s3_server import MotoS3Server, S3Params
from support.state_samples import ORCHESTRA_DOCUMENT

from airflow_provider_orchestra_dbt.state import (
    S3StateStore,
    StateConflictError,
    StateDocument,
    StateError,
    StateFormatError,
    StateStore,
    format_timestamp,
)
from airflow_provider_orchestra_dbt.state.model import entries_to_json

pytestmark = pytest.mark.integration

KEY = "orchestra/state.json"
LABEL = "connection 'my_conn'"
T0 = "2025-01-01T00:00:00+00:00"
T1 = "2025-01-01T01:00:00+00:00"
T2 = "2025-01-01T02:00:00+00:00"


@pytest.fixture
def s3(s3_server: MotoS3Server) -> S3Params:
    return s3_server.create_bucket()


def _entry(checksum: str, last_updated: str = T0, **fields: object) -> dict[str, Any]:
    return {"checksum": checksum, "last_updated": last_updated, **fields}


def _store(params: S3Params, key: str = KEY, **kwargs: Any) -> S3StateStore:
    return S3StateStore(params.bucket, key, **{**params.store_kwargs(), "label": LABEL, **kwargs})


def _put_raw(params: S3Params, body: bytes, key: str = KEY) -> None:
    params.client().put_object(Bucket=params.bucket, Key=key, Body=body)


def _get_raw(params: S3Params, key: str = KEY) -> bytes:
    body: bytes = params.client().get_object(Bucket=params.bucket, Key=key)["Body"].read()
    return body


def _record_puts(client: Any) -> list[dict[str, Any]]:
    """Record the API parameters of every PutObject ``client`` attempts."""
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append({k: v for k, v in params.items() if k != "Body"})

    client.meta.events.register("provide-client-params.s3.PutObject", record)
    return calls


# --- basics and round trips -------------------------------------------------------------------


def test_is_a_state_store_that_describes_itself(s3: S3Params) -> None:
    store = _store(s3)
    assert isinstance(store, StateStore)
    assert store.description == f"S3 object s3://{s3.bucket}/{KEY} at {s3.endpoint_url}"
    assert store.uri == f"s3://{s3.bucket}/{KEY}"
    assert repr(store) == (
        f"S3StateStore('s3://{s3.bucket}/{KEY}', endpoint_url='{s3.endpoint_url}', label={LABEL!r})"
    )
    assert S3StateStore("b", "k").description == "S3 object s3://b/k"


def test_missing_object_is_empty_and_first_save_creates_it(s3: S3Params) -> None:
    client = s3.client()
    puts = _record_puts(client)
    store = _store(s3, client=client)

    assert store.load() == StateDocument.empty()
    assert store.probe() == f"no state object yet at s3://{s3.bucket}/{KEY}; bucket reachable"

    returned = store.save({"db.main.a": _entry("a")})
    assert entries_to_json(returned.entries) == {"db.main.a": _entry("a")}
    assert json.loads(_get_raw(s3)) == {"state": {"db.main.a": _entry("a")}}
    head = client.head_object(Bucket=s3.bucket, Key=KEY)
    assert head["ContentType"] == "application/json"

    store.save({"db.main.b": _entry("b")})
    assert [call.get("IfNoneMatch") for call in puts] == ["*", None]
    assert puts[1]["IfMatch"] == head["ETag"]
    assert store.probe() == f"{store.description} found, 2 entries"


def test_round_trip_preserves_unknown_fields(s3: S3Params) -> None:
    writer = _store(s3)
    writer.save({"db.main.a": _entry("a", future_field={"nested": [1, 2]})})

    reader = _store(s3)  # a separate instance with its own client
    assert entries_to_json(reader.load().entries) == {
        "db.main.a": _entry("a", future_field={"nested": [1, 2]})
    }

    document = json.loads(_get_raw(s3))
    document["format_version"] = 7
    _put_raw(s3, json.dumps(document).encode())
    reader.save({"db.main.b": _entry("b")})

    stored = json.loads(_get_raw(s3))
    assert stored["format_version"] == 7
    assert stored["state"]["db.main.a"]["future_field"] == {"nested": [1, 2]}
    assert writer.load() == reader.load()


def test_dbt_orchestra_document_survives_our_save(s3: S3Params) -> None:
    _put_raw(s3, json.dumps(ORCHESTRA_DOCUMENT).encode())
    store = _store(s3)

    assert entries_to_json(store.load().entries) == ORCHESTRA_DOCUMENT["state"]
    store.save({"db.sch.other": _entry("def")})

    stored = json.loads(_get_raw(s3))
    assert stored["state"]["db.sch.m"] == ORCHESTRA_DOCUMENT["state"]["db.sch.m"]
    assert stored["state"]["db.sch.other"] == _entry("def")


def test_newer_last_updated_wins_and_older_never_replaces_newer(s3: S3Params) -> None:
    store = _store(s3)
    store.save({"k": _entry("middle", T1)})

    returned = store.save({"k": _entry("older", T0)})
    assert returned.entries["k"].checksum == "middle"
    assert json.loads(_get_raw(s3))["state"]["k"]["checksum"] == "middle"

    store.save({"k": _entry("newer", T2)})
    assert _store(s3).load().entries["k"].to_json() == _entry("newer", T2)


# --- conditional writes -----------------------------------------------------------------------


@pytest.mark.parametrize("exists", [True, False], ids=["replace-if-match", "create-if-none"])
def test_conflicting_write_is_merged_and_retried(s3: S3Params, exists: bool) -> None:
    """Another writer saves between A's read and A's write; both writers' entries survive."""
    if exists:
        _store(s3).save({"db.main.old": _entry("old")})
    other = _store(s3)
    client = s3.client()
    puts = _record_puts(client)

    def write_in_between(**_: Any) -> None:
        # Runs just before each PutObject of store A is sent, i.e. after A
        # has read the object; the first time, another writer gets in first.
        if len(puts) == 1:
            other.save({"db.main.b": _entry("from-b")})

    client.meta.events.register("before-call.s3.PutObject", write_in_between)
    store = _store(s3, client=client)

    returned = store.save({"db.main.a": _entry("from-a")})

    expected = {"db.main.a": _entry("from-a"), "db.main.b": _entry("from-b")}
    if exists:
        expected["db.main.old"] = _entry("old")
    assert entries_to_json(returned.entries) == expected
    assert json.loads(_get_raw(s3))["state"] == expected
    assert len(puts) == 2, "A should have retried exactly once"
    if exists:
        assert puts[0]["IfMatch"] != puts[1]["IfMatch"]
    else:
        assert puts[0]["IfNoneMatch"] == "*"
        assert "IfMatch" in puts[1]


@pytest.mark.parametrize(
    ("limit", "attempts"),
    # A budget of several seconds: under load one attempt (the interfering writer's save
    # included) can take a second or two, and the test needs a second attempt in it.
    [({"max_attempts": 3}, "3 attempts"), ({"retry_budget": 4.0}, "")],
    ids=["max-attempts", "retry-budget"],
)
def test_gives_up_when_other_writers_always_win(
    s3: S3Params, limit: dict[str, Any], attempts: str
) -> None:
    other = _store(s3)
    client = s3.client()
    puts = _record_puts(client)
    counter = iter(range(1000))

    def always_interfere(**_: Any) -> None:
        other.save({f"db.main.b{next(counter)}": _entry("b")})

    client.meta.events.register("before-call.s3.PutObject", always_interfere)
    store = _store(s3, client=client, **limit)
    started = time.monotonic()

    with pytest.raises(StateConflictError) as caught:
        store.save({"db.main.a": _entry("a")})

    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"{store.description} ({LABEL}): gave up saving state after ")
    assert message.endswith("s: other writers changed the object every time")
    assert f"after {len(puts)} attempts in " in message
    if attempts:
        assert f"after {attempts} in " in message
    else:
        # The budget, not a count, ended it: no wait runs past the deadline.
        assert len(puts) >= 2
        assert 2.0 <= elapsed < 12.0, elapsed
    assert "db.main.a" not in json.loads(_get_raw(s3))["state"]


# --- invalid stored documents and updates -----------------------------------------------------


def test_invalid_json_is_reported_and_never_overwritten(s3: S3Params) -> None:
    garbage = b'{"state": {"k": '
    _put_raw(s3, garbage)
    store = _store(s3)

    for action in (store.load, store.probe, lambda: store.save({"k": _entry("a")})):
        with pytest.raises(StateFormatError) as caught:
            action()
        assert str(caught.value).startswith(f"{store.description} is not valid JSON (line 1")

    assert _get_raw(s3) == garbage


def test_wrong_shape_is_reported_and_never_overwritten(s3: S3Params) -> None:
    body = b'{"state": {"k": {"checksum": 1}}}'
    _put_raw(s3, body)
    store = _store(s3)

    with pytest.raises(StateFormatError) as caught:
        store.save({"other": _entry("a")})

    assert str(caught.value) == (
        f"{store.description}: entry 'k': 'checksum' must be a string, got number"
    )
    assert _get_raw(s3) == body


def test_invalid_update_is_rejected_before_any_request(s3: S3Params) -> None:
    client = s3.client()
    requests: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: requests.append(model.name))
    store = _store(s3, client=client)

    with pytest.raises(StateFormatError, match=r"entry 'k': 'checksum' is missing"):
        store.save({"k": {"last_updated": T0}})
    with pytest.raises(StateFormatError, match=r"is not JSON-serialisable"):
        store.save({"k": _entry("a", execution_time=float("nan"))})
    assert requests == []


# --- bad configuration and unreachable stores -------------------------------------------------


def test_missing_bucket(s3: S3Params) -> None:
    store = _store(S3Params(endpoint_url=s3.endpoint_url, bucket="no-such-bucket-here"))
    where = f"{store.description} ({LABEL}): cannot read state"
    assert store.description == f"S3 object s3://no-such-bucket-here/{KEY} at {s3.endpoint_url}"
    for action in (store.load, store.probe, lambda: store.save({"k": _entry("a")})):
        with pytest.raises(StateError) as caught:
            action()
        assert str(caught.value) == f"{where}: bucket 'no-such-bucket-here' does not exist"


def test_probe_reports_missing_bucket_when_there_is_no_object(s3: S3Params) -> None:
    # GetObject on a missing bucket already says so; this pins HEAD's bare 404 too.
    store = _store(s3)
    s3.client().delete_bucket(Bucket=s3.bucket)
    with pytest.raises(StateError, match=r"bucket '.*' does not exist"):
        store.probe()


def test_access_denied(s3_server: MotoS3Server, s3: S3Params) -> None:
    _store(s3).save({"k": _entry("a")})
    suffix = uuid.uuid4().hex[:8]
    no_access = s3_server.create_user(f"no-access-{suffix}")
    read_only = s3_server.create_user(
        f"read-only-{suffix}",
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{s3.bucket}", f"arn:aws:s3:::{s3.bucket}/*"],
                }
            ],
        },
    )
    denied = (
        f"access denied to s3://{s3.bucket}/{KEY}: the credentials need s3:GetObject and"
        " s3:PutObject on the key (and s3:ListBucket on the bucket)"
    )

    with s3_server.iam_auth():
        store = _store(s3, aws_access_key_id=no_access[0], aws_secret_access_key=no_access[1])
        for action in (store.load, store.probe, lambda: store.save({"k": _entry("b", T1)})):
            with pytest.raises(StateError) as caught:
                action()
            assert (
                str(caught.value) == f"{store.description} ({LABEL}): cannot read state: {denied}"
            )
            assert no_access[1] not in str(caught.value)

        reader = _store(s3, aws_access_key_id=read_only[0], aws_secret_access_key=read_only[1])
        assert entries_to_json(reader.load().entries) == {"k": _entry("a")}
        with pytest.raises(StateError) as caught:
            reader.save({"k": _entry("b", T1)})
        assert str(caught.value) == f"{reader.description} ({LABEL}): cannot write state: {denied}"

    assert entries_to_json(_store(s3).load().entries) == {"k": _entry("a")}


def test_unreachable_endpoint_fails_fast_with_a_clear_error() -> None:
    # A bound but never listening socket: connections are refused, and no other
    # process can start listening on the port while the test runs.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{reserved.getsockname()[1]}"
        store = S3StateStore(
            "bucket",
            KEY,
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            label=LABEL,
        )
        for action in (store.load, store.probe, lambda: store.save({"k": _entry("a")})):
            started = time.monotonic()
            with pytest.raises(StateError) as caught:
                action()
            assert time.monotonic() - started < 15
            assert str(caught.value).startswith(
                f"S3 object s3://bucket/{KEY} at {endpoint} ({LABEL}): cannot read state:"
                f" cannot reach endpoint {endpoint}: "
            )


class _FailingClient:
    """Stands in for a boto3 client whose every call raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def fail(**_: Any) -> None:
            raise self.error

        return fail


def test_timeouts_and_unsupported_conditional_writes_are_explained() -> None:
    from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

    endpoint = "http://10.255.255.1:9000"
    cases: list[tuple[Exception, str]] = [
        (ConnectTimeoutError(endpoint_url=endpoint), f"cannot reach endpoint {endpoint}: "),
        (ReadTimeoutError(endpoint_url=endpoint), f"cannot reach endpoint {endpoint}: "),
        (
            ClientError({"Error": {"Code": "NotImplemented", "Message": "If-Match"}}, "PutObject"),
            "the endpoint does not support a feature this store needs (conditional writes",
        ),
    ]
    for error, expected in cases:
        store = S3StateStore("b", "k", endpoint_url=endpoint, client=_FailingClient(error))
        with pytest.raises(StateError) as caught:
            store.load()
        assert str(caught.value).startswith(
            f"S3 object s3://b/k at {endpoint}: cannot read state: {expected}"
        )


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("s3://bucket", "does not name an object key"),
        ("s3://bucket/", "does not name an object key"),
        ("s3://bucket/prefix/", "does not name an object key"),
        ("s3:///state.json", "does not name a bucket"),
        ("https://bucket/state.json", "is not an s3://bucket/key URI"),
        ("bucket/state.json", "is not an s3://bucket/key URI"),
    ],
)
def test_bad_uri_is_rejected(uri: str, problem: str) -> None:
    with pytest.raises(StateError) as caught:
        S3StateStore.from_uri(uri, label=LABEL)
    assert str(caught.value).startswith(f"{LABEL}: state URI {uri!r} {problem}")


def test_uri_is_parsed(s3: S3Params) -> None:
    store = S3StateStore.from_uri(f"s3://{s3.bucket}/a/b?c#d.json", **s3.store_kwargs())
    assert (store.bucket, store.key) == (s3.bucket, "a/b?c#d.json")
    store.save({"k": _entry("a")})
    assert json.loads(_get_raw(s3, "a/b?c#d.json"))["state"] == {"k": _entry("a")}


def test_bad_constructor_arguments() -> None:
    with pytest.raises(StateError, match=r"S3 object s3:///k \(x\): the S3 bucket name is empty"):
        S3StateStore("", "k", label="x")
    with pytest.raises(StateError, match="must be given together"):
        S3StateStore("b", "k", aws_access_key_id="id")
    with pytest.raises(StateError, match="session token was given without"):
        S3StateStore("b", "k", aws_session_token="token")
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        S3StateStore("b", "k", max_attempts=0)


def test_secret_never_appears_in_messages_or_repr(s3_server: MotoS3Server, s3: S3Params) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    token = f"TOKEN-{uuid.uuid4().hex}"
    key_id, _ = s3_server.create_user(f"secret-test-{uuid.uuid4().hex[:8]}")
    messages = []

    def collect(store: S3StateStore) -> None:
        messages.extend([repr(store), store.description])
        for action in (store.load, store.probe, lambda: store.save({"k": _entry("a")})):
            with pytest.raises(StateError) as caught:
                action()
            messages.append(str(caught.value))

    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{reserved.getsockname()[1]}"
        missing = S3Params(endpoint_url=s3.endpoint_url, bucket="missing-bucket")
        collect(_store(missing, aws_secret_access_key=secret, aws_session_token=token))
        collect(_store(s3, aws_secret_access_key=secret, endpoint_url=closed))
    with s3_server.iam_auth():
        # A known key id signed with the wrong secret: the server answers
        # SignatureDoesNotMatch, the error most likely to echo signing details.
        wrong_secret = _store(s3, aws_access_key_id=key_id, aws_secret_access_key=secret)
        collect(wrong_secret)
    assert "check the secret access key" in messages[-1]
    assert len(messages) == 3 * 5
    for message in messages:
        assert secret not in message and token not in message


# --- many writers at once ---------------------------------------------------------------------
#
# One set of spawned processes runs both scenarios, one after the other on two
# objects: starting a process (Python, pytest and boto3 imports, the S3 client)
# costs far more than its saves, so sharing the processes halves the runtime.

PROCESSES = 8
KEYS_PER_PROCESS = 50
SHARED_WRITES_PER_PROCESS = 25
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
SHARED_KEY = "db.main.shared"


@dataclass(frozen=True)
class _Crowd:
    distinct: S3Params  # every worker saves its own keys, one save per key
    shared: S3Params  # every worker saves the same key with shuffled timestamps
    lost_races: int  # conditional writes that failed with 412/409, over all workers


def _shared_key_time(worker: int, write: int) -> datetime:
    # A distinct instant per (worker, write); the newest is the last worker's last write.
    return BASE_TIME + timedelta(seconds=write * PROCESSES + worker)


def _crowd_worker(
    distinct: S3Params,
    shared: S3Params,
    worker: int,
    start: Barrier,
    lost: SynchronizedArray[int],
) -> None:
    lost_here = 0

    def count(http_response: Any, **_: Any) -> None:
        nonlocal lost_here
        if http_response.status_code in (409, 412):
            lost_here += 1

    # Generous attempts: the crowd hammers one object far harder than real
    # tasks do; the tests check that nothing is lost, not when writers give up.
    stores = []
    for params in (distinct, shared):
        client = params.client()
        client.meta.events.register("after-call.s3.PutObject", count)
        stores.append(_store(params, client=client, max_attempts=100))
    distinct_store, shared_store = stores

    start.wait()
    for index in range(KEYS_PER_PROCESS):
        stamp = format_timestamp(BASE_TIME)
        distinct_store.save({f"db.w{worker}.k{index}": _entry(f"{worker}-{index}", stamp)})

    # Shuffled so each worker mixes newer and older writes and the newest is
    # likely to be followed by stale writes from other workers.
    order = list(range(SHARED_WRITES_PER_PROCESS))
    random.Random(worker).shuffle(order)
    start.wait()
    for write in order:
        stamp = format_timestamp(_shared_key_time(worker, write))
        shared_store.save({SHARED_KEY: _entry(f"{worker}-{write}", stamp)})
    lost[worker] = lost_here


@pytest.fixture(scope="module")
def crowd(s3_server: MotoS3Server) -> _Crowd:
    distinct, shared = s3_server.create_bucket(), s3_server.create_bucket()
    lost = SPAWN.Array("i", PROCESSES)
    run_in_processes(
        _crowd_worker,
        lambda worker, start: (distinct, shared, worker, start, lost),
        processes=PROCESSES,
        timeout=100,
    )
    return _Crowd(distinct, shared, sum(lost[:]))


@pytest.mark.timeout(120)
def test_concurrent_saves_of_distinct_keys_lose_nothing(crowd: _Crowd) -> None:
    expected = {
        f"db.w{worker}.k{index}" for worker in range(PROCESSES) for index in range(KEYS_PER_PROCESS)
    }
    entries = _store(crowd.distinct).load().entries
    assert set(entries) == expected
    assert len(entries) == PROCESSES * KEYS_PER_PROCESS
    # Proof that the writers really collided and the retry path did the work.
    assert crowd.lost_races > 0


@pytest.mark.timeout(120)
def test_concurrent_saves_of_one_key_keep_the_newest(crowd: _Crowd) -> None:
    entry = _store(crowd.shared).load().entries[SHARED_KEY]
    newest_worker, newest_write = PROCESSES - 1, SHARED_WRITES_PER_PROCESS - 1
    assert entry.to_json() == _entry(
        f"{newest_worker}-{newest_write}",
        format_timestamp(_shared_key_time(newest_worker, newest_write)),
    )


# --- a crowd on a large document ---------------------------------------------------------------
#
# 32 writers save into a 2,000-entry document at the same moment: every round only one
# conditional write can win, so most writers lose many rounds in a row. With a fixed
# count of attempts some gave up; on a time budget with full jitter all must get through.

CROWD = 32
LARGE = 2_000


@pytest.mark.timeout(90)
def test_thirty_two_writers_on_a_large_document_all_succeed(s3: S3Params) -> None:
    base = {f"db.base.m{index}": _entry(f"base-{index}", sources={}) for index in range(LARGE)}
    _put_raw(s3, json.dumps({"state": base}).encode())
    stores = [_store(s3) for _ in range(CROWD)]
    for store in stores:
        store.probe()  # the client is built and connected before the race starts
    start = threading.Barrier(CROWD)
    errors: list[BaseException] = []
    timings: list[float] = []

    def write(worker: int) -> None:
        start.wait()
        began = time.monotonic()
        try:
            stores[worker].save({f"db.crowd.w{worker}": _entry(f"w{worker}", T1)})
        except BaseException as exc:
            errors.append(exc)
        timings.append(time.monotonic() - began)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(CROWD)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=80)
    elapsed = time.monotonic() - started

    assert errors == []
    entries = _store(s3).load().entries
    assert {key for key in entries if key.startswith("db.crowd.")} == {
        f"db.crowd.w{worker}" for worker in range(CROWD)
    }
    assert len(entries) == LARGE + CROWD
    assert all(entries[key].to_json() == base[key] for key in base)
    print(f"\n{CROWD} writers: {elapsed:.1f}s in all, slowest save {max(timings):.1f}s")


# --- throttling, silent endpoints and deadlines ------------------------------------------------


def test_saves_ride_out_a_fifth_of_requests_failing(s3_server: MotoS3Server, s3: S3Params) -> None:
    # SlowDown and InternalError are retried by botocore's standard mode within each call.
    store = _store(s3)
    with s3_server.flaky(0.2, seed=7) as faults:
        for index in range(30):
            store.save({f"db.main.m{index}": _entry(str(index))})
        assert faults.injected > 0
    assert len(_store(s3).load().entries) == 30


def test_throttling_past_the_retry_budget_gives_up_in_bounded_time(
    s3_server: MotoS3Server, s3: S3Params
) -> None:
    store = _store(s3, retry_budget=1.0)
    with s3_server.flaky(1.0):
        started = time.monotonic()
        with pytest.raises(StateError) as caught:
            store.load()
        elapsed = time.monotonic() - started
    # No retry is made whose wait (botocore's, up to 1 s after the first attempt) could
    # end past the deadline, so the budget bounds it; the slack is for a loaded CI machine.
    assert elapsed < 6, elapsed
    assert str(caught.value).startswith(f"{store.description} ({LABEL}): cannot read state: ")
    assert "SlowDown" in str(caught.value) or "InternalError" in str(caught.value)


def _silent_listener() -> socket.socket:
    # Listening but never accepting: the kernel completes the handshake, the
    # request is sent, and no answer ever comes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def test_endpoint_that_never_answers_fails_within_a_few_timeouts() -> None:
    with _silent_listener() as listener:
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        store = S3StateStore(
            "bucket",
            KEY,
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            label=LABEL,
            timeout=0.5,
        )
        for action in (store.load, lambda: store.save({"k": _entry("a")})):
            started = time.monotonic()
            with pytest.raises(StateError) as caught:
                action()
            elapsed = time.monotonic() - started
            # Three attempts of 0.5 s, plus botocore's waits (< 1 s, then < 2 s).
            assert elapsed < 5.0, elapsed
            assert "cannot read state: cannot reach endpoint" in str(caught.value)
            assert "Read timeout" in str(caught.value)


def test_bad_timeout_and_budget_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        S3StateStore("b", "k", timeout=0)
    with pytest.raises(ValueError, match="retry_budget must be a finite number >= 0"):
        S3StateStore("b", "k", retry_budget=float("nan"))


SECRETS_WITH_SYMBOLS = ('pa/ss"w\\rd+%41-9f8e', 'tok/en+%2F"\\-5d4c')


@pytest.mark.parametrize("secret", SECRETS_WITH_SYMBOLS)
def test_credentials_in_the_endpoint_url_never_show(secret: str) -> None:
    from airflow_provider_orchestra_dbt.state.secrets import secret_forms

    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{reserved.getsockname()[1]}"
        store = S3StateStore(
            "bucket",
            KEY,
            endpoint_url=f"http://user:{secret}@{host}",
            aws_access_key_id="testing",
            aws_secret_access_key=secret,
            aws_session_token=secret[::-1],
            label=LABEL,
            timeout=0.5,
        )
        texts = [repr(store), store.description]
        with pytest.raises(StateError) as caught:
            store.load()
        texts.append(str(caught.value))
    assert store.description == f"S3 object s3://bucket/{KEY} at http://***@{host}"
    for text in texts:
        for form in secret_forms(secret) | secret_forms(secret[::-1]):
            assert form not in text
