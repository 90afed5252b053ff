"""Tutorial: the tutorial dbt project run by OrchestraDbtOperator on the embedded defaults.

DuckDB warehouse, local-file state, no server. Run it twice and the second run reuses every
model; land new rows with ``python tutorial/land_data.py --source orders`` and only the
models downstream of ``raw.orders`` are rebuilt.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator

TUTORIAL_DIR = Path(
    os.environ.get("ORCHESTRA_DBT_TUTORIAL_DIR", Path(__file__).resolve().parents[1] / "tutorial")
)

with DAG(
    dag_id="orchestra_dbt_tutorial",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["dbt", "orchestra", "tutorial"],
    doc_md=__doc__,
):

    @task
    def land_raw_data() -> None:
        """Create the raw source tables on first use (stands in for an ingestion tool)."""
        spec = importlib.util.spec_from_file_location("land_data", TUTORIAL_DIR / "land_data.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.init_raw(os.environ.get("ORCHESTRA_DBT_TUTORIAL_TARGET", "duckdb"))

    dbt_build = OrchestraDbtOperator(
        task_id="dbt_build",
        project_dir=TUTORIAL_DIR,
        profiles_dir=TUTORIAL_DIR,
        target=os.environ.get("ORCHESTRA_DBT_TUTORIAL_TARGET", "duckdb"),
        # Without a connection the state lives in $AIRFLOW_HOME/orchestra_dbt/state.json.
        state_conn_id=os.environ.get("ORCHESTRA_DBT_TUTORIAL_CONN_ID") or None,
    )

    land_raw_data() >> dbt_build
