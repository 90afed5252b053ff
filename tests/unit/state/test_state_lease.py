"""Leases in the state store (state/lease.py): exclusion, renewal, expiry, takeover, release.

The logic runs against an in-memory store on a fake clock (a ``ttl`` of a minute passes in
no time); the local file store's lease methods against real files; the heartbeat on the real
clock with a ``ttl`` of a fraction of a second. S3 leases are tested against moto in
tests/integration/test_run_lease.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.log_lines import Lines

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import lease_name
from airflow_provider_orchestra_dbt.execution.run_lock import RunLock, RunLockError, RunLockStopped
from airflow_provider_orchestra_dbt.execution.session import DbtSession
from airflow_provider_orchestra_dbt.state import LocalFileStateStore, StateDocument, StateError
from airflow_provider_orchestra_dbt.state.lease import (
    LEASE_DIR,
    Lease,
    LeaseInterrupted,
    LeaseLost,
    LeaseRecord,
    LeaseTimeout,
    LeaseUnavailable,
    lease_file_name,
)
from airflow_provider_orchestra_dbt.state.store import LeaseStore

TTL = 60.0
NAME = "shop--shop--prod.json"
WHAT = "dbt project /p (target 'prod')"
BOUND = 10.0


class FakeClock:
    """Wall and monotonic time that move only when someone waits."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.start = 1_000.0

    def monotonic(self) -> float:
        return self.start + (self.now - 1_700_000_000.0)

    def time(self) -> float:
        return self.now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.now += max(seconds, 0.0)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryStore:
    """A lease store in a dict, compare-and-swap on a digest; ``broken`` fails every call."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.broken = False
        self.refused = False
        self.hang: threading.Event | None = None  # writes wait for it
        self.writes = 0

    def lease_location(self, name: str) -> str:
        return f"memory:{name}"

    def read_lease(self, name: str) -> tuple[bytes | None, str | None]:
        if self.broken:
            raise StateError("memory store is down")
        data = self.records.get(name)
        return (data, hashlib.sha256(data).hexdigest()) if data is not None else (None, None)

    def write_lease(self, name: str, data: bytes, version: str | None) -> str | None:
        if self.broken:
            raise StateError("memory store is down")
        if self.refused:
            raise LeaseUnavailable("memory store: access denied")
        if self.hang is not None:
            self.hang.wait(BOUND)
        if self.read_lease(name)[1] != version:
            return None
        self.records[name] = data
        self.writes += 1
        return hashlib.sha256(data).hexdigest()

    def record(self, name: str = NAME) -> LeaseRecord:
        record = LeaseRecord.from_bytes(self.records[name])
        assert record is not None
        return record


def holder(label: str, host: str = "worker-a") -> dict[str, object]:
    return {"pid": 4242, "host": host, "since": "2026-12-01T06:00:00Z", "label": label}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def lease(store: LeaseStore, clock: FakeClock | None, label: str, **kwargs: object) -> Lease:
    options: dict = {"holder": holder(label), "ttl": TTL, "clock": clock, **kwargs}
    return Lease(store, NAME, **options)


# -- the logic, on a fake clock --------------------------------------------------------------------


def test_two_holders_exclude_each_other_and_the_waiter_learns_whom_it_waits_for(
    store: MemoryStore, clock: FakeClock
) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    assert a.try_acquire() and a.held
    assert not b.try_acquire() and not b.held
    blocking = b.blocking
    assert blocking is not None
    assert blocking.holder["label"] == "run a"
    assert blocking.describe().startswith(
        "pid 4242 on worker-a since 2026-12-01T06:00:00Z (run a); lease expires "
    )
    assert blocking.describe().endswith(" unless renewed")


def test_a_renewed_lease_is_kept_however_long_the_run(store: MemoryStore, clock: FakeClock) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    a.try_acquire()
    for _ in range(10):  # ten ttls in all, renewed every ttl / 3
        for _ in range(3):
            clock.advance(TTL / 3)
            a.renew()
            assert not b.try_acquire(), "a renewed lease is never stale"
    assert store.record().revision == 30


def test_an_unrenewed_lease_is_taken_over_after_one_ttl_and_its_holder_lost_it(
    store: MemoryStore, clock: FakeClock
) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    a.try_acquire()  # and then a crashes (or is paused): no more renewals
    clock.advance(TTL / 2)
    seen: list[tuple[float, str]] = []
    waited = b.acquire(
        timeout=10 * TTL, on_wait=lambda w, h: seen.append((w, h.holder["label"] if h else ""))
    )
    assert TTL <= waited <= TTL + 1.5, "one ttl from when b first saw it, plus one poll"
    assert {label for _, label in seen} == {"run a"}
    assert b.held and b.taken_over is not None and b.taken_over.holder["label"] == "run a"
    assert store.record().holder["label"] == "run b"
    with pytest.raises(LeaseLost, match="another run took the lease over"):
        a.renew()
    assert not a.held
    assert a.release() is False, "not ours any more: released nothing"
    assert store.record().holder["label"] == "run b" and not store.record().released


def test_only_the_waiters_own_clock_counts_not_the_expiry_written_by_another_machine(
    store: MemoryStore, clock: FakeClock
) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    a.try_acquire()
    clock.now += 10 * TTL  # b's wall clock runs ten minutes ahead of a's...
    clock.start -= 10 * TTL  # ...but no time passed
    assert not b.try_acquire(), "a live lease is never taken because clocks disagree"
    clock.advance(TTL / 2)
    assert not b.try_acquire()
    clock.advance(TTL / 2)  # one ttl since b first saw this version: a crashed
    assert b.try_acquire() and b.taken_over is not None


def test_release_gives_the_lease_back_and_the_next_run_takes_it_at_once(
    store: MemoryStore, clock: FakeClock
) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    a.try_acquire()
    assert not b.try_acquire()
    assert a.release() is True and store.record().released
    assert a.release() is False, "idempotent"
    assert b.try_acquire() and b.taken_over is None, "a released lease is free"


def test_a_write_that_went_through_unheard_is_recognised_as_ours(
    store: MemoryStore, clock: FakeClock
) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    real_write = store.write_lease
    lose = [0]

    def lost_answer(name: str, data: bytes, version: str | None) -> str | None:
        if not lose[0]:
            return real_write(name, data, version)
        lose[0] -= 1
        real_write(name, data, version)  # stored, but the answer never arrives...
        return real_write(name, data, version)  # ...and the retry conflicts with it

    store.write_lease = lost_answer  # type: ignore[method-assign]
    lose[0] = 1
    assert not a.try_acquire() and not a.held
    assert a.try_acquire() and a.held, "the record carries our token: ours"
    lose[0] = 1
    a.renew()  # the renewal's answer is lost too: still ours
    a.renew()
    assert store.record().token == a.token and store.record().revision == 3
    assert not b.try_acquire()
    assert a.release()


def test_a_waiter_times_out_naming_the_holder(store: MemoryStore, clock: FakeClock) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    a.try_acquire()
    with pytest.raises(LeaseTimeout) as caught:
        b.acquire(timeout=TTL / 2)
    assert caught.value.holder is not None and caught.value.holder.holder["label"] == "run a"
    assert TTL / 2 <= caught.value.waited < TTL / 2 + 1.5
    with pytest.raises(LeaseTimeout):
        b.acquire(timeout=0)  # 0: a single attempt


def test_stop_interrupts_a_waiter(store: MemoryStore, clock: FakeClock) -> None:
    a, b = lease(store, clock, "run a"), lease(store, clock, "run b")
    a.try_acquire()
    stop = threading.Event()
    with pytest.raises(LeaseInterrupted):
        b.acquire(timeout=10 * TTL, stop=stop, on_wait=lambda w, h: w > 5 and stop.set())


def test_an_unreadable_lease_record_blocks_for_one_ttl_only(
    store: MemoryStore, clock: FakeClock
) -> None:
    store.records[NAME] = b'{"written by": "a newer version"}'
    b = lease(store, clock, "run b")
    seen: list[LeaseRecord | None] = []
    waited = b.acquire(timeout=10 * TTL, on_wait=lambda w, h: seen.append(h))
    assert TTL <= waited <= TTL + 1.5 and set(seen) == {None}, "holder unknown"
    assert store.record().holder["label"] == "run b"
    assert b.taken_over is not None and "(unreadable record)" in b.taken_over.describe()


def test_lease_file_names_are_safe_and_readable() -> None:
    assert lease_file_name("jaffle_shop", "jaffle", "prod") == "jaffle_shop--jaffle--prod.json"
    assert lease_file_name("acct 1", "../x", None, "a/b") == "acct_1--x--a_b.json"


# -- the heartbeat, on the real clock --------------------------------------------------------------


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_heartbeat_keeps_the_lease_and_reports_a_store_it_cannot_reach(
    store: MemoryStore,
) -> None:
    ttl = 0.3
    a = lease(store, None, "run a", ttl=ttl)
    a.try_acquire()
    lost: list[str] = []
    errors: list[str] = []
    a.start_heartbeat(lost.append, errors.append)
    b = lease(store, None, "run b", ttl=ttl)
    with pytest.raises(LeaseTimeout):
        b.acquire(timeout=3 * ttl)  # three ttls: the heartbeat kept renewing
    assert store.record().holder["label"] == "run a" and store.record().revision >= 3
    store.broken = True
    wait_for(lambda: lost, "the lost lease")
    [reason] = lost
    assert re.search(
        r"the lease was not renewed for 0\.\ds, and another run may take it over", reason
    )
    assert reason.endswith(": memory store is down")
    a.release()  # the store is down: the lease is left to expire, no error


def test_the_heartbeat_reports_each_failed_renewal_until_two_thirds_of_the_ttl(
    store: MemoryStore, clock: FakeClock
) -> None:
    a = lease(store, clock, "run a")
    a.try_acquire()
    store.broken = True
    lost: list[str] = []
    errors: list[str] = []
    a.start_heartbeat(lost.append, errors.append)
    wait_for(lambda: lost, "the lost lease")
    assert errors == ["memory store is down"], "at ttl/3; lost at 2/3"
    assert "the lease was not renewed for 40.0s" in lost[0]
    a.release()


def test_the_heartbeat_of_a_paused_holder_finds_its_lease_taken(store: MemoryStore) -> None:
    ttl = 0.3
    a = lease(store, None, "run a", ttl=ttl)
    a.try_acquire()
    b = lease(store, None, "run b", ttl=ttl)
    b.acquire(timeout=BOUND)  # a never renewed (as if paused): b takes over after a ttl
    lost: list[str] = []
    a.start_heartbeat(lost.append)
    wait_for(lambda: lost, "the lost lease")
    # Paused past its renewal deadline, a holder gives up without waiting for the renewal in
    # flight: which reason it gives depends on whether that renewal (which finds b's lease)
    # answered first, a race a loaded machine loses. Either way a knows its lease is gone.
    assert "another run took the lease over" in lost[0] or "was not renewed for" in lost[0]
    a.release()
    assert store.record().holder["label"] == "run b"
    assert b.release()


def test_a_renewal_stuck_in_the_store_counts_as_lost_in_time(store: MemoryStore) -> None:
    ttl = 0.3
    a = lease(store, None, "run a", ttl=ttl)
    a.try_acquire()
    store.hang = threading.Event()  # every write now hangs (a network partition)
    lost: list[str] = []
    started = time.monotonic()
    a.start_heartbeat(lost.append)
    wait_for(lambda: lost, "the lost lease")
    assert time.monotonic() - started < ttl, "before a waiter could take it over"
    assert "the store does not answer" in lost[0]
    store.hang.set()
    a.release()


# -- the local file store --------------------------------------------------------------------------


def test_local_file_store_leases_live_next_to_the_state_and_exclude_each_other(
    tmp_path: Path, clock: FakeClock
) -> None:
    state = tmp_path / "shared" / "state.json"
    # Two stores on one path: two machines mounting the same shared file system.
    one, two = LocalFileStateStore(state), LocalFileStateStore(state)
    assert isinstance(one, LeaseStore)
    assert one.lease_path(NAME) == tmp_path / "shared" / LEASE_DIR / NAME
    assert one.lease_location(NAME) == f"local file {tmp_path / 'shared' / LEASE_DIR / NAME}"
    a, b = lease(one, clock, "run a"), lease(two, clock, "run b")
    assert a.try_acquire()
    assert not b.try_acquire()
    assert b.blocking is not None and b.blocking.holder["label"] == "run a"
    data = json.loads(one.lease_path(NAME).read_text())
    assert data["holder"]["host"] == "worker-a" and data["expires"].endswith("Z")
    a.renew()
    clock.advance(TTL)
    assert not b.try_acquire(), "renewed: b saw a new version and starts counting anew"
    clock.advance(TTL)
    assert b.try_acquire() and b.taken_over is not None
    assert a.release() is False and b.release() is True
    assert one.load() == StateDocument.empty(), "the state document is not touched"


def test_local_file_store_writes_a_lease_only_at_the_version_read(tmp_path: Path) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    first = store.write_lease(NAME, b"one", None)
    assert first is not None
    assert store.write_lease(NAME, b"two", None) is None, "exists already"
    assert store.write_lease(NAME, b"two", "stale") is None
    assert store.write_lease(NAME, b"two", first) is not None
    assert store.read_lease(NAME)[0] == b"two"


# -- in the run lock and the session ---------------------------------------------------------------


def run_lock(tmp_path: Path, machine: str, the_lease: Lease, **kwargs: object) -> RunLock:
    """A run lock on ``machine``'s own cache dir, sharing ``the_lease``'s store."""
    options: dict = {"what": WHAT, "timeout": BOUND, "log": Lines(), "lease": the_lease, **kwargs}
    return RunLock(tmp_path / machine / "run.lock", **options)


def test_a_run_on_another_machine_waits_for_the_lease_and_names_its_holder(
    tmp_path: Path, store: MemoryStore
) -> None:
    first = run_lock(tmp_path, "a", lease(store, None, "dbt build dag_id=d run_id=r1"))
    first.acquire()
    log = Lines()
    second = run_lock(tmp_path, "b", lease(store, None, "dbt build run b"), log=log)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(second.acquire()), daemon=True)
    thread.start()
    wait_for(lambda: log.having("Waiting for another run"), "the waiting line")
    [waiting] = log.having("Waiting")
    assert (
        "(on another machine, or from another checkout)" in waiting
        and WHAT in waiting
        and f"memory:{NAME}" in waiting
    )
    assert "pid 4242 on worker-a" in waiting and "(dbt build dag_id=d run_id=r1)" in waiting
    assert "up to 10s (lock_timeout)" in waiting
    first.release()
    thread.join(BOUND)
    assert outcome and second.held and store.record().holder["label"] == "dbt build run b"
    assert log.having("Got the lease of")
    second.release()
    assert store.record().released


def test_a_run_lock_gives_up_on_the_lease_at_its_timeout_and_frees_its_flock(
    tmp_path: Path, store: MemoryStore
) -> None:
    first = run_lock(tmp_path, "a", lease(store, None, "run a"))
    first.acquire()
    second = run_lock(tmp_path, "b", lease(store, None, "run b"), timeout=0.2)
    with pytest.raises(RunLockError, match=r"holds its lease memory:.*\(run a\)"):
        second.acquire()
    assert not second.held
    local = RunLock(tmp_path / "b" / "run.lock", what=WHAT, timeout=0, log=Lines())
    local.acquire()  # the flock of machine b was given back
    local.release()
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunLockStopped):
        run_lock(tmp_path, "b", lease(store, None, "run b"), stop=stop).acquire()
    first.release()


def test_a_run_lock_whose_lease_is_lost_says_so_and_calls_back(
    tmp_path: Path, store: MemoryStore
) -> None:
    log = Lines()
    lost: list[str] = []
    first = run_lock(
        tmp_path, "a", lease(store, None, "run a", ttl=0.3), log=log, on_lease_lost=lost.append
    )
    first.acquire()
    store.broken = True
    wait_for(lambda: lost, "the lost lease")
    assert log.having("ERROR Lost the lease of " + WHAT)
    first.release()


def test_a_store_refusing_the_lease_leaves_the_run_to_its_local_lock_with_a_warning(
    tmp_path: Path, store: MemoryStore
) -> None:
    store.refused = True
    log = Lines()
    alone = run_lock(tmp_path, "a", lease(store, None, "run a"), log=log)
    alone.acquire()
    assert alone.held and alone.lease is None
    [warning] = log.having("not kept apart")
    assert "access denied" in warning and f"write memory:{NAME}" in warning
    alone.release()


def test_the_lease_name_is_the_same_for_copies_of_a_project_on_different_paths(
    tmp_path: Path,
) -> None:
    names = []
    for where in ("machine-a/checkout", "machine-b/elsewhere"):
        project = tmp_path / where
        project.mkdir(parents=True)
        (project / "dbt_project.yml").write_text("name: shop\nprofile: warehouse\n")
        (project / "profiles.yml").write_text("warehouse: {}\n")
        names.append(lease_name(DbtRunConfig.create(project_dir=project, target="prod")))
    assert names == ["shop--warehouse--prod.json"] * 2
    other = DbtRunConfig.create(project_dir=tmp_path / "machine-a/checkout")
    assert lease_name(other) == "shop--warehouse--default.json"


class NoLeaseStore:
    """A store without leases, as the Orchestra HTTP API is."""

    description = "Orchestra API https://example.invalid"

    def load(self) -> StateDocument:
        return StateDocument.empty()

    def save(self, updates: object) -> StateDocument:
        return StateDocument.empty()


def test_a_store_without_leases_says_runs_elsewhere_are_not_kept_apart(tmp_path: Path) -> None:
    (tmp_path / "dbt_project.yml").write_text("name: shop\n")
    (tmp_path / "profiles.yml").write_text("shop: {}\n")
    log = Lines()
    session = DbtSession(
        DbtRunConfig.create(project_dir=tmp_path, target="prod"), NoLeaseStore(), log
    )  # type: ignore[arg-type]
    assert session._lease("label") is None
    [line] = log.lines
    assert "on other machines are not kept apart" in line and "Orchestra API" in line


def test_a_session_waits_for_a_lease_held_on_another_machine_and_can_be_stopped(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: shop\nprofile: shop\n")
    (project / "profiles.yml").write_text("shop: {}\n")
    # `seed` passes through: it takes the lock (and lease) before starting dbt: no dbt needed.
    config = DbtRunConfig.create(project_dir=project, command="seed", target="prod")
    state = LocalFileStateStore(tmp_path / "shared" / "state.json")
    elsewhere = lease(LocalFileStateStore(tmp_path / "shared" / "state.json"), None, "on b")
    elsewhere.holder["host"] = "worker-b"
    elsewhere.name = lease_name(config)
    assert elsewhere.try_acquire()
    log = Lines()
    session = DbtSession(config, state, log)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            session.run()
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    wait_for(lambda: log.having("Waiting for another run"), "the waiting line")
    [waiting] = log.having("Waiting for another run")
    assert str(tmp_path / "shared" / LEASE_DIR / "shop--shop--prod.json") in waiting
    assert "pid 4242 on worker-b" in waiting and "(on b)" in waiting
    session.stop()
    runner.join(BOUND)
    assert not runner.is_alive()
    [error] = errors
    assert "was stopped while waiting for another run" in str(error)
    assert elsewhere.release(), "still the other machine's lease"
