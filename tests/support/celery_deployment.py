"""The tutorial DAG on a multi-worker Airflow: CeleryExecutor and one or more Celery workers.

As production runs it, on 127.0.0.1: Redis as the Celery broker (its URL comes in), PostgreSQL
as Airflow's metadata DB and Celery result backend, the API server, the dag-processor and the
scheduler, and the Celery workers. Each worker stands for a machine of its own: its own temp,
cache (so run lock) and log directories, its own copy of the dbt project and its own host name
in Airflow. They share what workers must share: the warehouse (the tutorial's PostgreSQL
target) and the state store (an S3 bucket, moto's server over HTTP).

Used by ``tests/integration/test_celery_workers.py`` (two workers) and ``bench/backfill.py``
(one worker against two).
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from support.airflow_deployment import Deployment, scheduler_env
from support.airflow_env import AirflowEnv, free_port
from support.postgres import PgServer
from support.s3_server import S3Params
from support.tutorial import REPO, Baseline, Workspace, short

TUTORIAL = "orchestra_dbt_tutorial"
CONN_ID = "orchestra_state"
STATE_KEY = "dbt/state.json"
WORKERS = ("worker-a", "worker-b")
METADATA_DB = "airflow_celery"
MIGRATE_TIMEOUT = 300
# Airflow reports a task's host through [core] hostname_callable: on one machine all workers
# would say the same, so each names itself from its environment.
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
    s3: S3Params = field(kw_only=True)
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

    def land_orders(self, days: Sequence[str], per_day: int) -> None:
        """``per_day`` new completed orders on each of ``days`` in ``raw.orders``."""
        landed = [
            f"({n}, 1, date '{day}', 'completed', now())" for day in days for n in range(per_day)
        ]
        self.ws.sql(
            "insert into raw.orders (id, customer_id, order_date, status, _loaded_at) "
            "select (select max(id) from raw.orders) + row_number() over (), c, d, s, t "
            f"from (values {', '.join(landed)}) as v(n, c, d, s, t)"
        )


def log_events(log: str, contains: str) -> list[datetime]:
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


def dbt_window(log: str) -> tuple[datetime, datetime]:
    """From the run's first executed node to its saved state: inside the run's turn."""
    starts = log_events(log, "planned nodes")  # "Executing N of M planned nodes"
    ends = log_events(log, "state entries to")  # "Saved N state entries to ..."
    assert starts and ends, log[-3000:]
    return min(starts), max(ends)


def _metadata_url(pg: PgServer) -> str:
    auth = urllib.parse.quote(pg.user, safe="")
    if pg.password:
        auth += ":" + urllib.parse.quote(pg.password, safe="")
    return f"postgresql+psycopg2://{auth}@{pg.host}:{pg.port}/{METADATA_DB}"


def _state_connection(s3: S3Params) -> dict[str, Any]:
    """The Airflow connection the DAG's operator reads its S3 state store from."""
    return {
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


def _start_worker(deployment: CeleryDeployment, root: Path, name: str) -> None:
    """A Celery worker as a machine of its own: its own dirs, project copy and host name."""
    machine = root / name
    for sub in ("tmp", "cache", "logs"):
        (machine / sub).mkdir(parents=True)
    shutil.copytree(deployment.ws.project, machine / "project")
    deployment.worker_dirs[name] = machine
    # One task at a time each, so that runs overlap only across workers.
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


@contextmanager
def celery_deployment(
    root: Path,
    baseline: Baseline,
    pg_server: PgServer,
    s3: S3Params,
    broker_url: str,
    workers: Sequence[str] = WORKERS,
) -> Iterator[CeleryDeployment]:
    """Start the deployment in directory ``root`` (created if need be; ``ws``, ``logs``,
    ``airflow`` and one directory per worker go in it) and stop it on the way out, whatever
    happened; removing ``root`` is the caller's.

    Fresh every time: the warehouse is reset from the baseline's template, the metadata DB
    ``METADATA_DB`` is recreated empty and the state starts as the baseline's first build in
    ``s3`` (an empty bucket). The tutorial DAG is parsed and paused when this yields.
    """
    root.mkdir(parents=True, exist_ok=True)
    ws = baseline.copy_to(root / "ws")
    assert ws.pg is not None, "the Celery deployment needs the postgres baseline"
    # The state starts as the baseline's first build, in S3: runs plan on it.
    s3.client().put_object(Bucket=s3.bucket, Key=STATE_KEY, Body=ws.state_file.read_bytes())
    ws.state_file.unlink()
    logs = root / "logs"
    logs.mkdir()

    pg_server.recreate(METADATA_DB)
    db_url = _metadata_url(pg_server)
    api_port = free_port()
    env = AirflowEnv(root / "airflow")
    extra = (
        ws.pg.env()
        | scheduler_env(api_port)
        | {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "orchestra_test_hostname.worker_name",
            "ORCHESTRA_DBT_TUTORIAL_DIR": str(ws.project),
            "ORCHESTRA_DBT_TUTORIAL_TARGET": "postgres",
            "ORCHESTRA_DBT_TUTORIAL_CONN_ID": CONN_ID,
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(_state_connection(s3)),
        }
    )
    (env.home / "config").mkdir()
    (env.home / "config" / "orchestra_test_hostname.py").write_text(HOSTNAME_MODULE)
    env.add_dag(
        "orchestra_dbt_tutorial.py", (REPO / "dags" / "orchestra_dbt_tutorial.py").read_text()
    )
    deployment = CeleryDeployment(env=env, extra=extra, logs=logs, pg=pg_server, ws=ws, s3=s3)
    migrate = env.airflow("db", "migrate", extra_env=extra, timeout=MIGRATE_TIMEOUT)
    assert migrate.returncode == 0, migrate.stdout[-4000:]
    try:
        deployment.start("dag-processor", "dag-processor")
        deployment.start("scheduler", "scheduler", "--skip-serve-logs")
        for name in workers:
            _start_worker(deployment, root, name)
        deployment.start_api_server(api_port)
        deployment.wait_parsed({TUTORIAL})
        yield deployment
    finally:
        deployment.stop()
