"""The package's rooms import one way, and only the Airflow layer imports Airflow.

``decisions`` (pure), ``state`` (stores), ``execution`` (runs dbt through the worker),
``presentation`` (report, picture), ``worker`` (the dbt child process and its parent side) and
the command line run without Airflow; ``hooks``, ``operators``, ``plugins``, ``assets`` and
``get_provider_info`` are the Airflow layer. Two checks: importing every module of the former
in a fresh interpreter loads no ``airflow`` module, and their import statements (read with
``ast``, so imports inside functions and ``TYPE_CHECKING`` blocks count too) point only at the
rooms each may use.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import airflow_provider_orchestra_dbt

PACKAGE = airflow_provider_orchestra_dbt.__name__
ROOT = Path(airflow_provider_orchestra_dbt.__file__).parent
ROOMS = ("decisions", "state", "execution", "presentation", "worker")
AIRFLOW_LAYER = frozenset(
    {"hooks", "operators", "triggers", "plugins", "assets", "get_provider_info"}
)
# Which rooms (first name below the package) each room may import, besides itself.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "decisions": frozenset({"state"}),
    "state": frozenset(),
    "worker": frozenset(),
    "presentation": frozenset({"decisions", "state", "worker"}),
    "execution": frozenset({"decisions", "state", "worker", "presentation"}),
    "cli": frozenset({"decisions", "state", "worker", "presentation", "execution"}),
}
# Started by path, it runs where neither this package nor Airflow is installed.
WORKER_SCRIPT = "worker.dbt_worker"
# Modules every room may import: the version and the package itself (``__init__`` is empty).
ANYWHERE = frozenset({"", "__init__"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _room_files() -> Iterator[Path]:
    for room in ROOMS:
        yield from sorted((ROOT / room).rglob("*.py"))
    yield ROOT / "cli.py"


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name == PACKAGE:  # ``from package import room``
                for alias in node.names:
                    yield node.lineno, f"{name}.{alias.name}"
            else:
                yield node.lineno, name


def _run_fresh(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter, where nothing is imported yet."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        # ``-c`` puts the working directory first on sys.path: the package under test is there.
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def violations(path: Path) -> list[str]:
    """What ``path`` imports that its room may not (empty: nothing)."""
    module = _module_name(path)
    inside = module.removeprefix(f"{PACKAGE}.")
    room = inside.split(".")[0]
    allowed = MAY_IMPORT[room] | {room}
    found = []
    for line, name in _imports(path):
        where = f"{path.relative_to(ROOT.parent)}:{line} imports {name}"
        if name == "airflow" or name.startswith("airflow."):
            found.append(f"{where} (Airflow, outside the Airflow layer)")
            continue
        if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
            continue
        target = name.removeprefix(PACKAGE).lstrip(".").split(".")[0]
        if inside == WORKER_SCRIPT:
            found.append(f"{where} (the worker script imports nothing of the package)")
        elif target in ANYWHERE or target == "__version__":
            continue
        elif target not in allowed:
            kind = "the Airflow layer" if target in AIRFLOW_LAYER else f"room {target!r}"
            found.append(f"{where} ({room} may not import {kind})")
    return found


@pytest.mark.parametrize("path", list(_room_files()), ids=lambda path: str(path.relative_to(ROOT)))
def test_each_room_imports_only_the_rooms_below_it(path: Path) -> None:
    assert violations(path) == []


def test_the_rooms_without_airflow_load_no_airflow_module() -> None:
    modules = [_module_name(path) for path in _room_files()]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] == 'airflow')))\n"
    )
    done = _run_fresh(script)
    assert json.loads(done.stdout.splitlines()[-1]) == []


# -- the checks catch what they are meant to ----------------------------------------------------


@pytest.mark.parametrize(
    ("room_file", "source", "expected"),
    [
        (
            "decisions/bad.py",
            "from airflow_provider_orchestra_dbt.worker.dbt_worker import META_NAMESPACE\n",
            "decisions may not import room 'worker'",
        ),
        ("state/bad.py", "from ..decisions import graph\n", "state may not import room"),
        (
            "execution/bad.py",
            "def f():\n    from airflow_provider_orchestra_dbt.hooks import orchestra_dbt\n",
            "execution may not import the Airflow layer",
        ),
        (
            "presentation/bad.py",
            "from airflow_provider_orchestra_dbt.execution.session import DbtSession\n",
            "presentation may not import room 'execution'",
        ),
        (
            "presentation/bad.py",
            "from airflow_provider_orchestra_dbt import operators\n",
            "presentation may not import the Airflow layer",
        ),
        (
            "worker/dbt_worker.py",
            "from airflow_provider_orchestra_dbt.worker import compat\n",
            "the worker script imports nothing of the package",
        ),
        (
            "state/bad.py",
            "if TYPE_CHECKING:\n    from airflow.sdk import Connection\n",
            "Airflow, outside the Airflow layer",
        ),
    ],
)
def test_a_wrong_way_import_is_caught(
    room_file: str, source: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / PACKAGE
    path = root / room_file
    path.parent.mkdir(parents=True)
    path.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    [found] = violations(path)
    assert expected in found


def test_an_import_within_the_rules_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / PACKAGE
    path = root / "decisions" / "ok.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "from airflow_provider_orchestra_dbt import __version__\n"
        "from airflow_provider_orchestra_dbt.state.model import StateDocument\n"
        "from .graph import Graph\n"
        "import json\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    assert violations(path) == []


# -- optional dependencies: boto3 and requests come with the s3 and http extras ----------------


def test_without_the_s3_and_http_extras_everything_imports_and_a_local_state_file_works(
    tmp_path: Path,
) -> None:
    modules = [_module_name(path) for path in _room_files()]
    script = f"""
import importlib, json, sys
from pathlib import Path
for name in ("boto3", "botocore", "requests"):
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
for name in {modules!r}:
    importlib.import_module(name)
from airflow_provider_orchestra_dbt import state
store = state.LocalFileStateStore(Path({str(tmp_path / "state.json")!r}))
store.save({{}})
found = {{"entries": len(store.load().entries)}}
for build in (
    lambda: state.S3StateStore("bucket", "dbt/state.json", label="connection 'c'"),
    lambda: state.OrchestraHttpStateStore("https://orchestra.example", "key", label="conn 'h'"),
):
    try:
        build()
    except state.MissingExtraError as exc:
        found.setdefault("errors", []).append(str(exc))
print(json.dumps(found))
"""
    done = _run_fresh(script)
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "entries": 0,
        "errors": [
            "S3 object s3://bucket/dbt/state.json (connection 'c') needs boto3 and botocore, "
            "which is not installed: pip install 'airflow-provider-orchestra-dbt[s3]'",
            "conn 'h' needs requests, which is not installed: "
            "pip install 'airflow-provider-orchestra-dbt[http]'",
        ],
    }
