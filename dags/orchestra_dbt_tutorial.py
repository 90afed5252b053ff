"""Tutorial: the tutorial dbt project run by OrchestraDbtOperator on the embedded defaults.

DuckDB warehouse, local-file state, no server. Run it twice and the second run reuses every
model; land new rows with ``TUTORIAL_DUCKDB_PATH=.airflow/tutorial.duckdb uv run python
tutorial/land_data.py --source orders`` (the hint ``scripts/tutorial.sh`` prints) and only the
models downstream of ``raw.orders`` are rebuilt. Each run passes its data interval to
``fct_daily_revenue``, so a backfill rebuilds that model once per interval and reuses the
rest. Rebuilt models emit Asset events (see ``orchestra_dbt_consumer.py``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import (
    DbtTaskOutputs,
    OrchestraDbtOperator,
)

TUTORIAL_DIR = Path(
    os.environ.get("ORCHESTRA_DBT_TUTORIAL_DIR", Path(__file__).resolve().parents[1] / "tutorial")
)
# Written by `dbt parse` at deploy time (scripts/tutorial.sh); read when this file is parsed
# to declare one Asset per model.
MANIFEST = os.environ.get("ORCHESTRA_DBT_TUTORIAL_MANIFEST") or None
# A run's data interval; runs without a logical date (triggered from the UI or the API) have
# none and fall back to the day before their run_after.
INTERVAL_START = (
    "{{ (dag_run.data_interval_start or dag_run.run_after - macros.timedelta(days=1)) | ds }}"
)
INTERVAL_END = "{{ (dag_run.data_interval_end or dag_run.run_after) | ds }}"

with DAG(
    dag_id="orchestra_dbt_tutorial",
    # Daily data intervals ([day, next day)): Airflow 3's plain "@daily" has zero-width ones.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Parallel runs (e.g. a backfill) are fine: the operator runs one dbt build of this
    # project and target at a time on a machine, and the next one reuses what it built.
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
        vars={"data_interval_start": INTERVAL_START, "data_interval_end": INTERVAL_END},
        # Without a connection the state lives in $AIRFLOW_HOME/orchestra_dbt/state.json.
        state_conn_id=os.environ.get("ORCHESTRA_DBT_TUTORIAL_CONN_ID") or None,
        outputs=DbtTaskOutputs(manifest_path=MANIFEST),
    )

    land_raw_data() >> dbt_build
