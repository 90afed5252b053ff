"""Keep every test run away from the user's Airflow home and dbt cache."""

from __future__ import annotations

import os
import shutil
import tempfile

# What pytest_configure made, removed when the session ends (a session that crashes leaves
# them in the temp dir, where they do no harm).
_MADE: list[str] = []


def _temp_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    _MADE.append(path)
    return path


def pytest_configure() -> None:
    # Before anything imports Airflow: its config and SQLite DB land in a throwaway home.
    os.environ["AIRFLOW_HOME"] = _temp_dir("orchestra-dbt-tests-airflow-")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # Tokens the plugin tests sign: a key as long as SHA-512 wants, so PyJWT does not warn.
    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "orchestra-dbt-tests-" + "k" * 64)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    if "ORCHESTRA_DBT_CACHE_DIR" not in os.environ:
        os.environ["ORCHESTRA_DBT_CACHE_DIR"] = _temp_dir("orchestra-dbt-tests-cache-")


def pytest_unconfigure() -> None:
    for path in _MADE:
        shutil.rmtree(path, ignore_errors=True)
