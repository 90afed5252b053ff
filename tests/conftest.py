"""Keep every test run away from the user's Airflow home and dbt cache."""

from __future__ import annotations

import os
import tempfile


def pytest_configure() -> None:
    # Before anything imports Airflow: its config and SQLite DB land in a throwaway home.
    home = tempfile.mkdtemp(prefix="orchestra-dbt-tests-airflow-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # Tokens the plugin tests sign: a key as long as SHA-512 wants, so PyJWT does not warn.
    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "orchestra-dbt-tests-" + "k" * 64)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault(
        "ORCHESTRA_DBT_CACHE_DIR", tempfile.mkdtemp(prefix="orchestra-dbt-tests-cache-")
    )
