"""The tutorial path, run verbatim in a fresh clone: README's commands and the script's hint.

The commands are read from README.md and from what ``scripts/tutorial.sh`` prints, never
retyped here, so the docs cannot drift from what is tested. They run in a clone of this
repository with the working tree's changes laid over it (what the next commit would hold),
in its own ``.venv`` made by the script's ``uv sync`` from uv's cache: the project
environment of the checkout running the tests is never touched.

One sequence, as a user would go: ``bash scripts/tutorial.sh``, then the hint it prints
(new orders, then the script again), then the command-line example. Afterwards
``git status`` must be clean and nothing may have been written into ``tutorial/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# One invocation of tutorial.sh: environment sync, dbt parse, two `airflow dags test` runs.
SCRIPT_TIMEOUT = 900.0
# Settings of the caller's shell that would point the commands elsewhere than a new user's.
FOREIGN_ENV = (
    "AIRFLOW",
    "TUTORIAL_",
    "ORCHESTRA_DBT_TUTORIAL_",
    "ORCHESTRA_DBT_STATE_FILE",
    "VIRTUAL_ENV",
    "UV_PROJECT_ENVIRONMENT",
    "PYTHONPATH",
)


def readme_blocks(section: str) -> list[str]:
    """The ``bash`` code blocks of README section ``## <section>`` (subsections included)."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {section}'"
    return re.findall(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S)


def commands(block: str) -> list[str]:
    """The block's commands, one per entry, continuation lines joined as bash would."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip()]


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def fresh_clone(dest: Path) -> Path:
    git("clone", "--quiet", str(REPO), str(dest), cwd=REPO.parent)
    # Under development the working tree is ahead of the last commit; CI has nothing to lay over.
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in filter(None, names.split("\0")):
        source, copy = REPO / name, dest / name
        if source.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
        elif not source.exists() and copy.is_file():
            copy.unlink()
    git("add", "--all", cwd=dest)
    git("commit", "--quiet", "--allow-empty", "--no-verify", "-m", "working tree", cwd=dest)
    assert git("status", "--porcelain", cwd=dest) == ""
    return dest


def user_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.lstrip("_").startswith(FOREIGN_ENV)
    }


def run(script: str, clone: Path) -> str:
    """Run ``script`` with bash in the clone as a user would type it; returns its output."""
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=clone,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"exit code {result.returncode} from:\n{script}\n--- output (end) ---\n"
        f"{result.stdout[-6000:]}"
    )
    return result.stdout


def printed_hint(output: str) -> str:
    hints = [line.removeprefix("Try: ") for line in output.splitlines() if line.startswith("Try: ")]
    assert len(hints) == 1, f"expected one 'Try: ' line, got {hints}"
    return hints[0]


def run_labels(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("== run ")]


def built_and_reused(output: str) -> list[tuple[int, int]]:
    """Models built and reused by each DAG run, from the operator's summary line."""
    found = re.findall(r"dbt build: built=(\d+) reused=(\d+)", output)
    return [(int(built), int(reused)) for built, reused in found]


def test_tutorial_path_runs_verbatim_in_a_fresh_clone(tmp_path: Path) -> None:
    first, again, *_ = readme_blocks("The two commands")
    (cli_example,) = readme_blocks("The command line (no Airflow needed)")
    clone = fresh_clone(tmp_path / "clone")

    output = run(first, clone)
    labels = run_labels(output)
    assert len(labels) == 2, labels
    assert labels[0].startswith("== run 1: no state recorded yet, so everything is built")
    assert labels[1].startswith("== run 2: nothing changed since run 1")
    # The labels must be true, not only numbered.
    (built_1, reused_1), (built_2, reused_2) = built_and_reused(output)
    assert built_1 > 0 and reused_1 == 0
    assert built_2 == 0 and reused_2 == built_1
    hint = printed_hint(output)
    # What the script suggests is what README shows, as one line.
    assert hint == " && ".join(commands(again))

    output = run(hint, clone)
    assert "raw.orders: appended 5 rows" in output
    labels = run_labels(output)
    assert len(labels) == 2, labels
    assert labels[0].startswith("== run 3: builds only what is new or changed")
    assert labels[1].startswith("== run 4: nothing changed since run 3")
    (built_3, reused_3), (built_4, reused_4) = built_and_reused(output)
    assert 0 < built_3 < built_1 and reused_3 > 0
    # fct_orders inherits a 1-minute build_after: when run 3 came within a minute of run 1's
    # build, it waited there and run 4 builds it. Nothing else may be built in run 4.
    run_3, run_4 = output.split("== run 4", 1)
    waited = set(re.findall(r"^model\.\S+?\.(\w+)\s+reuse\s+build_after", run_3, re.M))
    built_in_4 = set(re.findall(r"\] SUCCESS\s+model\.\S+?\.(\w+) ", run_4))
    assert len(built_in_4) == built_4 and built_in_4 <= waited, (built_in_4, waited)
    assert built_4 + reused_4 == built_1
    assert printed_hint(output) == hint

    run(cli_example, clone)
    cli_dir = clone / ".airflow" / "cli"
    assert {p.name for p in cli_dir.iterdir()} >= {"state.json", "report.json", "run.html"}
    report = json.loads((cli_dir / "report.json").read_text())
    assert report["built"] and not report["failed"]

    assert git("status", "--porcelain", cwd=clone) == ""
    ignored = git("status", "--porcelain", "--ignored", cwd=clone)
    written_into_tutorial = [line for line in ignored.splitlines() if " tutorial/" in line]
    assert written_into_tutorial == []
    # Its .venv is the size of an Airflow install; pytest keeps the last temp dirs around.
    shutil.rmtree(clone)
