"""Runs on different machines take turns on a lease in the S3 state store (moto over HTTP).

First the lease itself against S3's conditional writes (on a fake clock, so a ttl of a minute
passes in no time), then two real CLI runs of the tutorial project that share only the S3
state (``--state-uri s3://...``, the endpoint in boto3's ``AWS_ENDPOINT_URL_S3``): each has
its own cache dir, so their machine-local run locks are different files, as on two workers.
The lease alone keeps them apart: the second waits, names the first as the holder, and its
dbt work starts only after the first one's has ended.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid

import pytest
from support.cli_runs import GATE, in_turn, race_after_gate, started
from support.s3_server import MotoS3Server, S3Params
from support.tutorial import Workspace, built, decisions, short

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import lease_name
from airflow_provider_orchestra_dbt.state import S3StateStore
from airflow_provider_orchestra_dbt.state.lease import (
    LEASE_DIR,
    Lease,
    LeaseLost,
    LeaseRecord,
    LeaseUnavailable,
)
from airflow_provider_orchestra_dbt.state.store import LeaseStore

pytestmark = pytest.mark.integration

KEY = "dbt/state.json"
NAME = "shop--shop--prod.json"
TTL = 60.0
LOG = logging.getLogger("test")


class FakeClock:
    """Time that moves only when someone waits: S3 does not care what time we think it is."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.now += max(seconds, 0.0)
        return event.is_set()


@pytest.fixture
def s3(s3_server: MotoS3Server) -> S3Params:
    return s3_server.create_bucket()


def store(params: S3Params) -> S3StateStore:
    return S3StateStore(params.bucket, KEY, **params.store_kwargs())


def lease(params: S3Params, clock: FakeClock | None, label: str) -> Lease:
    holder = {"pid": os.getpid(), "host": "worker", "since": "2026-12-01T06:00:00Z", "label": label}
    return Lease(store(params), NAME, holder=holder, ttl=TTL, clock=clock)


def stored(params: S3Params, name: str = NAME) -> LeaseRecord:
    body = params.client().get_object(Bucket=params.bucket, Key=f"dbt/{LEASE_DIR}/{name}")["Body"]
    record = LeaseRecord.from_bytes(body.read())
    assert record is not None
    return record


# -- the lease on S3 -------------------------------------------------------------------------------


def test_s3_leases_exclude_each_other_and_live_next_to_the_state(s3: S3Params) -> None:
    clock = FakeClock()
    a, b = lease(s3, clock, "run a"), lease(s3, clock, "run b")
    assert isinstance(a.store, LeaseStore)
    assert a.location == f"s3://{s3.bucket}/dbt/{LEASE_DIR}/{NAME}"
    assert a.try_acquire()
    assert not b.try_acquire()
    assert b.blocking is not None and b.blocking.holder["label"] == "run a"
    assert "(run a); lease expires" in b.blocking.describe()
    assert stored(s3).holder["label"] == "run a"
    assert store(s3).load().entries == {}, "the state object is not touched"


def test_s3_lease_renewed_is_kept_unrenewed_is_taken_over_and_released_only_if_ours(
    s3: S3Params,
) -> None:
    clock = FakeClock()
    a, b = lease(s3, clock, "run a"), lease(s3, clock, "run b")
    a.try_acquire()
    for _ in range(6):  # two ttls, renewed every third of one
        clock.now += TTL / 3
        a.renew()
        assert not b.try_acquire()
    assert stored(s3).revision == 6
    # a stops renewing (crashed, or paused): b takes over one ttl after it last saw a change
    waited = b.acquire(timeout=10 * TTL)
    assert TTL <= waited <= TTL + 1.5
    assert b.taken_over is not None and b.taken_over.holder["label"] == "run a"
    assert stored(s3).holder["label"] == "run b"
    with pytest.raises(LeaseLost):
        a.renew()
    assert a.release() is False and stored(s3).holder["label"] == "run b", "not a's to release"
    assert b.release() is True and stored(s3).released
    c = lease(s3, clock, "run c")
    assert c.try_acquire() and c.taken_over is None, "a released lease is free at once"


def test_s3_leases_taken_by_many_at_once_go_to_exactly_one(s3: S3Params) -> None:
    leases = [lease(s3, None, f"run {i}") for i in range(8)]
    barrier = threading.Barrier(len(leases))

    def take(one: Lease) -> None:
        barrier.wait()
        one.try_acquire()

    threads = [threading.Thread(target=take, args=(one,)) for one in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    [winner] = [one for one in leases if one.held]
    assert stored(s3).token == winner.token
    winner.release()


def test_credentials_scoped_to_the_state_key_make_the_lease_unavailable_not_an_error(
    s3_server: MotoS3Server, s3: S3Params
) -> None:
    # A policy written before leases existed: read and write the state object, nothing else.
    key_id, secret = s3_server.create_user(
        f"state-only-{uuid.uuid4().hex[:8]}",
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject"],
                    "Resource": [f"arn:aws:s3:::{s3.bucket}/{KEY}"],
                },
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": f"arn:aws:s3:::{s3.bucket}",
                },
            ],
        },
    )
    scoped = S3StateStore(
        s3.bucket,
        KEY,
        **{**s3.store_kwargs(), "aws_access_key_id": key_id, "aws_secret_access_key": secret},
    )
    with s3_server.iam_auth():
        assert scoped.load().entries == {}
        with pytest.raises(LeaseUnavailable, match="access denied"):
            scoped.read_lease(NAME)
        with pytest.raises(LeaseUnavailable, match="access denied"):
            scoped.write_lease(NAME, b"{}", None)


# -- two CLI runs on "two machines" ----------------------------------------------------------------


def test_two_runs_on_two_machines_take_turns_on_the_s3_lease(ws: Workspace, s3: S3Params) -> None:
    state = store(s3)
    s3.client().put_object(Bucket=s3.bucket, Key=KEY, Body=ws.state_file.read_bytes())
    ws.state_file.unlink()  # the state lives in S3 only
    ws.append("orders")  # news for the first run to build; the second should reuse it
    config = DbtRunConfig.create(project_dir=ws.project, profiles_dir=ws.project)
    name = lease_name(config)
    assert name == "orchestra_tutorial--orchestra_tutorial--default.json"
    holder = {"pid": os.getpid(), "host": "gate-host", "since": "", "label": GATE}
    # The test holds the lease while both runs start, so both are known to wait for it.
    gate = Lease(state, name, holder=holder)
    assert gate.try_acquire()
    # The moto server exported fake AWS keys and region; boto3 reads the endpoint from here.
    endpoint = {"AWS_ENDPOINT_URL_S3": s3.endpoint_url}
    try:
        with started(ws, ["--state-uri", state.uri], env=endpoint, own_cache_dirs=True) as runs:
            waiting = "on another machine, or from another checkout): it holds"
            race_after_gate(runs, waiting, gate.release)
            assert all("pid" in run.log and "on gate-host" in run.log for run in runs)
    finally:
        gate.release()
    first, second = in_turn(runs, "held by pid ")
    assert "Got the lease of" in second.log
    # No machine-local lock was waited for: each run had its own.
    assert "holds the run lock" not in first.log + second.log

    # The second planned on what the first built: it read the state under the lease.
    first_built = built(first.report())
    assert {"stg_orders", "int_orders_enriched", "fct_daily_revenue"} <= first_built
    assert built(second.report()) == {"fct_daily_revenue"}
    assert set(decisions(second.report(), "reuse")) >= first_built - {"fct_daily_revenue"}
    entries = {short(e.unique_id or "") for e in state.load().entries.values()}
    assert "fct_daily_revenue" in entries
    assert stored(s3, name).released, "given back at the end"
