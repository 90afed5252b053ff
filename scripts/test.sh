#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, types, then every test
# (unit, and integration on real dbt-duckdb and Airflow). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export UV_PYTHON_DOWNLOADS=never
# With PYTHONDONTWRITEBYTECODE set (as on CI's machines), every process the tests start (a dbt
# worker per run, each Airflow CLI call) compiled dbt's and Airflow's modules from source again:
# about half the CPU of a run. Python caches bytecode for this run instead, in a temp dir of its
# own, so nothing is written next to the sources (the tutorial must stay untouched).
pycache=
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  pycache=$(mktemp -d -t orchestra-dbt-pycache-XXXXXX)
  trap 'rm -rf "$pycache"' EXIT
  export PYTHONPYCACHEPREFIX=$pycache
  unset PYTHONDONTWRITEBYTECODE
fi
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --all-extras --quiet

# The connection-form test drives Debian's Chromium (no browser download from elsewhere).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium for the browser test..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# The multi-worker test runs Celery on Debian's Redis (its own server on a free port).
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's redis-server for the Celery multi-worker test..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# The reuse cases also run on the tutorial's postgres target: the tests start (and stop) a
# throwaway cluster on 127.0.0.1 from Debian's server binaries, unless ORCHESTRA_TEST_PG_HOST
# names an existing server. Only the binaries are wanted: the drop-in stops the package from
# creating (and so starting) Debian's own "main" cluster, and goes once the package is in.
if [ -z "${ORCHESTRA_TEST_PG_HOST:-}" ] \
  && ! ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's postgresql for the postgres-target tests..."
  apt-get update -qq
  no_main=/etc/postgresql-common/createcluster.d/orchestra-dbt-tests-no-main-cluster.conf
  mkdir -p "$(dirname "$no_main")"
  echo "create_main_cluster = false" >"$no_main"
  installed=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || installed=$?
  rm -f "$no_main"
  [ "$installed" = 0 ] || exit "$installed"
fi

lint() {
  uv run --frozen ruff check . && uv run --frozen ruff format --check . \
    && uv run --frozen mypy airflow_provider_orchestra_dbt
}

# With no arguments, three pytest sessions share the machine's two cores (they share nothing
# else: each has its own temp dir, warehouses and PostgreSQL cluster), about equally long:
#   * Airflow end to end (scheduler, `dags test` of both operators, the README's commands)
#     on the newest dbt (the lock's default environment);
#   * the unit tests and every other integration test on the newest dbt: the reuse cases on
#     DuckDB and PostgreSQL, commands, dbt 1.12 features, freshness, the partial-parse cache,
#     bad input, state stores and remote state end to end, the fake dbt Cloud, a separate
#     dbt interpreter, the Celery multi-worker test;
#   * on the oldest dbt we support (dbt-core 1.10), in a second environment from the same
#     lock, on the newest Python the machine has: the worker's unit tests and the DuckDB
#     reuse cases that read what differs between dbt versions (manifest, macros, vars,
#     seeds, test results, build_after); and, since they do not depend on dbt's version, the
#     crash probes, concurrent runs and locks (on PostgreSQL too), foreign writers, the two
#     browser tests, the S3 store's races and the state-aware dbt Cloud sequence (whose fake
#     dbt Cloud then runs dbt 1.10's artifacts), which run in this session only.
# The split follows measured times (CPU and waits), so that the three end together.
if [ "$#" -gt 0 ] || [ "${ORCHESTRA_TEST_OLDEST_DBT:-1}" = 0 ]; then
  lint
  status=0
  uv run --frozen pytest "$@" || status=$?
  exit "$status"
fi
oldest_env=.venv-dbt-oldest
oldest_python=$(uv python find 3.13 2>/dev/null \
  || ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 2>/dev/null | tail -n 1 \
  || true)
[ -n "$oldest_python" ] || oldest_python=$(uv python find)
logs=$(mktemp -d)
trap 'rm -rf "$logs" "$pycache"' EXIT

first=(test_scheduler_backfill.py test_operator_airflow.py test_dbt_cloud_operator_airflow.py
  test_readme_commands.py)
oldest_only=(test_crash_safety.py test_concurrent_runs.py test_warehouse_lock_runs.py
  test_run_lease.py test_foreign_writers.py test_airflow_ui.py test_connection_form.py
  test_state_s3.py test_dbt_cloud_state_aware.py)
uv run --frozen pytest -p no:cacheprovider --durations=15 --basetemp "$logs/first" \
  "${first[@]/#/tests/integration/}" >"$logs/first.log" 2>&1 &
first_pid=$!
# The second environment while the first session runs: one process on one core.
UV_PROJECT_ENVIRONMENT=$oldest_env uv sync --frozen --all-extras --quiet --python "$oldest_python" \
  --no-group dbt-newest --group dbt-oldest
oldest_duckdb="editing_a_macro or changing_a_var or changing_a_seed or failing_error_test"
oldest_reuse="duckdb and (first_run or second_run or new_rows_in_one_source"
oldest_reuse+=" or $oldest_duckdb or build_after)"
"$oldest_env/bin/python" -m pytest -p no:cacheprovider --durations=15 --basetemp "$logs/oldest" \
  tests/unit/worker tests/unit/decisions tests/unit/execution tests/unit/presentation tests/integration/test_reuse.py \
  tests/integration/test_commands.py tests/integration/test_parse_cache.py \
  "${oldest_only[@]/#/tests/integration/}" \
  -k "not test_reuse or $oldest_reuse" >"$logs/oldest.log" 2>&1 &
oldest_pid=$!
# Lint and types run beside the second session rather than before it: waiting for them
# would put a minute on the longest session's path.
lint >"$logs/lint.log" 2>&1 &
lint_pid=$!
status=0
uv run --frozen pytest -p no:cacheprovider --durations=15 --basetemp "$logs/second" \
  tests/unit tests/integration \
  "${first[@]/#/--ignore=tests/integration/}" "${oldest_only[@]/#/--ignore=tests/integration/}" \
  || status=1
wait "$lint_pid" || status=1
echo "=== lint and types ==="
cat "$logs/lint.log"
wait "$first_pid" || status=1
cat "$logs/first.log"
wait "$oldest_pid" || status=1
oldest_dbt=$("$oldest_env/bin/python" -c \
  'import dbt.version, sys; print(f"dbt-core {dbt.version.__version__}, Python {sys.version.split()[0]}")')
echo "=== on the oldest dbt ($oldest_dbt): worker, reuse cases, processes and locks, browser, S3 ==="
cat "$logs/oldest.log"
exit "$status"
