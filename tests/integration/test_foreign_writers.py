"""A state file shared with dbt-orchestra (``orc``) 1.5: no sequence of writes by it reuses a
model whose last tests failed, and both tools' entries survive each other's writes.

orc runs for real, from its own virtualenv (bench/.venv-orc, pinned in
bench/requirements-orc.txt, created with uv on first use), in its platform mode: keys
``<integration account>."db"."schema"."table"``, while ours are ``<account>.db.schema.alias``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.scripts import load_script
from support.tutorial import (
    REPO,
    Workspace,
    built,
    decisions,
    executed_tests,
    plain_dbt_build,
    tree_digest,
)

pytestmark = pytest.mark.integration

ACCOUNT = "acct-7"
ORC_FIELDS = {"checksum", "last_updated", "sources"}  # all orc's StateItem knows
BAD_PAYMENT = (
    "insert into raw.payments "
    "select max(id) + 1, 1, 'bitcoin', 100, now()::timestamp from raw.payments"
)  # valid for the source's tests, not for stg_payments' accepted_values test


@pytest.fixture(scope="session")
def orc() -> Path:
    """The ``orc`` executable of dbt-orchestra, installed as the benchmark installs it."""
    bench = load_script(REPO / "bench" / "run.py", "bench_run")
    executable: Path = bench.ensure_orc_env()
    return executable


def orc_build(ws: Workspace, orc: Path, *args: str) -> str:
    """``orc dbt build`` on the workspace's project and state file; returns its output."""
    project = str(ws.project)
    scratch = ws.root / "orc"
    env = os.environ | {
        "PATH": f"{orc.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TUTORIAL_DUCKDB_PATH": str(ws.warehouse),
        "ORCHESTRA_USE_STATEFUL": "true",
        "ORCHESTRA_STATE_FILE": str(ws.state_file),
        "ORCHESTRA_LOCAL_RUN": "false",
        "ORCHESTRA_INTEGRATION_ACCOUNT_ID": ACCOUNT,
        # Artifacts and logs outside the project, which must come out as it went in.
        "DBT_TARGET_PATH": str(scratch / "target"),
        "DBT_LOG_PATH": str(scratch / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    before = tree_digest(ws.project)
    done = subprocess.run(
        [str(orc), "dbt", "build", "--project-dir", project, "--profiles-dir", project, *args],
        env=env, cwd=ws.project, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert tree_digest(ws.project) == before, "orc left the project modified"
    return output


def test_orc_rewriting_the_state_file_never_turns_a_failing_model_green(
    ws: Workspace, orc: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "plain" / "tutorial.duckdb"
    reference.parent.mkdir()
    shutil.copy(ws.warehouse, reference)  # the raw data ends as it starts
    prefix = ["--integration-account-id", ACCOUNT]
    ours = f"{ACCOUNT}.{ws.relation('stg_payments')}"
    orc_key = f'{ACCOUNT}."{ws.database}"."{ws.schema}"."stg_customers"'

    # Our keys carry the account; stg_payments' test fails: it is marked, the run fails.
    ws.sql(BAD_PAYMENT)
    failed = ws.run("build", *prefix, expect_exit=1)
    assert "stg_payments" in built(failed)
    state = ws.state()
    assert state[ours]["status"] == "test_failed"
    assert state[ours]["checksum"].startswith("test_failed:")
    unprefixed = {k for k in state if not k.startswith(f"{ACCOUNT}.")}  # the baseline's

    # orc builds an unrelated model. It reuses nothing of ours (other keys), adds its own
    # entry, keeps every entry of ours but only with the fields it knows: `status` is gone.
    output = orc_build(ws, orc, "--select", "stg_customers")
    assert "0/1 nodes reused" in output
    rewritten = ws.state()
    assert set(rewritten) == set(state) | {orc_key}
    assert all(set(entry) == ORC_FIELDS for entry in rewritten.values())
    assert rewritten[ours]["checksum"] == state[ours]["checksum"]

    # Our next run trusts none of the stripped entries and still sees the failed test.
    again = ws.run("build", *prefix, expect_exit=1)
    why = decisions(again)
    assert why["stg_payments"] == "an error-severity test failed after its last build"
    assert why["stg_customers"] == (
        "its state entry lacks our fields (unique_id, status, upstream, checksum_parts): "
        "written or rewritten by another tool, not trusted"
    )
    assert decisions(again, "reuse") == {}
    assert any("accepted_values_stg_payments_method" in t for t in executed_tests(again))
    assert ws.state()[ours]["status"] == "test_failed"
    assert ws.state()[orc_key] == rewritten[orc_key]

    # Fixed: green, and the real fingerprint is back.
    ws.sql("delete from raw.payments where method = 'bitcoin'")
    fixed = ws.run("build", *prefix)
    assert {"stg_payments", "int_orders_enriched", "mart_payment_methods"} <= built(fixed)
    final = ws.state()
    assert final[ours]["status"] == "success"
    assert not final[ours]["checksum"].startswith("test_failed:")
    assert final[orc_key] == rewritten[orc_key]
    assert unprefixed <= set(final)
    assert ws.tables() == plain_dbt_build(ws, reference, tmp_path / "plain")
