"""The tutorial DAG on a multi-worker Airflow: CeleryExecutor, two workers, one backfill.

As production runs it, on 127.0.0.1: Redis (Debian's ``redis-server``) as the Celery broker,
PostgreSQL as Airflow's metadata DB and Celery result backend, the API server, the
dag-processor and the scheduler, and two Celery workers. Each worker stands for a machine of
its own: its own temp, cache (so run lock) and log directories, its own copy of the dbt
project and its own host name in Airflow. They share what workers must share: the warehouse
(the tutorial's PostgreSQL target) and the state store (S3, moto's server over HTTP).

A backfill of three daily intervals runs with all three DAG runs active at once. Only the
lease in the S3 state store can keep their dbt builds apart, so the checks are that:

- the builds took turns (no two dbt builds at the same time), and a waiting run said whom it
  waited for in its task log;
- every interval's row of ``fct_daily_revenue`` holds what its data says;
- the state holds every run's updates: what the first run rebuilt is recorded as its, the
  later runs reused it, and the interval model is recorded as built by the last run.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.airflow_deployment import Deployment, scheduler_env
from support.airflow_env import AirflowEnv, free_port
from support.postgres import PgServer
from support.redis_server import RedisUnavailable, redis_server
from support.s3_server import MotoS3Server
from support.tutorial import REPO, Baseline, Workspace, short, tree_digest

from airflow_provider_orchestra_dbt.engine.config import DbtRunConfig
from airflow_provider_orchestra_dbt.engine.session import lease_name
from airflow_provider_orchestra_dbt.state import S3StateStore
from airflow_provider_orchestra_dbt.state.lease import Lease

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TUTORIAL = "orchestra_dbt_tutorial"
CONN_ID = "orchestra_state"
STATE_KEY = "dbt/state.json"
WORKERS = ("worker-a", "worker-b")
BACKFILL = ("2026-01-03", "2026-01-05")  # three daily intervals
LANDED_DAYS = tuple(f"2026-01-0{day}" for day in range(2, 8))
ORDERS_PER_DAY = 2
GATE = "the test's gate"
METADATA_DB = "airflow_celery"
BACKFILL_TIMEOUT = 600.0
ORDERS_CHAIN = {"stg_orders", "int_orders_enriched", "fct_orders"}
# Airflow reports a task's host through [core] hostname_callable: on one machine both
# workers would say the same, so each names itself from its environment.
HOSTNAME_MODULE = """\
import os
import socket


def worker_name() -> str:
    return os.environ.get("ORCHESTRA_TEST_WORKER") or socket.getfqdn()
"""


@dataclass
class CeleryDeployment(Deployment):
    """The deployment on a PostgreSQL metadata DB, with the tutorial's workspace."""

    pg: PgServer = field(kw_only=True)
    ws: Workspace = field(kw_only=True)
    s3: Any = field(kw_only=True)
    worker_dirs: dict[str, Path] = field(default_factory=dict)

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        conn = self.pg.connect(METADATA_DB)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), tuple(params))
                return list(cursor.fetchall())
        finally:
            conn.close()

    def task_log(self, run_id: str, task_id: str = "dbt_build") -> str:
        """The task's log, from whichever worker ran it (logs stay on the worker's machine)."""
        found = [
            path.read_text(errors="replace")
            for worker_dir in self.worker_dirs.values()
            for path in (worker_dir / "logs" / f"dag_id={TUTORIAL}" / f"run_id={run_id}").glob(
                f"task_id={task_id}/attempt=*.log"
            )
        ]
        return "\n".join(found)

    def xcom(self, run_id: str, key: str = "return_value") -> Any:
        rows = self.query(
            "select value from xcom where dag_id = ? and run_id = ? and task_id = 'dbt_build' "
            "and map_index = -1 and key = ?",
            (TUTORIAL, run_id, key),
        )
        assert rows, f"no XCom {key!r} for dbt_build in {run_id}"
        value = rows[0][0]
        return json.loads(value) if isinstance(value, str) else value

    def state(self) -> dict[str, dict[str, Any]]:
        body = self.s3.client().get_object(Bucket=self.s3.bucket, Key=STATE_KEY)["Body"].read()
        entries: dict[str, dict[str, Any]] = json.loads(body)["state"]
        return {short(e["unique_id"]): e for e in entries.values()}


def _log_events(log: str, contains: str) -> list[datetime]:
    """When the task log (JSON lines in Airflow 3) recorded a message containing ``contains``."""
    found = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and contains in str(record.get("event", "")):
            found.append(datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")))
    return found


def _dbt_window(log: str) -> tuple[datetime, datetime]:
    """From the run's first executed node to its saved state: inside the run's turn."""
    starts = _log_events(log, "planned nodes")  # "Executing N of M planned nodes"
    ends = _log_events(log, "state entries to")  # "Saved N state entries to ..."
    assert starts and ends, log[-3000:]
    return min(starts), max(ends)


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    try:
        with redis_server() as url:
            yield url
    except RedisUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Redis: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def celery(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_baseline: Baseline,
    pg_server: PgServer,
    s3_server: MotoS3Server,
    broker: str,
) -> Iterator[CeleryDeployment]:
    root = tmp_path_factory.mktemp("celery")
    ws = postgres_baseline.copy_to(root / "ws")
    assert ws.pg is not None
    # The state starts as the baseline's first build, in S3: the backfill plans on it.
    s3 = s3_server.create_bucket()
    s3.client().put_object(Bucket=s3.bucket, Key=STATE_KEY, Body=ws.state_file.read_bytes())
    ws.state_file.unlink()
    logs = root / "logs"
    logs.mkdir()

    pg_server.recreate(METADATA_DB)
    auth = urllib.parse.quote(pg_server.user, safe="")
    if pg_server.password:
        auth += ":" + urllib.parse.quote(pg_server.password, safe="")
    db_url = f"postgresql+psycopg2://{auth}@{pg_server.host}:{pg_server.port}/{METADATA_DB}"
    connection = {
        "conn_type": "orchestra_dbt",
        "login": s3.aws_access_key_id,
        "extra": {
            "backend": "s3",
            "state_uri": f"s3://{s3.bucket}/{STATE_KEY}",
            "endpoint_url": s3.endpoint_url,
            "region_name": s3.region_name,
            "aws_secret_access_key": s3.aws_secret_access_key,
        },
    }
    api_port = free_port()
    env = AirflowEnv(root / "airflow")
    extra = (
        ws.pg.env()
        | scheduler_env(api_port)
        | {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "orchestra_test_hostname.worker_name",
            "ORCHESTRA_DBT_TUTORIAL_DIR": str(ws.project),
            "ORCHESTRA_DBT_TUTORIAL_TARGET": "postgres",
            "ORCHESTRA_DBT_TUTORIAL_CONN_ID": CONN_ID,
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(connection),
        }
    )
    (env.home / "config").mkdir()
    (env.home / "config" / "orchestra_test_hostname.py").write_text(HOSTNAME_MODULE)
    env.add_dag(
        "orchestra_dbt_tutorial.py", (REPO / "dags" / "orchestra_dbt_tutorial.py").read_text()
    )
    deployment = CeleryDeployment(env=env, extra=extra, logs=logs, pg=pg_server, ws=ws, s3=s3)
    migrate = env.airflow("db", "migrate", extra_env=extra, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-4000:]
    try:
        deployment.start("dag-processor", "dag-processor")
        deployment.start("scheduler", "scheduler", "--skip-serve-logs")
        for name in WORKERS:
            machine = root / name
            for sub in ("tmp", "cache", "logs"):
                (machine / sub).mkdir(parents=True)
            shutil.copytree(ws.project, machine / "project")
            deployment.worker_dirs[name] = machine
            # One task at a time each, so that runs overlap only across the two workers.
            deployment.start(
                name, "celery", "worker", "--celery-hostname", f"{name}@%h",
                "--concurrency", "1", "--skip-serve-logs", "--without-mingle", "--without-gossip",
                extra_env={
                    "ORCHESTRA_TEST_WORKER": name,
                    "TMPDIR": str(machine / "tmp"),
                    "ORCHESTRA_DBT_CACHE_DIR": str(machine / "cache"),
                    "ORCHESTRA_DBT_PICTURE_DIR": str(machine / "pictures"),
                    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(machine / "logs"),
                    "ORCHESTRA_DBT_TUTORIAL_DIR": str(machine / "project"),
                },
            )  # fmt: skip
        deployment.start_api_server(api_port)
        deployment.wait_parsed({TUTORIAL})
        yield deployment
    finally:
        deployment.stop()


def test_backfill_on_two_celery_workers_takes_turns_and_keeps_every_update(
    celery: CeleryDeployment,
) -> None:
    d = celery
    digests = {name: tree_digest(path / "project") for name, path in d.worker_dirs.items()}
    # New orders on every day around the backfill: the first run in turn must rebuild the
    # orders chain, the others plan on what it built; each run re-aggregates its own day.
    landed = [
        f"({n}, 1, date '{day}', 'completed', now())"
        for day in LANDED_DAYS
        for n in range(ORDERS_PER_DAY)
    ]
    d.ws.sql(
        "insert into raw.orders (id, customer_id, order_date, status, _loaded_at) "
        "select (select max(id) from raw.orders) + row_number() over (), c, d, s, t "
        f"from (values {', '.join(landed)}) as v(n, c, d, s, t)"
    )

    # The test holds the runs' lease while they start, so that two of them (one per worker)
    # are known to wait for it at once; then it lets go and they race.
    config = DbtRunConfig.create(
        project_dir=d.ws.project, profiles_dir=d.ws.project, target="postgres"
    )
    gate = Lease(
        S3StateStore(d.s3.bucket, STATE_KEY, **d.s3.store_kwargs()),
        lease_name(config),
        holder={"pid": os.getpid(), "host": "test-host", "since": "", "label": GATE},
    )
    assert gate.try_acquire()
    lost: list[str] = []
    gate.start_heartbeat(lost.append)
    try:
        # Unpaused, the DAG also gets its latest scheduled run (catchup is off): a fourth run
        # of the same project and target, as a scheduled run beside a backfill would be.
        d.cli("dags", "unpause", TUTORIAL)
        d.cli(
            "backfill", "create", "--dag-id", TUTORIAL,
            "--from-date", BACKFILL[0], "--to-date", BACKFILL[1], "--max-active-runs", "3",
        )  # fmt: skip

        def both_workers_wait() -> bool:
            rows = d.query(
                "select run_id from task_instance where dag_id = ? and task_id = 'dbt_build' "
                "and state = 'running'",
                (TUTORIAL,),
            )
            return sum(f"({GATE})" in d.task_log(r) for (r,) in rows) == len(WORKERS)

        d.wait(both_workers_wait, BACKFILL_TIMEOUT, "a dbt build on each worker to wait")
        assert not lost, lost
    finally:
        gate.release()

    def finished() -> list[tuple[Any, ...]] | None:
        rows = d.query(
            "select run_id, run_type, state, data_interval_start from dag_run "
            "where dag_id = ? order by id",
            (TUTORIAL,),
        )
        types = [row[1] for row in rows]
        done = all(row[2] in ("success", "failed") for row in rows)
        return rows if done and types.count("backfill") == 3 and "scheduled" in types else None

    rows = d.wait(finished, BACKFILL_TIMEOUT, "the backfill and the scheduled run to finish")
    runs = [str(row[0]) for row in rows]
    for run_id, _, state, _ in rows:
        assert state == "success", d.task_log(run_id)[-6000:]
    days = sorted(row[3].date().isoformat() for row in rows if row[1] == "backfill")
    assert set(days) <= set(LANDED_DAYS), days

    # Both "machines" ran dbt builds (else nothing here crossed machines).
    hosts = d.query(
        "select hostname from task_instance where dag_id = ? and task_id = 'dbt_build'",
        (TUTORIAL,),
    )
    assert {h for (h,) in hosts} == set(WORKERS), hosts

    # No two dbt builds at the same time, and the turns are visible in the logs.
    logs = {run_id: d.task_log(run_id) for run_id in runs}
    windows = sorted((*_dbt_window(logs[r]), r) for r in runs)
    for (_, end, before), (start, _, after) in itertools.pairwise(windows):
        assert end <= start, f"the dbt builds of {before} and {after} overlapped: {windows}"
    # Of the two that waited for the test, one then waited for the other, and said so.
    waited_for_run = [
        (waiter, holder)
        for waiter, log in logs.items()
        for line in log.splitlines()
        if "for the lease of" in line and "held by" in line
        for holder in runs
        if holder != waiter and f"run_id={holder}" in line
    ]
    assert waited_for_run, [log[-3000:] for log in logs.values() if f"({GATE})" in log]

    # The first run in turn rebuilt the orders chain (new rows); the later ones reused it.
    order = [r for _, _, r in windows]
    built = {r: {short(u) for u in d.xcom(r)["built"]} for r in runs}
    assert ORDERS_CHAIN | {"fct_daily_revenue"} <= built[order[0]], built
    for later in order[1:]:
        assert built[later] == {"fct_daily_revenue"}, (later, built)

    # Every interval holds its data: the landed orders, aggregated from the rebuilt chain.
    within = "order_date in (" + ", ".join(f"'{day}'" for day in days) + ")"
    revenue = {
        str(day): (int(count), amount)
        for day, count, amount in d.ws.sql(
            "select order_date, order_count, revenue from analytics.fct_daily_revenue "
            f"where {within}"
        )
    }
    expected = {
        str(day): (int(count), amount)
        for day, count, amount in d.ws.sql(
            "select order_date, count(*), sum(total_amount) from analytics.int_orders_enriched "
            f"where status <> 'returned' and {within} group by order_date"
        )
    }
    assert revenue == expected and set(revenue) == set(days), (revenue, expected)
    assert all(count == ORDERS_PER_DAY for count, _ in revenue.values()), revenue

    # The state holds every run's updates: each node as its last builder recorded it.
    state = d.state()
    for name in ORDERS_CHAIN:
        assert state[name]["run"]["run_id"] == order[0], (name, state[name]["run"])
    assert state["fct_daily_revenue"]["run"]["run_id"] == order[-1]
    assert state["fct_daily_revenue"]["status"] == "success"
    for name, machine in d.worker_dirs.items():
        assert tree_digest(machine / "project") == digests[name], f"{name} changed the project"
