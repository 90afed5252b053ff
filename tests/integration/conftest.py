from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

import pytest
from support import tutorial
from support.airflow_env import AirflowEnv
from support.forked_workers import ForkedWorkers
from support.postgres import PgServer, PostgresUnavailable, postgres_server
from support.redis_server import RedisUnavailable, redis_server
from support.s3_server import MotoS3Server
from support.tutorial import REPO, Baseline, PgDatabase, ProjectBaselines, Workspace

T = TypeVar("T")


@pytest.fixture(scope="session", autouse=True)
def _dbt_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep dbt's partial-parse cache out of the user's home during tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ORCHESTRA_DBT_CACHE_DIR", str(tmp_path_factory.mktemp("dbt-cache")))
    mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def _forked_workers() -> Iterator[ForkedWorkers]:
    workers = ForkedWorkers()
    yield workers
    workers.close()


@pytest.fixture(autouse=True)
def _worker_in_a_fork(
    request: pytest.FixtureRequest,
    _forked_workers: ForkedWorkers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workspace runs start their dbt worker as a fork of a process that imported dbt once
    (``support/forked_workers.py``): seconds of CPU less a run, hundreds of runs a session. The
    worker's code and protocol are the product's; what a fork cannot show (the process the
    product starts itself, dbt's import) is covered by tests marked ``real_worker_process``,
    and by every run outside ``Workspace.run`` (subprocess CLIs, Airflow).
    ORCHESTRA_TEST_FORKED_WORKERS=0 starts every worker as the product does."""
    forked = os.environ.get("ORCHESTRA_TEST_FORKED_WORKERS", "1") != "0"
    if forked and request.node.get_closest_marker("real_worker_process") is None:
        monkeypatch.setattr(tutorial, "worker_python", _forked_workers.launcher)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[MotoS3Server]:
    """An S3 endpoint on 127.0.0.1 (moto) for the module; tests make their own buckets."""
    with MotoS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """PostgreSQL for the postgres-target tests, set up the first time one of them runs.

    A throwaway cluster on 127.0.0.1, stopped at the end of the session whatever happened;
    or the existing server named by ORCHESTRA_TEST_PG_HOST/PORT/USER/PASSWORD (see
    support/postgres.py). Without either, the tests are skipped, but fail under CI.
    """
    yield from service_or_skip(postgres_server, PostgresUnavailable, "PostgreSQL")


@pytest.fixture(scope="module")
def redis_broker() -> Iterator[str]:
    """A Redis server on 127.0.0.1 for Celery; its URL. Skipped without Debian's redis-server
    (installed by scripts/test.sh as root), but fails under CI."""
    yield from service_or_skip(redis_server, RedisUnavailable, "Redis")


def service_or_skip(
    start: Callable[[], AbstractContextManager[T]], unavailable: type[Exception], what: str
) -> Iterator[T]:
    """What ``start`` yields; the tests skip when the service cannot run here (CI fails)."""
    try:
        with start() as service:
            yield service
    except unavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {what}: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def pg_database(pg_server: PgServer) -> Iterator[PgDatabase]:
    """The database postgres workspaces build into, and the template they are reset from."""
    # Our own cluster: the profile's default name. Someone else's server: a name of our own,
    # so that no database of theirs (say, the tutorial's) is dropped; removed afterwards.
    name = "tutorial" if pg_server.throwaway else f"orchestra_dbt_test_{os.getpid()}"
    database = PgDatabase(pg_server, name, f"{name}_baseline")
    yield database
    if not pg_server.throwaway:
        pg_server.drop(database.name, database.template)


@pytest.fixture(scope="session")
def duckdb_baseline(tmp_path_factory: pytest.TempPathFactory, _dbt_cache: None) -> Baseline:
    return Baseline(tmp_path_factory.mktemp("baseline"))


@pytest.fixture(scope="session")
def postgres_baseline(
    tmp_path_factory: pytest.TempPathFactory, _dbt_cache: None, pg_database: PgDatabase
) -> Baseline:
    return Baseline(tmp_path_factory.mktemp("baseline-postgres"), pg_database)


@pytest.fixture
def target() -> str:
    """The tutorial target ``baseline`` and ``ws`` use: DuckDB, unless a module parametrises
    ``target`` (``pytest.mark.parametrize("target", TARGETS)``, as test_reuse.py does)."""
    return "duckdb"


@pytest.fixture
def baseline(request: pytest.FixtureRequest, target: str) -> Baseline:
    # Looked up by name so that PostgreSQL starts only when a postgres test runs.
    built: Baseline = request.getfixturevalue(f"{target}_baseline")
    return built


@pytest.fixture
def ws(baseline: Baseline, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    # One path per target for every test's workspace: dbt's partial-parse cache is kept per
    # project path, so a stable path lets each run re-parse only what the test changed
    # (about 1.5 s of a 4 s run on the tutorial) instead of the whole project.
    root = tmp_path_factory.getbasetemp() / f"workspace-{baseline.target}"
    shutil.rmtree(root, ignore_errors=True)
    return baseline.copy_to(root)


@pytest.fixture(scope="module")
def project_baselines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProjectBaselines]:
    """Baselines of the test module's own project: its ``PROJECT``, raw data from its ``land``."""
    module = request.module
    projects = ProjectBaselines(module.PROJECT, module.land, tmp_path_factory, request)
    yield projects
    projects.close()


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> AirflowEnv:
    """One migrated Airflow home for the session, holding the tutorial DAG as shipped."""
    env = AirflowEnv.create(tmp_path_factory.mktemp("airflow"))
    # The DAG reads its project, warehouse and state from env vars (see tutorial_env).
    tutorial_dag = REPO / "dags" / "orchestra_dbt_tutorial.py"
    env.add_dag(tutorial_dag.name, tutorial_dag.read_text())
    return env
