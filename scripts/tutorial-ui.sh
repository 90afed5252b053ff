#!/usr/bin/env bash
# Open the Airflow UI on the tutorial: `airflow standalone` (api-server, scheduler,
# dag-processor, triggerer) with exactly the settings of scripts/tutorial.sh, so the UI shows
# the runs that script made, and runs started here build on the same warehouse and state.
# Listens on 127.0.0.1 only, port $TUTORIAL_UI_PORT (default 8080). Stop it with Ctrl-C.
set -euo pipefail
# shellcheck source=scripts/tutorial-env.sh
source "$(dirname "$0")/tutorial-env.sh"

port="${TUTORIAL_UI_PORT:-8080}"
if ! [[ "$port" =~ ^[0-9]+$ ]]; then
  echo "TUTORIAL_UI_PORT must be a port number, got '$port'" >&2
  exit 2
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "Something already listens on 127.0.0.1:$port. Stop it, or pick another port:" \
    "TUTORIAL_UI_PORT=8081 bash scripts/tutorial-ui.sh" >&2
  exit 1
fi
url="http://127.0.0.1:$port"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$port"
# Tasks report to the api-server's execution API; Airflow's default assumes port 8080.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$url/execution/"
# Login: Airflow's simple auth manager, user "admin". `airflow standalone` generates the
# password on its first start and keeps it in this file.
passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"

tutorial_deploy

# Airflow runs in a process group of its own (job control on while it starts), so that
# Ctrl-C reaches this script only and Airflow is stopped once, in order, by `stop_airflow`.
venv=$(uv run --frozen python -c 'import sys; print(sys.prefix)')
airflow_pid=""
announcer=""
stop_airflow() {
  # `airflow standalone` stops its components on SIGINT and waits for them. Whatever is still
  # running after a minute (or at a second Ctrl-C) is killed: nothing is left behind.
  trap 'kill -KILL -- "-$airflow_pid" 2>/dev/null || true' INT
  if kill -0 "$airflow_pid" 2>/dev/null; then
    echo "== Stopping Airflow: running tasks get up to a minute to finish; Ctrl-C again stops at once"
    kill -INT "$airflow_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$airflow_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
  fi
  if kill -0 -- "-$airflow_pid" 2>/dev/null; then
    kill -TERM -- "-$airflow_pid" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$airflow_pid" 2>/dev/null || true
  fi
  wait "$airflow_pid" 2>/dev/null || true
}
cleanup() {
  [[ -z "$announcer" ]] || kill -- "-$announcer" 2>/dev/null || true
  [[ -z "$airflow_pid" ]] || stop_airflow
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

echo "== Starting Airflow on $url with AIRFLOW_HOME=$AIRFLOW_HOME; how to log in follows once it is up"
set -m
# `airflow standalone` starts its components as `airflow` from PATH: the project's.
PATH="$venv/bin:$PATH" airflow standalone </dev/null &
airflow_pid=$!

# Once the api-server answers: switch both tutorial DAGs on (the scheduler then makes the
# tutorial's latest daily run, and the consumer listens for fct_orders), then say how to log
# in. Not before: a task started earlier would find no api-server to report to.
"$venv/bin/python" - "$url" "$passwords" "$airflow_pid" <<'PY' &
import json
import os
import sys
import time
import urllib.request

url, passwords, parent = sys.argv[1], sys.argv[2], int(sys.argv[3])
DAGS = ("orchestra_dbt_tutorial", "orchestra_dbt_consumer")


def alive() -> bool:
    try:
        os.kill(parent, 0)
    except OSError:
        return False
    return True


def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, headers, method=method)
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.load(response)


def poll(check, timeout):
    """check()'s first truthy result, retrying failed requests; None on timeout or exit."""
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (OSError, ValueError):  # not up yet, not found yet (HTTPError is an OSError)
            pass
        time.sleep(2)
    return None


if not poll(lambda: call("GET", "/api/v2/version"), 900):
    sys.exit()
try:
    with open(passwords) as file:
        password = json.load(file)["admin"]
except (OSError, ValueError, KeyError):
    password = None
token = password and poll(
    lambda: call("POST", "/auth/token", {"username": "admin", "password": password})[
        "access_token"
    ],
    60,
)
switched_on = bool(token) and all(
    poll(lambda: call("PATCH", f"/api/v2/dags/{dag}", {"is_paused": False}, token), 180)
    for dag in DAGS
)
lines = [f"Airflow UI: {url}"]
if password:
    lines.append(f"Log in as admin, password {password} (kept in {passwords})")
else:
    lines.append(f"Log in with a user of [core] simple_auth_manager_users ({passwords})")
if not switched_on:
    lines.append(f"Switch on {' and '.join(DAGS)} in the DAG list (the toggle).")
lines.append("Stop with Ctrl-C.")
rule = "=" * 78
print("\n".join(["", rule, *(f" {line}" for line in lines), rule, ""]), flush=True)
PY
announcer=$!
set +m

# Until Airflow exits or Ctrl-C (then the INT trap exits, and `cleanup` stops Airflow).
wait "$airflow_pid"
