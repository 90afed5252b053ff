from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.airflow_env import AirflowEnv
from support.tutorial import REPO, Baseline, Workspace


@pytest.fixture(scope="session", autouse=True)
def _dbt_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep dbt's partial-parse cache out of the user's home during tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ORCHESTRA_DBT_CACHE_DIR", str(tmp_path_factory.mktemp("dbt-cache")))
    mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory, _dbt_cache: None) -> Baseline:
    return Baseline(tmp_path_factory.mktemp("baseline"))


@pytest.fixture
def ws(baseline: Baseline, tmp_path: Path) -> Workspace:
    return baseline.copy_to(tmp_path / "ws")


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> AirflowEnv:
    """One migrated Airflow home for the session, holding the tutorial DAG as shipped."""
    env = AirflowEnv.create(tmp_path_factory.mktemp("airflow"))
    # The DAG reads its project, warehouse and state from env vars (see tutorial_env).
    tutorial_dag = REPO / "dags" / "orchestra_dbt_tutorial.py"
    env.add_dag(tutorial_dag.name, tutorial_dag.read_text())
    return env
