"""The warehouse lock's parent side: its key, its connection's name, and how a run waits.

The attempts are scripted (what the dbt worker would answer); the clock is a fake that
advances only when the wait sleeps, so timeouts are exact and the tests take milliseconds.
The worker side runs against a real PostgreSQL in tests/integration/test_warehouse_lock.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.log_lines import Lines

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.locations import lease_name
from airflow_provider_orchestra_dbt.execution.run_lock import RunLockError, RunLockStopped
from airflow_provider_orchestra_dbt.execution.warehouse_lock import (
    LockAttempt,
    WarehouseLockUnavailable,
    advisory_lock_key,
    application_name,
    wait_for_warehouse_lock,
)

WHAT = "dbt project /p (target 'pg')"
FIRST = {
    "pid": 4242,
    "application_name": "orchestra-dbt pid 17: dbt build dag_id=d task_id=t",
    "client_addr": "10.0.0.7",
    "backend_start": "2026-01-02T03:04:05+00:00",
}
SECOND = {**FIRST, "pid": 5151, "application_name": "orchestra-dbt pid 18: dbt run"}


class FakeTime(threading.Event):
    """A stop event whose waits advance a clock instead of sleeping."""

    def __init__(self, stop_after: float | None = None) -> None:
        super().__init__()
        self.now = 0.0
        self.sleeps: list[float] = []
        self._stop_after = stop_after

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None and timeout >= 0
        self.sleeps.append(timeout)
        self.now += timeout
        if self._stop_after is not None and self.now >= self._stop_after:
            self.set()
        return self.is_set()


def held_by(*holders: dict[str, object] | None, then_free: bool = True) -> Iterator[LockAttempt]:
    for holder in holders:
        yield LockAttempt(locked=False, database="warehouse", holder=holder)
    while then_free:
        yield LockAttempt(locked=True, database="warehouse")
    while True:
        yield LockAttempt(locked=False, database="warehouse", holder=holders[-1])


def wait(
    attempts: Iterator[LockAttempt],
    time: FakeTime,
    log: Lines,
    timeout: float = 60.0,
    waited_before: float = 0.0,
) -> float:
    return wait_for_warehouse_lock(
        lambda: next(attempts),
        what=WHAT,
        timeout=timeout,
        log=log,
        stop=time,
        waited_before=waited_before,
        clock=time.clock,
    )


# -- the key -----------------------------------------------------------------------------------


def _config(project: Path, **kwargs: object) -> DbtRunConfig:
    return DbtRunConfig.create(project_dir=project, command="build", **kwargs)  # type: ignore[arg-type]


def _project(root: Path, name: str = "shop", profile: str = "shop_profile") -> Path:
    root.mkdir(parents=True)
    (root / "dbt_project.yml").write_text(f"name: {name}\nprofile: {profile}\n")
    (root / "profiles.yml").write_text("")  # the config asks for one; the key ignores it
    return root


def test_the_key_is_the_same_wherever_the_project_is_checked_out(tmp_path: Path) -> None:
    here = _config(_project(tmp_path / "worker-1" / "checkout"), target="pg")
    there = _config(_project(tmp_path / "laptop" / "shop"), target="pg")
    assert advisory_lock_key(lease_name(here)) == advisory_lock_key(lease_name(there))


@pytest.mark.parametrize(
    "other",
    [
        {"target": "pg_other"},
        {"target": "pg", "key_prefix": "team_b"},
        {"target": "pg", "name": "warehouse_models"},
        {"target": "pg", "profile": "another_profile"},
    ],
)
def test_another_target_prefix_or_project_has_another_key(
    tmp_path: Path, other: dict[str, str]
) -> None:
    base = _config(_project(tmp_path / "a"), target="pg")
    project = _project(
        tmp_path / "b", other.get("name", "shop"), other.get("profile", "shop_profile")
    )
    config = _config(project, target=other["target"], key_prefix=other.get("key_prefix"))
    assert advisory_lock_key(lease_name(config)) != advisory_lock_key(lease_name(base))


def test_the_key_is_a_fixed_signed_64_bit_value() -> None:
    # Fixed: every machine and every release must compute the same key, or runs stop
    # taking turns without anyone noticing.
    assert advisory_lock_key("shop.shop_profile.pg") == advisory_lock_key("shop.shop_profile.pg")
    assert advisory_lock_key("x") == 4267976325859531407
    keys = [advisory_lock_key(str(n)) for n in range(2000)]
    assert all(-(2**63) <= key < 2**63 for key in keys)
    assert any(key < 0 for key in keys) and any(key > 2**32 for key in keys)


# -- the connection's name ---------------------------------------------------------------------


def test_the_application_name_says_which_run_holds_the_lock() -> None:
    assert application_name("dbt build", 42) == "orchestra-dbt pid 42: dbt build"


def test_a_long_label_is_cut_to_63_bytes_at_a_character_boundary() -> None:
    name = application_name("dbt build dag_id=" + "é" * 40, 123456)
    assert name.startswith("orchestra-dbt pid 123456: dbt build dag_id=é")
    assert len(name.encode("utf-8")) <= 63
    assert len(name.encode("utf-8")) >= 62  # no more than one character's worth lost


# -- waiting -----------------------------------------------------------------------------------


def test_a_free_lock_is_taken_at_once_and_quietly() -> None:
    time, log = FakeTime(), Lines()
    assert wait(held_by(), time, log) == 0.0
    assert log.lines == [] and time.sleeps == []


def test_a_waiting_run_names_the_holder_once_then_each_new_one() -> None:
    time, log = FakeTime(), Lines()
    waited = wait(held_by(FIRST, FIRST, FIRST, SECOND, SECOND), time, log)
    assert waited == pytest.approx(sum(time.sleeps)) and waited > 0
    assert len(log.lines) == 3, log.lines
    first, changed, got = log.lines
    assert first.startswith(
        f"Waiting for another run of {WHAT} to finish: it holds the PostgreSQL advisory lock "
        "in database 'warehouse' (backend pid 4242, application "
        "'orchestra-dbt pid 17: dbt build dag_id=d task_id=t', from 10.0.0.7, connected since "
        "2026-01-02T03:04:05+00:00); waiting up to 60s (lock_timeout)"
    )
    assert "now held by backend pid 5151" in changed and "pid 18: dbt run" in changed
    assert got.startswith(f"Got the PostgreSQL advisory lock of {WHAT} after waiting")


def test_an_unknown_holder_is_said_to_be_unknown() -> None:
    time, log = FakeTime(), Lines()
    wait(held_by(None), time, log)
    assert "(holder unknown)" in log.lines[0]


def test_polls_back_off_to_a_second_at_most() -> None:
    time, log = FakeTime(), Lines()
    wait(held_by(*[FIRST] * 12), time, log)
    assert time.sleeps[0] <= 0.05
    assert max(time.sleeps) <= 1.0
    assert time.sleeps[-1] >= 0.5  # backed off: jitter keeps it within half of the cap


def test_timeout_names_the_lock_the_holder_and_the_setting_to_raise() -> None:
    time, log = FakeTime(), Lines()
    with pytest.raises(RunLockError) as caught:
        wait(held_by(FIRST, then_free=False), time, log, timeout=30.0, waited_before=25.0)
    message = str(caught.value)
    assert type(caught.value) is RunLockError
    assert message.startswith(
        f"another run of {WHAT} holds the PostgreSQL advisory lock in database 'warehouse'"
    )
    assert "backend pid 4242" in message and "orchestra-dbt pid 17" in message
    assert "gave up after 30s in all (lock_timeout=30)" in message
    assert "raise lock_timeout" in message
    # Only what the flock and the lease left of lock_timeout was spent here.
    assert sum(time.sleeps) == pytest.approx(5.0)


def test_lock_timeout_used_up_by_the_other_locks_tries_once() -> None:
    time, log = FakeTime(), Lines()
    with pytest.raises(RunLockError, match="gave up"):
        wait(held_by(FIRST, then_free=False), time, log, timeout=10.0, waited_before=10.0)
    assert time.sleeps == []
    assert wait(held_by(), FakeTime(), log, timeout=0.0) == 0.0


def test_stop_interrupts_the_wait() -> None:
    time, log = FakeTime(stop_after=3.0), Lines()
    with pytest.raises(RunLockStopped, match="stopped while waiting"):
        wait(held_by(FIRST, then_free=False), time, log)
    assert sum(time.sleeps) < 4.0


def test_stop_before_the_first_try_tries_nothing() -> None:
    time = FakeTime()
    time.set()

    def attempt() -> LockAttempt:
        raise AssertionError("tried the lock after stop")

    with pytest.raises(RunLockStopped):
        wait_for_warehouse_lock(attempt, what=WHAT, timeout=60, log=Lines(), stop=time)


def test_a_stop_during_a_try_is_a_stop() -> None:
    def attempt() -> LockAttempt:
        raise RunLockStopped("the worker was interrupted")

    with pytest.raises(RunLockStopped):
        wait_for_warehouse_lock(attempt, what=WHAT, timeout=60, log=Lines(), stop=FakeTime())


def test_a_lock_that_cannot_be_tried_fails_the_run_naming_why() -> None:
    def attempt() -> LockAttempt:
        raise WarehouseLockUnavailable("permission denied for function pg_try_advisory_lock")

    with pytest.raises(RunLockError) as caught:
        wait_for_warehouse_lock(attempt, what=WHAT, timeout=60, log=Lines(), stop=FakeTime())
    assert type(caught.value) is RunLockError
    assert str(caught.value) == (
        f"cannot take the PostgreSQL advisory lock that keeps runs of {WHAT} apart: "
        "permission denied for function pg_try_advisory_lock"
    )


# -- the worker's side of the conversation -----------------------------------------------------


def test_a_worker_result_becomes_an_attempt() -> None:
    message = {"type": "warehouse_lock_result", "locked": False, "database": "w", "holder": FIRST}
    attempt = LockAttempt.from_message(message)
    assert (attempt.locked, attempt.database, attempt.holder) == (False, "w", FIRST)
    assert LockAttempt.from_message({"locked": True, "holder": None}).holder is None
