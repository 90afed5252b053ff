#!/usr/bin/env bash
# Run the tutorial DAG end to end on the embedded defaults: DuckDB warehouse, local-file state,
# Airflow's SQLite database. No server to start. Safe to run again: the second run reuses.
# Everything it writes goes under AIRFLOW_HOME (default .airflow/, git-ignored).
set -euo pipefail
started_in=$PWD
# Settings given by the caller are repeated in the closing hint, so that it reruns on the same
# Airflow home and warehouse even when they were set for this one command only.
given=()
for name in AIRFLOW_HOME TUTORIAL_DUCKDB_PATH; do
  [[ -z "${!name:-}" ]] || given+=("$name")
done
# shellcheck source=scripts/tutorial-env.sh
source "$(dirname "$0")/tutorial-env.sh"
rerun_env=""
for name in ${given[@]+"${given[@]}"}; do
  rerun_env+="$name=$(printf '%q' "${!name}") "
done
state_file="${ORCHESTRA_DBT_STATE_FILE:-$AIRFLOW_HOME/orchestra_dbt/state.json}"

tutorial_deploy

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
run_dag "nothing changed since run $runs, so every model is reused (but one whose build_after wait has run out since)"

echo "State: $state_file  Warehouse: $TUTORIAL_DUCKDB_PATH"
warehouse=${TUTORIAL_DUCKDB_PATH#"$repo/"}
hint="TUTORIAL_DUCKDB_PATH=$(printf '%q' "$warehouse") uv run python tutorial/land_data.py"
hint+=" --source orders && ${rerun_env}bash scripts/tutorial.sh"
[[ "$started_in" == "$repo" ]] || hint="cd $(printf '%q' "$repo") && $hint"
echo "Try: $hint"
