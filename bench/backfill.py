"""Benchmark: a backfill of the tutorial DAG on two Celery workers against the same on one.

    uv run python bench/backfill.py                 # 1 and 2 workers x 2, 4 intervals (~20 min)
    uv run python bench/backfill.py --repeat 1      # one backfill of each (~7 min on 2 cores)
    uv run python bench/backfill.py --intervals 6 --repeat 3

The deployment is the one ``tests/integration/test_celery_workers.py`` checks, from
``tests/support/celery_deployment.py``: CeleryExecutor, Redis as the broker, PostgreSQL as the
metadata DB and the tutorial's warehouse (target ``postgres``), the state in S3 (moto's
server), each Celery worker a "machine" of its own running one task at a time. This script
starts PostgreSQL (a throwaway cluster, or the server ``ORCHESTRA_TEST_PG_*`` names), Redis and
moto itself, all on 127.0.0.1, and builds the tutorial's baseline warehouse and state once.

Configurations alternate (1 worker, 2 workers; then 2, 1; ...), each measurement on a fresh
deployment: warehouse reset from the baseline's template, metadata DB recreated, state in a
new bucket from the baseline. Tasks of a paused DAG are never scheduled, backfill runs
included, so the DAG is unpaused; that creates its latest scheduled run (catchup is off),
which is left to finish before the clock starts (it also warms a worker up, as a deployment
that has been running would be). Then new orders land on every backfilled day, so the first
run in turn rebuilds the orders chain and the others reuse it, and
``airflow backfill create --max-active-runs K`` starts K daily runs at once.

Measured: the wall time from starting ``backfill create`` until the metadata DB shows all K
backfill runs finished (polled every 0.5 s, bounded), and the span the DB itself records (the
first run queued to the last one ended); per run, from the task logs and the DB: the dbt
build (first executed node to saved state), the wait for the lease ("Got the lease of ...
after waiting N s") and the task durations. Writes ``bench/results/<date>-backfill.md`` and
the raw numbers as ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
# The deployment and the servers (tests/support) are imported as ``support.*``, as the tests do.
sys.path.insert(1, str(REPO / "tests"))

from run import git_commit, log, machine_facts, machine_lines, median, package_versions  # noqa: E402
from support.celery_deployment import (  # noqa: E402
    METADATA_DB,
    TUTORIAL,
    WORKERS,
    CeleryDeployment,
    celery_deployment,
    dbt_window,
)
from support.postgres import PgServer, postgres_server  # noqa: E402
from support.redis_server import redis_server  # noqa: E402
from support.s3_server import MotoS3Server  # noqa: E402
from support.tutorial import Baseline, PgDatabase  # noqa: E402

RESULTS = BENCH / "results"
FIRST_DAY = dt.date(2026, 1, 3)  # the tutorial DAG starts on 2026-01-01
ORDERS_PER_DAY = 2
# Bounds, in seconds: the warm-up run and the backfill on a loaded 2-core machine.
SCHEDULED_TIMEOUT = 600.0
BACKFILL_TIMEOUT = 1200.0
DONE = ("success", "failed")
LEASE_WAIT = re.compile(r"Got the lease of .*? after waiting ([0-9.]+)s")


@dataclass
class RunTimes:
    """One backfill run: where its dbt build ran and where its time went."""

    run_id: str
    day: str
    state: str
    worker: str
    land_s: float  # the land_raw_data task, start to end
    task_s: float  # the dbt_build task, start to end
    dbt_s: float  # inside dbt_build: first executed node to saved state
    lease_wait_s: float  # inside dbt_build: waiting for another run's turn
    built: int  # nodes dbt_build rebuilt


@dataclass
class Measurement:
    workers: int
    rep: int
    wall_s: float  # `backfill create` started -> all runs seen finished
    create_s: float  # the `backfill create` CLI itself (process start-up included)
    db_span_s: float  # first backfill run queued -> last one ended, by the metadata DB
    load_before: float
    runs: list[RunTimes] = field(default_factory=list)
    error: str = ""  # why the measurement stopped short, if it did

    @property
    def dbt_total_s(self) -> float:
        """The backfill's dbt builds end to end: the floor of its wall time, as they take turns."""
        return sum(r.dbt_s for r in self.runs) if self.runs else float("nan")

    @property
    def ok(self) -> bool:
        return not self.error and all(r.state == "success" for r in self.runs)


@dataclass
class Services:
    pg: PgServer
    broker: str
    s3: MotoS3Server
    baseline: Baseline


# -- one measurement ---------------------------------------------------------------------------


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float:
    return (end - start).total_seconds() if start and end else float("nan")


def warm_up(d: CeleryDeployment) -> None:
    """Unpause the DAG (else no task of it is scheduled) and let its scheduled run finish."""
    d.cli("dags", "unpause", TUTORIAL)

    def scheduled_done() -> list[tuple[Any, ...]] | None:
        rows = d.query(
            "select run_id, state from dag_run where dag_id = ? and run_type = 'scheduled'",
            (TUTORIAL,),
        )
        return rows if rows and all(state in DONE for _, state in rows) else None

    rows = d.wait(scheduled_done, SCHEDULED_TIMEOUT, "the scheduled run to finish")
    for run_id, state in rows:
        if state != "success":
            raise RuntimeError(f"the scheduled run {run_id} {state}:\n{d.task_log(run_id)[-4000:]}")


def backfill_done(d: CeleryDeployment, count: int) -> list[tuple[Any, ...]] | None:
    rows = d.query(
        "select run_id, state, data_interval_start, queued_at, end_date from dag_run "
        "where dag_id = ? and run_type = 'backfill' order by data_interval_start",
        (TUTORIAL,),
    )
    return rows if len(rows) == count and all(row[1] in DONE for row in rows) else None


def run_times(d: CeleryDeployment, run_id: str, day: str, state: str) -> RunTimes:
    tasks = {
        task_id: (hostname, start, end)
        for task_id, hostname, start, end in d.query(
            "select task_id, hostname, start_date, end_date from task_instance "
            "where dag_id = ? and run_id = ?",
            (TUTORIAL, run_id),
        )
    }
    worker, build_start, build_end = tasks.get("dbt_build", ("?", None, None))
    _, land_start, land_end = tasks.get("land_raw_data", ("?", None, None))
    log_text = d.task_log(run_id)
    dbt_s = float("nan")
    with contextlib.suppress(AssertionError):  # no window in the log: the build failed early
        start, end = dbt_window(log_text)
        dbt_s = (end - start).total_seconds()
    built = -1
    with contextlib.suppress(AssertionError):
        built = len(d.xcom(run_id)["built"])
    return RunTimes(
        run_id=run_id,
        day=day,
        state=state,
        worker=str(worker),
        land_s=_seconds(land_start, land_end),
        task_s=_seconds(build_start, build_end),
        dbt_s=dbt_s,
        lease_wait_s=sum(float(m) for m in LEASE_WAIT.findall(log_text)),
        built=built,
    )


def time_backfill(d: CeleryDeployment, intervals: int) -> tuple[float, float, list[Any]]:
    """Create the backfill and wait for it: (wall s, CLI s, the runs' rows)."""
    last_day = FIRST_DAY + dt.timedelta(days=intervals - 1)
    began = time.perf_counter()
    d.cli(
        "backfill", "create", "--dag-id", TUTORIAL,
        "--from-date", FIRST_DAY.isoformat(), "--to-date", last_day.isoformat(),
        "--max-active-runs", str(intervals),
    )  # fmt: skip
    created = time.perf_counter() - began
    rows = d.wait(
        lambda: backfill_done(d, intervals), BACKFILL_TIMEOUT, f"{intervals} backfill runs"
    )
    return time.perf_counter() - began, created, rows


def measure(
    services: Services, scratch: Path, workers: int, rep: int, intervals: int
) -> Measurement:
    root = scratch / f"{workers}-workers-{rep}"
    bucket = services.s3.create_bucket("bench")
    days = [(FIRST_DAY + dt.timedelta(days=i)).isoformat() for i in range(intervals)]
    try:
        with celery_deployment(
            root, services.baseline, services.pg, bucket, services.broker, WORKERS[:workers]
        ) as d:
            warm_up(d)
            d.land_orders(days, ORDERS_PER_DAY)
            load = os.getloadavg()[0]
            wall, created, rows = time_backfill(d, intervals)
            span = _seconds(min(r[3] for r in rows), max(r[4] for r in rows))
            runs = [run_times(d, r[0], r[2].date().isoformat(), r[1]) for r in rows]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return Measurement(workers, rep, wall, created, span, load, runs)


def measure_or_failure(
    services: Services, scratch: Path, workers: int, rep: int, intervals: int
) -> Measurement:
    """A measurement, or one that records why it failed: the other ones still count."""
    try:
        return measure(services, scratch, workers, rep, intervals)
    except (AssertionError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        log(f"  failed: {str(exc)[-2000:]}")
        nan = float("nan")
        return Measurement(
            workers, rep, nan, nan, nan, nan, error=" ".join(str(exc).split())[-500:]
        )


# -- services ----------------------------------------------------------------------------------


@contextlib.contextmanager
def services(scratch: Path) -> Iterator[Services]:
    """PostgreSQL, Redis and moto on 127.0.0.1 and the baseline; all stopped on the way out."""
    with postgres_server() as pg, redis_server() as broker, MotoS3Server() as s3:
        # Our own cluster: the profile's database name. Someone else's server: names of our
        # own, so that no database of theirs is dropped, and dropped again afterwards.
        name = "tutorial" if pg.throwaway else f"orchestra_dbt_bench_{os.getpid()}"
        database = PgDatabase(pg, name, f"{name}_baseline")
        try:
            log("building the tutorial's baseline (warehouse and state)")
            baseline = Baseline(scratch / "baseline", database)
            yield Services(pg, broker, s3, baseline)
        finally:
            if not pg.throwaway:
                pg.drop(database.name, database.template, METADATA_DB)


def server_versions(pg: PgServer) -> dict[str, str]:
    conn = pg.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("show server_version")
            postgres = str(cursor.fetchone()[0])
    finally:
        conn.close()
    redis = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.split()
    version = next((p.split("=", 1)[1] for p in redis if p.startswith("v=")), "?")
    return {"PostgreSQL": postgres, "Redis": version}


# -- the report --------------------------------------------------------------------------------


def _median_of(ms: Sequence[Measurement], attr: str) -> float:
    return median([getattr(m, attr) for m in ms])


def _per_run(ms: Sequence[Measurement], attr: str) -> float:
    return median([getattr(r, attr) for m in ms for r in m.runs])


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a == a and b == b and b > 0 else "-"


def _s(value: float) -> str:
    return f"{value:.1f}" if value == value else "-"


def summary_table(ms: Sequence[Measurement]) -> str:
    by = {n: [m for m in ms if m.workers == n and m.ok] for n in (1, 2)}
    wall = {n: _median_of(by[n], "wall_s") for n in by}
    span = {n: _median_of(by[n], "db_span_s") for n in by}
    lines = [
        "| config | backfills | median wall s | ratio 2 workers / 1 | median DB span s "
        "| dbt s per backfill (sum) | dbt s per run (median) | lease wait s per run (median) "
        "| dbt_build task s (median) | land task s (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in (1, 2):
        ratio = f"**{_ratio(wall[2], wall[1])}**" if n == 2 else "1"
        lines.append(
            f"| {n} Celery worker{'s' if n > 1 else ''} | {len(by[n])} | {_s(wall[n])} | {ratio} "
            f"| {_s(span[n])} ({_ratio(span[n], span[1])}) "
            f"| {_s(_median_of(by[n], 'dbt_total_s'))} | {_s(_per_run(by[n], 'dbt_s'))} "
            f"| {_s(_per_run(by[n], 'lease_wait_s'))} | {_s(_per_run(by[n], 'task_s'))} "
            f"| {_s(_per_run(by[n], 'land_s'))} |"
        )
    return "\n".join(lines)


def runs_table(ms: Sequence[Measurement]) -> str:
    lines = [
        "| workers | rep | wall s | CLI s | DB span s | load | run (day) | state | worker "
        "| land s | dbt_build s | dbt s | lease wait s | built |",
        "|" + "---|" * 14,
    ]
    for m in ms:
        for i, r in enumerate(m.runs):
            head = (
                f"| {m.workers} | {m.rep} | {m.wall_s:.1f} | {m.create_s:.1f} "
                f"| {m.db_span_s:.1f} | {m.load_before:.1f} "
                if i == 0
                else "| | | | | | "
            )
            lines.append(
                f"{head}| {r.day} | {r.state} | {r.worker} | {r.land_s:.1f} | {r.task_s:.1f} "
                f"| {r.dbt_s:.1f} | {r.lease_wait_s:.1f} | {r.built} |"
            )
    return "\n".join(lines)


MEANING = (
    "Runs of one dbt project and target take turns on the lease in the state store, so a "
    "second worker never runs two dbt builds at once: it only overlaps the non-dbt parts of "
    "runs (task start-up, DAG parsing, dbt's parse, the land step, queueing) with another "
    "run's dbt build, while a dbt_build task that comes too early waits for the lease. So two "
    "workers cannot take a backfill below its dbt builds added up, nor below half of what one "
    "worker takes; on one machine, they also share its cores with each other and with Airflow."
)


def reading(ms: Sequence[Measurement]) -> str:
    """The figures of this run against the two floors ``MEANING`` names."""
    by = {n: [m for m in ms if m.workers == n and m.ok] for n in (1, 2)}
    if not by[1] or not by[2]:
        return "No reading: a configuration has no successful backfill."
    wall1, wall2 = _median_of(by[1], "wall_s"), _median_of(by[2], "wall_s")
    dbt = _median_of(by[2], "dbt_total_s")
    floor = max(dbt, wall1 / 2)
    return (
        f"Here the dbt builds of a backfill add up to {dbt:.1f} s of the {wall1:.1f} s one "
        f"worker takes, so the lease would let two workers get down to {floor:.1f} s (ratio "
        f"{floor / wall1:.2f}); they took {wall2:.1f} s (ratio {wall2 / wall1:.2f}). What "
        "is left is the machine: a dbt_build task took "
        f"{_per_run(by[2], 'task_s'):.1f} s on two workers against "
        f"{_per_run(by[1], 'task_s'):.1f} s on one (median), both sharing "
        f"{os.cpu_count()} cores with every Airflow component and the servers."
    )


def write_report(
    ms: Sequence[Measurement],
    args: argparse.Namespace,
    facts: dict[str, Any],
    versions: dict[str, str],
) -> Path:
    today = dt.date.today().isoformat()
    out = Path(args.output) if args.output else RESULTS / f"{today}-backfill.md"
    loads = [m.load_before for m in ms]
    failed = [f"{m.workers} worker(s), rep {m.rep}: {m.error}" for m in ms if m.error]
    failed += [
        f"{m.workers} worker(s), rep {m.rep}: {r.run_id} {r.state}"
        for m in ms
        for r in m.runs
        if r.state != "success"
    ]
    lines = [
        f"# Backfill on Celery workers {today}",
        "",
        f"`{' '.join(sys.argv)}` — a backfill of {args.intervals} daily intervals of the "
        f"tutorial DAG (`--max-active-runs {args.intervals}`), on 1 and on 2 Celery workers "
        f"(one task at a time each), {args.repeat} time(s) each, alternated; medians over "
        "successful backfills. Every backfill on a fresh deployment "
        "(`tests/support/celery_deployment.py`): warehouse (PostgreSQL, target `postgres`) "
        "reset from the baseline, new metadata DB, state in a new S3 bucket (moto) from the "
        f"baseline's first build, {ORDERS_PER_DAY} new orders landed on each backfilled day.",
        "",
        "## Machine",
        "",
        *machine_lines(
            facts,
            loads,
            during="before the backfills",
            started=args.started,
            elapsed=args.elapsed,
            commit=args.commit,
            versions=versions,
        ),
        "* everything on 127.0.0.1 on this one machine: the workers, the scheduler, the API "
        "server, the dag-processor, PostgreSQL, Redis and moto share its cores",
        "",
        "## Wall time",
        "",
        "wall: from starting `airflow backfill create` (a CLI process, its start-up included) "
        "until the metadata DB shows every backfill run finished, polled every 0.5 s. DB "
        "span: the first backfill run queued to the last one ended, as the metadata DB "
        "recorded them (ratio to 1 worker in brackets). dbt s per backfill: its runs' dbt "
        "builds added up, the floor of its wall time since they take turns. Per run: dbt s is "
        "the dbt build from its first executed node to its saved state (task log; the lease "
        "is held a little longer, from reading the state and planning on); lease wait "
        "s is the time its dbt_build waited for another run's turn (`Got the lease of ... "
        "after waiting N s`).",
        "",
        summary_table(ms),
        "",
        "## What the ratio means",
        "",
        MEANING,
        "",
        reading(ms),
        "",
        "## Every backfill",
        "",
        runs_table(ms),
        "",
        "## Failures",
        "",
        *([f"* {line}" for line in failed] or ["None: every backfill run succeeded."]),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    raw = {
        "args": vars(args),
        "machine": facts,
        "versions": versions,
        "measurements": [asdict(m) for m in ms],
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    return out


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="backfills per configuration")
    parser.add_argument("--intervals", type=int, default=4, help="daily intervals per backfill")
    parser.add_argument("--output", help="results file (default bench/results/<date>-backfill.md)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or not 1 <= args.intervals <= 28:
        parser.error("--repeat must be >= 1 and --intervals in 1..28")
    return args


def order(rep: int) -> tuple[int, int]:
    """1 then 2 workers, then 2 then 1: a drift in the machine's load hits both alike."""
    return (1, 2) if rep % 2 == 0 else (2, 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = dt.datetime.now().isoformat(timespec="seconds")
    args.commit = git_commit()
    began = time.perf_counter()
    # A SIGTERM becomes SystemExit, so that every context above stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    versions = package_versions(
        sys.executable,
        [
            "airflow-provider-orchestra-dbt", "apache-airflow", "apache-airflow-providers-celery",
            "celery", "dbt-core", "dbt-postgres", "moto",
        ],
    )  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="orchestra-dbt-bench-backfill-"))
    # dbt's parse cache of the baseline build stays in the scratch dir (workers have their own).
    os.environ["ORCHESTRA_DBT_CACHE_DIR"] = str(scratch / "cache")
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    measurements: list[Measurement] = []
    try:
        with services(scratch) as found:
            versions |= server_versions(found.pg)
            for rep in range(args.repeat):
                for workers in order(rep):
                    log(f"rep {rep}: {args.intervals} intervals on {workers} worker(s)")
                    m = measure_or_failure(found, scratch, workers, rep, args.intervals)
                    measurements.append(m)
                    log(
                        f"  wall {m.wall_s:.1f} s, DB span {m.db_span_s:.1f} s, dbt "
                        f"{m.dbt_total_s:.1f} s in all, lease waits "
                        f"{sum(r.lease_wait_s for r in m.runs):.1f} s, ok={m.ok}"
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.elapsed = time.perf_counter() - began
    facts = machine_facts() | {"commit_at_end": git_commit(), "nice": os.nice(0)}
    out = write_report(measurements, args, facts, versions)
    print()
    print(summary_table(measurements))
    print()
    print(reading(measurements))
    print()
    log(f"wrote {out} in {args.elapsed / 60:.1f} min")
    return 0 if all(m.ok for m in measurements) else 1


if __name__ == "__main__":
    raise SystemExit(main())
