from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tutorial import Baseline, Workspace


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
