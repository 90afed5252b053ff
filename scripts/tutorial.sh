#!/usr/bin/env bash
# Run the tutorial DAG end to end on the embedded defaults: DuckDB warehouse, local-file state,
# Airflow's SQLite database. No server to start. Safe to run again: the second run reuses.
# Everything it writes goes under AIRFLOW_HOME (default .airflow/, git-ignored).
set -euo pipefail
started_in=$PWD
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s' "$started_in/$1" ;; esac; }
# Settings given by the caller are repeated in the closing hint, so that it reruns on the same
# Airflow home and warehouse even when they were set for this one command only.
rerun_env=""
for name in AIRFLOW_HOME TUTORIAL_DUCKDB_PATH; do
  if [[ -n "${!name:-}" ]]; then
    export "$name=$(absolute "${!name}")"
    rerun_env+="$name=$(printf '%q' "${!name}") "
  fi
done
cd "$(dirname "$0")/.."
repo=$PWD

export UV_PYTHON_DOWNLOADS=never
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --extra duckdb --quiet

export AIRFLOW_HOME="${AIRFLOW_HOME:-$repo/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$repo/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# Airflow's own `dags test` command warns when the optional graphviz package is missing; the
# tutorial never draws a graph with it.
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Could not import graphviz:UserWarning"
# Absolute: dbt reads a relative path from the project directory, land_data.py from the
# working directory.
export TUTORIAL_DUCKDB_PATH="${TUTORIAL_DUCKDB_PATH:-$AIRFLOW_HOME/tutorial.duckdb}"
export ORCHESTRA_DBT_TUTORIAL_MANIFEST="$AIRFLOW_HOME/orchestra_dbt/tutorial-target/manifest.json"
state_file="${ORCHESTRA_DBT_STATE_FILE:-$AIRFLOW_HOME/orchestra_dbt/state.json}"
mkdir -p "$AIRFLOW_HOME"

# Deploy step: a manifest lets the DAG declare one Airflow Asset per model when it is parsed.
# Artifacts go under AIRFLOW_HOME, never into the project.
target_dir="$(dirname "$ORCHESTRA_DBT_TUTORIAL_MANIFEST")"
DBT_SEND_ANONYMOUS_USAGE_STATS=false uv run --frozen dbt parse --quiet \
  --project-dir tutorial --profiles-dir tutorial \
  --target-path "$target_dir" --log-path "$target_dir/logs"

uv run --frozen airflow db migrate >/dev/null

# Runs are numbered across invocations of this script, so a second invocation does not call
# its runs "run 1" again.
runs_file="$AIRFLOW_HOME/tutorial_runs"
runs=$(cat "$runs_file" 2>/dev/null || true)
[[ "$runs" =~ ^[0-9]+$ ]] || runs=0
run_dag() {
  runs=$((runs + 1))
  echo "$runs" >"$runs_file"
  echo "== run $runs: $1"
  uv run --frozen airflow dags test orchestra_dbt_tutorial
}

# Whether anything was built before is the state's to say, not the counter's (the DAG may
# have run outside this script, or the state may have been deleted).
if [[ -z "${ORCHESTRA_DBT_TUTORIAL_CONN_ID:-}" && ! -s "$state_file" ]]; then
  run_dag "no state recorded yet, so everything is built"
else
  run_dag "builds only what is new or changed since the state was last saved"
fi
run_dag "nothing changed since run $runs, so every model is reused"

echo "State: $state_file  Warehouse: $TUTORIAL_DUCKDB_PATH"
warehouse=${TUTORIAL_DUCKDB_PATH#"$repo/"}
hint="TUTORIAL_DUCKDB_PATH=$(printf '%q' "$warehouse") uv run python tutorial/land_data.py"
hint+=" --source orders && ${rerun_env}bash scripts/tutorial.sh"
[[ "$started_in" == "$repo" ]] || hint="cd $(printf '%q' "$repo") && $hint"
echo "Try: $hint"
