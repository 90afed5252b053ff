"""Benchmark: our CLI against plain `dbt build` and `orc dbt build` (dbt-orchestra).

    uv run python bench/run.py                 # N in {20, 500}, 3 repetitions (~30 min, 2 cores)
    uv run python bench/run.py --quick         # smoke run: N=20, 1 repetition (a few minutes)
    uv run python bench/run.py --sizes 2000    # the large size, behind a flag

Run it with the project's environment (``uv run`` or ``.venv/bin/python``): plain dbt is that
environment's ``dbt`` and ours is ``python -m airflow_provider_orchestra_dbt``. dbt-orchestra is
installed, pinned (``bench/requirements-orc.txt``), into its own environment ``bench/.venv-orc``
on first use (``uv venv`` + ``uv pip install``), with the same dbt-core, dbt-duckdb and duckdb.

Per size N, the generator (``bench/generate.py``) writes one project and its raw data. Every
measured run gets a fresh copy of project + warehouse + state, restored into the same path
(``<work>/run``) so paths, DuckDB file names and parse caches are identical for every tool.
Scenarios:

* ``cold``: first build, no state, no parse cache, empty target;
* ``noop``: a second build, nothing changed;
* ``source``: rows with a later ``loaded_at`` landed in one source;
* ``staging``: one staging model's SQL changed (a new column);
* ``full_refresh``: ``build --full-refresh`` after a build.

With ``--no-loaded-at-field`` the sources have no ``loaded_at_field``: the ``noop`` row then
shows the reuse rate implicit freshness gives (``bench/freshness.py`` times its probe).

The prepared state for the last four is the result of that tool's own first cold build
(unmeasured for them): project with its target/ (dbt's partial-parse file), warehouse, the
tool's state file and our parse cache, snapshotted once and restored before every run. Tools
alternate within each repetition (plain, orc, ours, plain, orc, ours, ...).

Measured per run: wall time and memory of the whole process tree (see ``bench/measure.py``:
/proc sampled every 50 ms; "peak RSS" is the largest sum of VmRSS over the tree, the parent's
peak is its own VmHWM), and what ran: models built and tests run (from dbt's run_results.json
for plain dbt and orc, from our --report for ours). After the first repetition of each scenario
the warehouse is compared with plain dbt's (row count and sum of ``amount`` per relation).

Also: one scenario through ``airflow dags test`` (the operator's overhead over the CLI), and the
parent-side micro-benchmark (``bench/micro.py``) on synthetic graphs of 10k and 50k nodes.
Writes ``bench/results/<date>.md`` (and the raw numbers as ``.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402
from measure import Measurement, run_measured  # noqa: E402

ORC_VENV = BENCH / ".venv-orc"
ORC_REQUIREMENTS = BENCH / "requirements-orc.txt"
UV_OVERRIDES = BENCH / "uv-overrides.txt"
RESULTS = BENCH / "results"
SCENARIOS = ("cold", "noop", "source", "staging", "full_refresh")
SCENARIO_TITLES = {
    "cold": "cold build",
    "noop": "no-op",
    "source": "one source changed",
    "staging": "one staging model changed",
    "full_refresh": "full refresh",
}
TOOLS = ("plain", "orc", "ours")
TOOL_TITLES = {"plain": "dbt build", "orc": "orc dbt build", "ours": "ours (CLI)"}
DAG_ID = "bench_orchestra_dbt"
LOGICAL_DATE = "2026-01-01"
MB = 1024 * 1024

# The targets: (size, scenario, baseline tool, highest ratio ours/baseline).
TARGETS = (
    (500, "noop", "orc", 0.35),
    (500, "noop", "plain", 0.20),
    (500, "source", "orc", 0.60),
    (500, "full_refresh", "plain", 1.10),
    (20, "noop", "plain", 1.00),
)
PLAN_MERGE_TARGET_SECONDS = 1.0
PARENT_RSS_TARGET = 250 * MB


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


# -- environments --------------------------------------------------------------------------------


def ensure_orc_env() -> Path:
    """``bench/.venv-orc`` with the pinned dbt-orchestra; (re)created when the pins change."""
    marker = ORC_VENV / ".bench-requirements"
    wanted = ORC_REQUIREMENTS.read_text()
    orc = ORC_VENV / "bin" / "orc"
    if orc.exists() and marker.exists() and marker.read_text() == wanted:
        return orc
    log(f"creating {ORC_VENV} (dbt-orchestra, pinned in {ORC_REQUIREMENTS.name})")
    make_venv(ORC_VENV, ["-r", str(ORC_REQUIREMENTS)])
    marker.write_text(wanted)
    return orc


def make_venv(venv: Path, requirements: list[str]) -> None:
    """A virtualenv of its own for a benchmark tool, on this interpreter, created with uv."""
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit(f"uv is needed to create {venv} (pip install uv)")
    subprocess.run(
        [uv, "venv", "--quiet", "--clear", "--python", _base_python(), str(venv)], check=True
    )
    python = str(venv / "bin" / "python")
    subprocess.run(
        [
            *(uv, "pip", "install", "--quiet", "--python", python),
            *("--override", str(UV_OVERRIDES), *requirements),
        ],
        check=True,
    )


def _base_python() -> str:
    """The interpreter behind this venv, so both environments run the same Python."""
    return getattr(sys, "_base_executable", None) or sys.executable


def package_versions(python: str, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = '-'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def base_env() -> dict[str, str]:
    """The caller's environment without anything that would steer a tool elsewhere."""
    drop = ("AIRFLOW", "ORCHESTRA_", "DBT_", "VIRTUAL_ENV", "PYTHONPATH", "BENCH_")
    env = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith(drop)}
    # Installed tools run from byte-compiled modules; with PYTHONDONTWRITEBYTECODE set (as some
    # sandboxes do) every process would compile dbt from source on each start, a cost no user
    # pays and one that hits a tool harder the more Python processes it starts.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- workspaces ----------------------------------------------------------------------------------


@dataclass
class Workspace:
    """The fixed path every measured run happens in."""

    root: Path

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def state_ours(self) -> Path:
        return self.root / "state" / "ours.json"

    @property
    def state_orc(self) -> Path:
        return self.root / "state" / "orc.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def airflow(self) -> Path:
        return self.root / "airflow"

    def restore(self, source: Path) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        shutil.copytree(source, self.root, symlinks=True)
        (self.root / "state").mkdir(exist_ok=True)
        for stale in ("run_results.json", "sources.json"):
            (self.project / "target" / stale).unlink(missing_ok=True)
        self.report.unlink(missing_ok=True)

    def snapshot(self, dest: Path) -> None:
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.root, dest, symlinks=True)


@dataclass
class Run:
    size: int
    scenario: str
    tool: str
    rep: int
    wall: float
    cpu: float
    tree_peak_rss: int
    parent_peak_rss: int
    worker_peak_rss: int
    exit_code: int
    models_built: int | None
    tests_run: int | None
    load_before: float
    differs_from_plain: int | None = None
    log: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    orc: Path
    python: str = sys.executable
    runs: list[Run] = field(default_factory=list)
    airflow_runs: list[Run] = field(default_factory=list)
    consistency: dict[str, list[str]] = field(default_factory=dict)
    specs: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def dbt(self) -> str:
        return str(Path(self.python).parent / "dbt")

    # -- commands per tool ---------------------------------------------------------------------

    def command(self, tool: str, ws: Workspace, scenario: str) -> list[str]:
        project = str(ws.project)
        common = ["--project-dir", project, "--profiles-dir", project]
        refresh = ["--full-refresh"] if scenario == "full_refresh" else []
        if tool == "plain":
            return [self.dbt, "build", *common, *refresh]
        if tool == "orc":
            return [str(self.orc), "dbt", "build", *common, *refresh]
        return [
            self.python,
            "-m",
            "airflow_provider_orchestra_dbt",
            "build",
            *common,
            *refresh,
            "--state-file",
            str(ws.state_ours),
            "--report",
            str(ws.report),
        ]

    def env(self, tool: str, ws: Workspace) -> dict[str, str]:
        env = base_env()
        env["BENCH_DUCKDB_PATH"] = str(ws.warehouse)
        if tool == "orc":
            env["PATH"] = f"{self.orc.parent}{os.pathsep}{env.get('PATH', '')}"
            env["ORCHESTRA_USE_STATEFUL"] = "true"
            env["ORCHESTRA_STATE_FILE"] = str(ws.state_orc)
            env["ORCHESTRA_LOCAL_RUN"] = "true"
        if tool in ("ours", "airflow"):
            env["ORCHESTRA_DBT_CACHE_DIR"] = str(ws.cache)
        return env

    # -- one measured run ----------------------------------------------------------------------

    def measure(self, tool: str, ws: Workspace, scenario: str, size: int, rep: int) -> Run:
        logs = self.work / "logs" / f"n{size}"
        log_path = logs / f"{scenario}-{tool}-{rep}.log"
        load = os.getloadavg()[0]
        if tool == "airflow":
            m = self._airflow_run(ws, log_path)
        else:
            argv = self.command(tool, ws, scenario)
            m = run_measured(argv, cwd=ws.project, env=self.env(tool, ws), log_path=log_path)
        built, tests = self.count(tool, ws)
        run = Run(
            size=size,
            scenario=scenario,
            tool=tool,
            rep=rep,
            wall=m.wall_seconds,
            cpu=m.cpu_seconds,
            tree_peak_rss=m.tree_peak_rss,
            parent_peak_rss=m.root_hwm,
            worker_peak_rss=m.peak_of("dbt_worker.py"),
            exit_code=m.exit_code,
            models_built=built,
            tests_run=tests,
            load_before=load,
            log=str(log_path),
        )
        status = "ok" if m.exit_code == 0 else f"EXIT {m.exit_code} (see {log_path})"
        log(
            f"  n={size} {scenario:<12} {tool:<7} rep {rep}: {m.wall_seconds:6.1f}s "
            f"cpu {m.cpu_seconds:6.1f}s "
            f"tree {m.tree_peak_rss / MB:5.0f} MB  parent {m.root_hwm / MB:4.0f} MB  "
            f"built {built} tests {tests}  load {load:.1f}  {status}"
        )
        return run

    def count(self, tool: str, ws: Workspace) -> tuple[int | None, int | None]:
        """(models/seeds/snapshots built, tests run) by this run."""
        if tool == "ours":
            if not ws.report.exists():
                return None, None
            counts = json.loads(ws.report.read_text())["counts"]
            tests = sum(counts[f"tests_{k}"] for k in ("passed", "warned", "failed"))
            return counts["built"] + counts["failed"], tests
        if tool == "airflow":
            return self._airflow_counts(ws)
        results = ws.project / "target" / "run_results.json"
        if not results.exists():
            return 0, 0
        built = tests = 0
        for r in json.loads(results.read_text()).get("results", []):
            kind = r["unique_id"].split(".", 1)[0]
            if r.get("status") in ("skipped", "no-op"):
                continue
            if kind in ("model", "seed", "snapshot"):
                built += 1
            elif kind in ("test", "unit_test"):
                tests += 1
        return built, tests

    # -- scenarios -----------------------------------------------------------------------------

    def prepare_scenario(self, ws: Workspace, scenario: str, spec: generate.ProjectSpec) -> None:
        if scenario == "source":
            generate.land_new_rows(ws.warehouse, spec.change_source)
        elif scenario == "staging":
            path = ws.project / "models" / "staging" / f"{spec.change_staging}.sql"
            changed = generate.staging_change(path.read_text())
            assert changed != path.read_text()
            path.write_text(changed)

    def run_size(self, size: int) -> None:
        base = self.work / f"n{size}"
        pristine = base / "pristine"
        log(f"N={size}: generating the project and its data in {pristine}")
        spec = generate.write_project(
            pristine / "project", size, loaded_at_field=self.args.loaded_at_field
        )
        generate.create_warehouse(pristine / "warehouse.duckdb", spec)
        (pristine / "state").mkdir()
        # dbt-orchestra refuses to start without a state file; an empty one is a first run.
        (pristine / "state" / "orc.json").write_text('{"state": {}}\n')
        self.specs[size] = spec.to_json() | {"models": None}
        ws = Workspace(self.work / "run")
        prepared: dict[str, Path] = {}

        def prepare(tool: str) -> Path:
            if tool not in prepared:
                log(f"  preparing {tool}: an unmeasured cold build")
                ws.restore(pristine)
                run = self.measure(tool, ws, "prepare", size, 0)
                if run.exit_code != 0:
                    raise SystemExit(f"{tool} failed to prepare; see {run.log}")
                prepared[tool] = base / f"prepared-{tool}"
                ws.snapshot(prepared[tool])
            return prepared[tool]

        for scenario in self.args.scenarios:
            for rep in range(self.args.reps):
                digests: dict[str, dict[str, str]] = {}
                for tool in self.args.tools:
                    if scenario == "cold":
                        ws.restore(pristine)
                    else:
                        ws.restore(prepare(tool))
                    self.prepare_scenario(ws, scenario, spec)
                    run = self.measure(tool, ws, scenario, size, rep)
                    self.runs.append(run)
                    if scenario == "cold" and tool not in prepared and run.exit_code == 0:
                        prepared[tool] = base / f"prepared-{tool}"
                        ws.snapshot(prepared[tool])
                    if rep == 0 and not self.args.no_compare:
                        digests[tool] = warehouse_digest(ws.warehouse)
                if "plain" in digests:
                    for tool, digest in digests.items():
                        differing = sorted(
                            k
                            for k in digest.keys() | digests["plain"].keys()
                            if digest.get(k) != digests["plain"].get(k)
                        )
                        self.consistency[f"{size}/{scenario}/{tool}"] = differing
                        for run in self.runs:
                            if (run.size, run.scenario, run.tool, run.rep) == (
                                size,
                                scenario,
                                tool,
                                0,
                            ):
                                run.differs_from_plain = len(differing)

        if self.args.airflow_size == size and "ours" in self.args.tools:
            self.run_airflow(size, ws, prepare("ours"), spec)

    # -- through Airflow -----------------------------------------------------------------------

    def run_airflow(self, size: int, ws: Workspace, prepared: Path, spec: Any) -> None:
        scenario = self.args.airflow_scenario
        home = self.work / "airflow-pristine"
        log(f"N={size}: the operator through `airflow dags test` ({scenario}), vs the CLI")
        if not home.exists():
            self._airflow_setup(home, ws)
        log("  warm-up: one unmeasured `airflow dags test`")
        ws.restore(prepared)
        shutil.copytree(home, ws.airflow)
        self._airflow_run(ws, self.work / "logs" / "warmup-airflow.log")
        for rep in range(self.args.reps):
            for tool in ("ours", "airflow"):
                ws.restore(prepared)
                shutil.copytree(home, ws.airflow)
                self.prepare_scenario(ws, scenario, spec)
                self.airflow_runs.append(self.measure(tool, ws, scenario, size, rep))

    def _airflow_env(self, ws: Workspace) -> dict[str, str]:
        env = self.env("airflow", ws)
        env.update(
            {
                "AIRFLOW_HOME": str(ws.airflow / "home"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ws.airflow / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{ws.airflow}/home/airflow.db",
                "ORCHESTRA_DBT_STATE_FILE": str(ws.state_ours),
                "BENCH_PROJECT_DIR": str(ws.project),
            }
        )
        return env

    def _airflow_setup(self, home: Path, ws: Workspace) -> None:
        """A migrated Airflow home with the benchmark DAG, built once and copied per run."""
        if ws.airflow.exists():
            shutil.rmtree(ws.airflow)
        (ws.airflow / "home").mkdir(parents=True)
        (ws.airflow / "dags").mkdir()
        (ws.airflow / "dags" / "bench_dag.py").write_text(DAG_FILE)
        log("  migrating a fresh Airflow metadata DB (once, unmeasured)")
        done = subprocess.run(
            [self.python, "-m", "airflow", "db", "migrate"],
            env=self._airflow_env(ws),
            cwd=ws.root,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}")
        shutil.copytree(ws.airflow, home)

    def _airflow_run(self, ws: Workspace, log_path: Path) -> Measurement:
        argv = [self.python, "-m", "airflow", "dags", "test", DAG_ID, LOGICAL_DATE]
        return run_measured(argv, cwd=ws.root, env=self._airflow_env(ws), log_path=log_path)

    def _airflow_counts(self, ws: Workspace) -> tuple[int | None, int | None]:
        db = ws.airflow / "home" / "airflow.db"
        if not db.exists():
            return None, None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute(
                "select value from xcom where dag_id = ? and task_id = 'dbt_build' "
                "and key = 'return_value'",
                (DAG_ID,),
            ).fetchone()
        finally:
            con.close()
        if row is None:
            return None, None
        counts = json.loads(row[0])["counts"]
        tests = sum(counts[f"tests_{k}"] for k in ("passed", "warned", "failed"))
        return counts["built"] + counts["failed"], tests

    # -- warm-up -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One unmeasured run per tool: byte-compiled imports and a warm page cache for all."""
        root = self.work / "warmup"
        spec = generate.write_project(root / "project", 20)
        generate.create_warehouse(root / "warehouse.duckdb", spec)
        (root / "state").mkdir()
        (root / "state" / "orc.json").write_text('{"state": {}}\n')
        ws = Workspace(self.work / "run")
        log("warm-up: one unmeasured cold build per tool (N=20)")
        for tool in self.args.tools:
            ws.restore(root)
            argv = self.command(tool, ws, "cold")
            m = run_measured(
                argv,
                cwd=ws.project,
                env=self.env(tool, ws),
                log_path=self.work / "logs" / f"warmup-{tool}.log",
            )
            if m.exit_code != 0:
                raise SystemExit(
                    f"warm-up of {tool} failed: see {self.work}/logs/warmup-{tool}.log"
                )


DAG_FILE = '''\
"""The benchmark's DAG: one OrchestraDbtOperator on the generated project."""

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_orchestra_dbt.operators.orchestra_dbt import OrchestraDbtOperator

with DAG(
    dag_id="bench_orchestra_dbt",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    OrchestraDbtOperator(
        task_id="dbt_build",
        project_dir=os.environ["BENCH_PROJECT_DIR"],
        profiles_dir=os.environ["BENCH_PROJECT_DIR"],
    )
'''


def warehouse_digest(db_path: Path) -> dict[str, str]:
    """Row count and sum(amount) of every model relation: what each tool left in the warehouse."""
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        relations = con.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema like 'main_%' order by 1, 2"
        ).fetchall()
        out = {}
        for schema, table in relations:
            row = con.execute(
                f'select count(*), round(sum(amount), 4) from "{schema}"."{table}"'
            ).fetchone()
            out[f"{schema}.{table}"] = repr(row)
        return out
    finally:
        con.close()


# -- micro-benchmark -----------------------------------------------------------------------------


def run_micro(python: str, sizes: Sequence[int], repeat: int) -> list[dict[str, Any]]:
    """One process per size and variant; repeated (median) only for sizes up to 10k nodes."""
    out = []
    for nodes in sizes:
        for with_airflow in (False, True):
            times = repeat if nodes <= 10_000 and not with_airflow else 1
            argv = [python, str(BENCH / "micro.py"), "--nodes", str(nodes), "--repeat", str(times)]
            if with_airflow:
                argv.append("--with-airflow")
            log(f"micro-benchmark: {nodes} nodes{' (Airflow imported)' if with_airflow else ''}")
            done = subprocess.run(argv, capture_output=True, text=True, check=False, env=base_env())
            if done.returncode != 0:
                raise SystemExit(f"micro-benchmark failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            phases = result["phases"]
            log(
                f"  plan (no-op) {phases['plan_noop']:.2f}s  merge {phases['merge']:.2f}s  "
                f"peak RSS {result['peak_rss'] / MB:.0f} MB"
            )
            out.append(result)
    return out


# -- the report ----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def machine_facts() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def machine_lines(
    facts: dict[str, Any],
    loads: Sequence[float],
    *,
    during: str,
    started: str,
    elapsed: float,
    commit: str,
    versions: dict[str, str],
) -> list[str]:
    """The "Machine" bullets of a side benchmark's report (state saves, backfill).

    ``facts`` is :func:`machine_facts` plus ``commit_at_end`` and ``nice``; ``loads`` the
    1-minute load averages sampled ``during`` the measurements.
    """
    changed = facts["commit_at_end"] != commit
    return [
        f"* CPU: {facts['cpu']}, {facts['cores']} cores; memory {facts['memory_gib']} GiB; "
        f"Linux {facts['kernel']}; Python {facts['python']}",
        f"* load average (1 min) {during}: min {min(loads):.2f}, median "
        f"{median(loads):.2f}, max {max(loads):.2f}; the benchmark ran at nice {facts['nice']}"
        if loads
        else "* load: -",
        f"* started {started}, took {elapsed / 60:.1f} min",
        f"* commit `{commit}`"
        + (
            f" (**the tree changed during the run**: `{facts['commit_at_end']}` at the end)"
            if changed
            else ""
        )
        + "; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]


def _fmt_s(value: float) -> str:
    return f"{value:.1f}" if value == value else "-"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a == a and b == b and b > 0 else "-"


class Table:
    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = runs

    def pick(self, size: int, scenario: str, tool: str) -> list[Run]:
        return [
            r
            for r in self.runs
            if (r.size, r.scenario, r.tool) == (size, scenario, tool) and r.exit_code == 0
        ]

    def wall(self, size: int, scenario: str, tool: str) -> float:
        return median([r.wall for r in self.pick(size, scenario, tool)])

    def cpu(self, size: int, scenario: str, tool: str) -> float:
        return median([r.cpu for r in self.pick(size, scenario, tool)])

    def rss(self, size: int, scenario: str, tool: str) -> float:
        return median([r.tree_peak_rss for r in self.pick(size, scenario, tool)]) / MB

    def what(self, size: int, scenario: str, tool: str) -> str:
        runs = self.pick(size, scenario, tool)
        if not runs:
            return "-"
        built = median([r.models_built or 0 for r in runs])
        tests = median([r.tests_run or 0 for r in runs])
        return f"{built:.0f}/{tests:.0f}"


def markdown_table(runs: Sequence[Run], sizes: Sequence[int], scenarios: Sequence[str]) -> str:
    t = Table(runs)
    lines = [
        "| N | scenario | dbt build | orc dbt build | ours | ours/plain | ours/orc "
        "| CPU s plain / orc / ours (ours/plain, ours/orc) | peak RSS MB plain / orc / ours "
        "| built/tests plain / orc / ours |",
        "|---:|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for size in sizes:
        for scenario in scenarios:
            plain, orc, ours = (t.wall(size, scenario, tool) for tool in TOOLS)
            cpu = [t.cpu(size, scenario, tool) for tool in TOOLS]
            cpu_text = " / ".join(_fmt_s(c) for c in cpu)
            cpu_text += f" ({_ratio(cpu[2], cpu[0])}, {_ratio(cpu[2], cpu[1])})"
            rss = " / ".join(f"{t.rss(size, scenario, tool):.0f}" for tool in TOOLS)
            what = " / ".join(t.what(size, scenario, tool) for tool in TOOLS)
            lines.append(
                f"| {size} | {SCENARIO_TITLES[scenario]} | {_fmt_s(plain)} s | {_fmt_s(orc)} s "
                f"| {_fmt_s(ours)} s | **{_ratio(ours, plain)}** | **{_ratio(ours, orc)}** "
                f"| {cpu_text} | {rss} | {what} |"
            )
    return "\n".join(lines)


def targets_table(bench: Bench, micro: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    t = Table(bench.runs)
    lines = ["| target | measured | met? |", "|---|---:|---|"]
    missed = []
    for size, scenario, baseline, limit in TARGETS:
        ours, base = t.wall(size, scenario, "ours"), t.wall(size, scenario, baseline)
        if ours != ours or base != base:
            continue
        ratio = ours / base
        ok = ratio <= limit
        cpu = _ratio(t.cpu(size, scenario, "ours"), t.cpu(size, scenario, baseline))
        name = f"{size} models, {SCENARIO_TITLES[scenario]}: ours/{baseline} <= {limit:.2f}x"
        lines.append(f"| {name} | {ratio:.2f}x (CPU {cpu}) | {'met' if ok else '**missed**'} |")
        if not ok:
            missed.append(name)
    for result in micro:
        if result["nodes"] != 10_000 or result["with_airflow"]:
            continue
        total, cpu = _plan_merge(result), _plan_merge(result, "_cpu")
        ok = total < PLAN_MERGE_TARGET_SECONDS
        name = "planner + merge for 10k nodes < 1 s (plan no-op + outcomes + merge)"
        verdict = "met" if ok else "**missed**"
        lines.append(f"| {name} | {total:.2f} s (CPU {cpu:.2f} s) | {verdict} |")
        if not ok:
            missed.append(name)
    parents = [r.parent_peak_rss for r in bench.runs if r.tool == "ours" and r.exit_code == 0]
    if parents:
        peak = max(parents)
        ok = peak < PARENT_RSS_TARGET
        name = "parent (CLI) process peak RSS < 250 MB, any run"
        lines.append(f"| {name} | {peak / MB:.0f} MB | {'met' if ok else '**missed**'} |")
        if not ok:
            missed.append(name)
    task = [r.parent_peak_rss for r in bench.airflow_runs if r.tool == "airflow"]
    if task:
        peak = max(task)
        ok = peak < PARENT_RSS_TARGET
        name = "Airflow task process (`airflow dags test`) peak RSS < 250 MB"
        lines.append(f"| {name} | {peak / MB:.0f} MB | {'met' if ok else '**missed**'} |")
        if not ok:
            missed.append(name)
    return "\n".join(lines), missed


def airflow_table(runs: Sequence[Run]) -> str:
    if not runs:
        return ""
    lines = [
        "| way | wall (median) | CPU (median) | peak RSS tree | parent process peak "
        "| dbt worker peak | built/tests |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for tool, title in (("ours", "CLI"), ("airflow", "`airflow dags test` (operator)")):
        ok = [r for r in runs if r.tool == tool and r.exit_code == 0]
        if not ok:
            lines.append(f"| {title} | failed | | | | | |")
            continue
        lines.append(
            f"| {title} | {median([r.wall for r in ok]):.1f} s "
            f"| {median([r.cpu for r in ok]):.1f} s "
            f"| {median([r.tree_peak_rss for r in ok]) / MB:.0f} MB "
            f"| {median([r.parent_peak_rss for r in ok]) / MB:.0f} MB "
            f"| {median([r.worker_peak_rss for r in ok]) / MB:.0f} MB "
            f"| {ok[0].models_built}/{ok[0].tests_run} |"
        )
    return "\n".join(lines)


def _plan_merge(result: dict[str, Any], suffix: str = "") -> float:
    phases = result["phases"]
    return float(
        sum(phases.get(f"{k}{suffix}", float("nan")) for k in ("plan_noop", "outcomes", "merge"))
    )


def micro_table(results: Sequence[dict[str, Any]]) -> str:
    if not results:
        return ""
    names = [
        ("decode", "decode graph message"),
        ("graph", "Graph.from_message"),
        ("plan_cold", "fingerprints + plan, no state"),
        ("plan_noop", "fingerprints + plan, no-op"),
        ("plan_one_source", "fingerprints + plan, one source new"),
        ("outcomes", "state_updates (full build)"),
        ("merge", "merge_entries"),
        ("state_save", "LocalFileStateStore.save"),
        ("state_load", "LocalFileStateStore.load"),
        ("report", "summary + node_details + plan table"),
    ]
    plain = [r for r in results if not r["with_airflow"]]
    header = "| phase | " + " | ".join(f"{r['nodes'] // 1000}k nodes" for r in plain) + " |"
    lines = [header, "|---|" + "---:|" * len(plain)]
    for key, title in names:
        cells = " | ".join(
            f"{r['phases'][key]:.2f} s (CPU {r['phases'].get(key + '_cpu', float('nan')):.2f})"
            for r in plain
        )
        lines.append(f"| {title} | {cells} |")
    totals = " | ".join(
        f"**{_plan_merge(r):.2f} s** (CPU {_plan_merge(r, '_cpu'):.2f})" for r in plain
    )
    lines.append(f"| **planner + merge** (plan no-op + state_updates + merge) | {totals} |")
    for with_airflow, title in ((False, "package only"), (True, "with Airflow imported")):
        row = [r for r in results if r["with_airflow"] is with_airflow]
        cells = " | ".join(
            f"{r['rss_after_imports'] / MB:.0f} → {r['peak_rss'] / MB:.0f} MB" for r in row
        )
        lines.append(f"| process RSS after imports → peak, {title} | {cells} |")
    return "\n".join(lines)


def write_report(
    bench: Bench, micro: Sequence[dict[str, Any]], facts: dict[str, Any], versions: dict[str, Any]
) -> Path:
    sizes = sorted({r.size for r in bench.runs})
    scenarios = [s for s in SCENARIOS if any(r.scenario == s for r in bench.runs)]
    targets, missed = targets_table(bench, micro)
    loads = [r.load_before for r in [*bench.runs, *bench.airflow_runs]]
    today = dt.date.today().isoformat()
    name = today + ("-quick" if bench.args.quick else "")
    out = Path(bench.args.output) if bench.args.output else RESULTS / f"{name}.md"
    differing = {k: v for k, v in bench.consistency.items() if v}
    lines = [
        f"# Benchmark results {today}",
        "",
        f"`{' '.join(sys.argv)}` — {bench.args.reps} repetition(s), medians; tools alternated "
        "per repetition; every run on a fresh copy of project, warehouse and state.",
        "",
        "## Machine",
        "",
        f"* CPU: {facts['cpu']}, {facts['cores']} cores; memory {facts['memory_gib']} GiB; "
        f"Linux {facts['kernel']}; Python {facts['python']}",
        f"* load average (1 min) before the runs: min {min(loads):.2f}, median "
        f"{median(loads):.2f}, max {max(loads):.2f}"
        if loads
        else "* load: -",
        f"* started {bench.args.started}, took {bench.args.elapsed / 60:.1f} min",
        f"* commit `{bench.args.commit}`"
        + (
            f" (**the tree changed during the run**: `{facts['commit_at_end']}` at the end)"
            if facts["commit_at_end"] != bench.args.commit
            else ""
        )
        + "; "
        + ", ".join(f"{k} {v}" for k, v in versions["main"].items()),
        "* dbt-orchestra environment (`bench/.venv-orc`): "
        + ", ".join(f"{k} {v}" for k, v in versions["orc"].items()),
        "",
        "## Wall time (median seconds), ratios ours/plain and ours/orc",
        "",
        "Peak RSS is of the whole process tree (sum over live processes, /proc sampled every "
        "50 ms). built/tests: models built and tests run, medians.",
        "",
        markdown_table(bench.runs, sizes, scenarios),
        "",
        "## Targets",
        "",
        targets,
        "",
    ]
    if missed:
        lines += ["Missed: " + "; ".join(missed), ""]
    if bench.airflow_runs:
        r0 = bench.airflow_runs[0]
        lines += [
            f"## The operator through Airflow ({r0.size} models, {SCENARIO_TITLES[r0.scenario]})",
            "",
            "`airflow dags test` runs the task in its own process (the parent) with the dbt "
            "worker below it, against a fresh copy of a migrated SQLite metadata DB each time.",
            "",
            airflow_table(bench.airflow_runs),
            "",
        ]
    if micro:
        lines += [
            "## Parent side on synthetic graphs (bench/micro.py; 10k nodes: median of "
            f"{micro[0]['repeat']} runs, larger: one run)",
            "",
            micro_table(micro),
            "",
        ]
    lines += ["## Warehouse compared with plain dbt (first repetition)", ""]
    if not bench.consistency:
        lines.append("Not compared (`--no-compare`).")
    elif not differing:
        lines.append("Every relation has the same row count and sum(amount) as plain dbt's.")
    else:
        for key, rels in sorted(differing.items()):
            lines.append(f"* {key}: {len(rels)} relation(s) differ: {', '.join(rels[:8])}")
    lines += [
        "",
        "## All runs",
        "",
        "| N | scenario | tool | rep | wall s | CPU s | tree MB | parent MB "
        "| worker MB | built | tests | load | exit |",
        "|" + "---|" * 13,
    ]
    for r in [*bench.runs, *bench.airflow_runs]:
        lines.append(
            f"| {r.size} | {r.scenario} | {r.tool} | {r.rep} | {r.wall:.2f} | {r.cpu:.2f} "
            f"| {r.tree_peak_rss / MB:.0f} | {r.parent_peak_rss / MB:.0f} "
            f"| {r.worker_peak_rss / MB:.0f} | {r.models_built} | {r.tests_run} "
            f"| {r.load_before:.2f} | {r.exit_code} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    raw = {
        "args": {k: v for k, v in vars(bench.args).items()},
        "machine": facts,
        "versions": versions,
        "specs": bench.specs,
        "runs": [asdict(r) for r in bench.runs],
        "airflow_runs": [asdict(r) for r in bench.airflow_runs],
        "micro": list(micro),
        "consistency": bench.consistency,
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    return out


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="model counts (default: 20 500)")
    parser.add_argument("--reps", type=int, help="repetitions per tool (default 3, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=20, 1 repetition")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument(
        "--airflow-size", type=int, help="size for the Airflow run (default: largest; 0: none)"
    )
    parser.add_argument("--airflow-scenario", choices=SCENARIOS[1:], default="noop")
    parser.add_argument(
        "--micro-sizes", type=int, nargs="*", help="micro-benchmark node counts (default 10k 50k)"
    )
    parser.add_argument("--no-compare", action="store_true", help="skip the warehouse comparison")
    parser.add_argument(
        "--no-loaded-at-field",
        dest="loaded_at_field",
        action="store_false",
        help="sources without loaded_at_field: our no-op reuse then rests on implicit freshness",
    )
    parser.add_argument("--work-dir", help="scratch directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--output", help="results file (default bench/results/<date>.md)")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [20] if args.quick else [20, 500]
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.airflow_size is None:
        args.airflow_size = max(args.sizes)
    if args.micro_sizes is None:
        args.micro_sizes = [10_000] if args.quick else [10_000, 50_000]
    return args


@contextlib.contextmanager
def scratch(path: str | None, keep: bool) -> Iterator[Path]:
    root = Path(path) if path else Path(tempfile.mkdtemp(prefix="orchestra-dbt-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = dt.datetime.now().isoformat(timespec="seconds")
    args.commit = git_commit()
    began = time.perf_counter()
    try:
        import airflow_provider_orchestra_dbt  # noqa: F401
    except ImportError:
        raise SystemExit(
            "run this with the project's environment: uv run python bench/run.py"
        ) from None
    orc = ensure_orc_env() if "orc" in args.tools else Path("orc")
    versions = {
        "main": package_versions(
            sys.executable,
            [
                "airflow-provider-orchestra-dbt",
                "dbt-core",
                "dbt-duckdb",
                "duckdb",
                "apache-airflow",
            ],
        ),
        "orc": package_versions(
            str(ORC_VENV / "bin" / "python"), ["dbt-orchestra", "dbt-core", "dbt-duckdb", "duckdb"]
        )
        if ORC_VENV.exists()
        else {},
    }
    with scratch(args.work_dir, args.keep) as work:
        log(f"scratch directory {work}; versions {versions}")
        bench = Bench(args=args, work=work, orc=orc)
        bench.warm_up()
        for size in args.sizes:
            bench.run_size(size)
        micro = run_micro(sys.executable, args.micro_sizes, 3) if args.micro_sizes else []
        args.elapsed = time.perf_counter() - began
        facts = machine_facts() | {"commit_at_end": git_commit()}
        out = write_report(bench, micro, facts, versions)
        if args.keep:
            log(f"kept {work} (logs under {work}/logs)")
    print()
    print(markdown_table(bench.runs, args.sizes, args.scenarios))
    print()
    print(targets_table(bench, micro)[0])
    print()
    log(f"wrote {out} in {args.elapsed / 60:.1f} min")
    failed = [r for r in [*bench.runs, *bench.airflow_runs] if r.exit_code != 0]
    if failed:
        log(f"{len(failed)} run(s) failed: " + ", ".join(r.log for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
