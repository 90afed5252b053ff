#!/usr/bin/env bash
# Run the tutorial DAG end to end on the embedded defaults: DuckDB warehouse, local-file state,
# Airflow's SQLite database. No server to start. Safe to run again: the second run reuses.
set -euo pipefail
cd "$(dirname "$0")/.."

export UV_PYTHON_DOWNLOADS=never
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --extra duckdb --quiet

export AIRFLOW_HOME="${AIRFLOW_HOME:-$PWD/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export TUTORIAL_DUCKDB_PATH="${TUTORIAL_DUCKDB_PATH:-$AIRFLOW_HOME/tutorial.duckdb}"
export ORCHESTRA_DBT_TUTORIAL_MANIFEST="$AIRFLOW_HOME/orchestra_dbt/tutorial-target/manifest.json"
mkdir -p "$AIRFLOW_HOME"

# Deploy step: a manifest lets the DAG declare one Airflow Asset per model when it is parsed.
# Artifacts go under AIRFLOW_HOME, never into the project.
target_dir="$(dirname "$ORCHESTRA_DBT_TUTORIAL_MANIFEST")"
DBT_SEND_ANONYMOUS_USAGE_STATS=false uv run --frozen dbt parse --quiet \
  --project-dir tutorial --profiles-dir tutorial \
  --target-path "$target_dir" --log-path "$target_dir/logs"

uv run --frozen airflow db migrate >/dev/null
echo "== run 1: builds what is new or changed (everything, the first time)"
uv run --frozen airflow dags test orchestra_dbt_tutorial
echo "== run 2: nothing changed, so every model is reused"
uv run --frozen airflow dags test orchestra_dbt_tutorial
echo "State: $AIRFLOW_HOME/orchestra_dbt/state.json  Warehouse: $TUTORIAL_DUCKDB_PATH"
echo "Try: uv run python tutorial/land_data.py --source orders && bash scripts/tutorial.sh"
