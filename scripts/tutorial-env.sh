# The tutorial's settings, sourced by scripts/tutorial.sh and scripts/tutorial-ui.sh so that
# both run the same DAGs on the same Airflow home, warehouse and state.
#
# AIRFLOW_HOME and TUTORIAL_DUCKDB_PATH given by the caller may be relative to the directory
# it started in; they are made absolute here. Afterwards the working directory is the
# repository root, `repo` holds its path and the project's environment is in sync.

for name in AIRFLOW_HOME TUTORIAL_DUCKDB_PATH; do
  case "${!name:-}" in
    "" | /*) ;;
    *) export "$name=$PWD/${!name}" ;;
  esac
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

export UV_PYTHON_DOWNLOADS=never
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
# --inexact: a developer's other extras (the test suite's) stay installed.
uv sync --frozen --inexact --extra duckdb --quiet

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
mkdir -p "$AIRFLOW_HOME"

# Deploy step: a manifest lets the DAGs declare one Airflow Asset per model when they are
# parsed. Artifacts go under AIRFLOW_HOME, never into the project.
tutorial_deploy() {
  local target_dir
  target_dir="$(dirname "$ORCHESTRA_DBT_TUTORIAL_MANIFEST")"
  DBT_SEND_ANONYMOUS_USAGE_STATS=false uv run --frozen dbt parse --quiet \
    --project-dir tutorial --profiles-dir tutorial \
    --target-path "$target_dir" --log-path "$target_dir/logs"
  uv run --frozen airflow db migrate >/dev/null
}
