"""Profile one benchmark scenario of our CLI with py-spy, parent and dbt worker together.

    uv run python bench/profile.py --size 500 --scenario noop [--tool ours] [--rate 200]

Generates the project (``bench/generate.py``), prepares it with an unmeasured cold build of the
same tool (ours for ``--tool airflow``, the operator through ``airflow dags test``; ``plain`` and
``orc`` profile the other two tools), applies the scenario, then runs the tool under ``py-spy
record --subprocesses --threads --idle`` (py-spy is installed, pinned, into ``bench/.venv-prof``
on first use). Idle samples are kept so the profile adds up to wall time: a thread waiting for
DuckDB or for the worker shows where the wall clock goes, not only where the CPU goes.

Prints, per process, the main thread's wall time split into the functions it spent it in
(inclusive, i.e. including callees) and the hottest frames (self time), and writes that text to
``--output`` (default ``bench/results/profile-<tool>-<scenario>-n<size>.txt``). ``--summarize FILE``
only summarises an existing raw py-spy file.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402
import run as bench_run  # noqa: E402

PROF_VENV = BENCH / ".venv-prof"
PY_SPY_VERSION = "0.4.3"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def ensure_py_spy() -> Path:
    py_spy = PROF_VENV / "bin" / "py-spy"
    if py_spy.exists():
        return py_spy
    bench_run.make_venv(PROF_VENV, [f"py-spy=={PY_SPY_VERSION}"])
    return py_spy


# -- summarising a raw (collapsed stacks) py-spy file --------------------------------------------


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match['func']} ({match['file']})"


def summarize(raw: Path, rate: int, top: int = 25) -> str:
    """Per process main thread: inclusive and self time of functions, in seconds of wall time."""
    threads: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    selfs: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    totals: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        parts = stack.split(";")
        procs = [p for p in parts if p.startswith("process ")]
        thread = next((p for p in parts if p.startswith("thread ")), "thread ?")
        frames = [p for p in parts if not p.startswith(("process ", "thread "))]
        if "MainThread" not in thread or not procs:
            continue
        proc = procs[-1].split(":", 1)[1].strip('"')
        proc = re.sub(r"/\S+/(?=[^/ ]+\.py)", "", proc)[:110]
        key = (procs[-1].split(":", 1)[0], proc)
        totals[key] += count
        seen = set()
        for frame in frames:
            name = _short(frame)
            if name not in seen:
                threads[key][name] += count
                seen.add(name)
        if frames:
            selfs[key][_short(frames[-1])] += count
    out = []
    for key, total in sorted(totals.items(), key=lambda kv: kv[0][0]):
        seconds = total / rate
        out.append(f"== {key[0]} {key[1]}\n   main thread: {seconds:.2f} s of samples (wall)")
        out.append("   our code, inclusive (function and its callees), >= 0.5%:")
        for name, count in threads[key].most_common():
            if "airflow_provider_orchestra_dbt/" in name and count >= total / 200:
                out.append(f"   {count / rate:7.2f} s {100 * count / total:5.1f}%  {name}")
        out.append("   everything, inclusive:")
        for name, count in threads[key].most_common(top):
            out.append(f"   {count / rate:7.2f} s {100 * count / total:5.1f}%  {name}")
        out.append("   self (the frame on top):")
        for name, count in selfs[key].most_common(12):
            out.append(f"   {count / rate:7.2f} s {100 * count / total:5.1f}%  {name}")
        out.append("")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--scenario", choices=bench_run.SCENARIOS, default="noop")
    parser.add_argument("--tool", choices=("ours", "airflow", "plain", "orc"), default="ours")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--output", help="summary file (default bench/results/profile-...)")
    parser.add_argument("--work-dir", help="scratch directory (default: a temp dir, removed)")
    parser.add_argument("--summarize", help="only summarise this raw py-spy file")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(Path(args.summarize), args.rate))
        return 0

    py_spy = ensure_py_spy()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="orchestra-dbt-profile-"))
    try:
        ns = argparse.Namespace(scenarios=[], reps=1, tools=[args.tool], no_compare=True)
        orc = bench_run.ensure_orc_env() if args.tool == "orc" else Path("orc")
        bench = bench_run.Bench(args=ns, work=work, orc=orc)
        prep_tool = "ours" if args.tool == "airflow" else args.tool
        pristine = work / "pristine"
        spec = generate.write_project(pristine / "project", args.size)
        generate.create_warehouse(pristine / "warehouse.duckdb", spec)
        (pristine / "state").mkdir()
        (pristine / "state" / "orc.json").write_text('{"state": {}}\n')
        ws = bench_run.Workspace(work / "run")
        ws.restore(pristine)
        if args.scenario != "cold":
            bench_run.log(f"preparing: an unmeasured cold build of {args.size} models")
            prep = bench.measure(prep_tool, ws, "prepare", args.size, 0)
            if prep.exit_code != 0:
                raise SystemExit(f"the preparing build failed: {prep.log}")
            ws.report.unlink(missing_ok=True)
        bench.prepare_scenario(ws, args.scenario, spec)
        raw = work / "profile.raw"
        if args.tool == "airflow":
            home = work / "airflow-pristine"
            snapshot = work / "prepared"
            ws.snapshot(snapshot)
            bench._airflow_setup(home, ws)
            ws.restore(snapshot)
            shutil.copytree(home, ws.airflow)
            bench.prepare_scenario(ws, args.scenario, spec)
            argv_ = [
                sys.executable,
                "-m",
                "airflow",
                "dags",
                "test",
                bench_run.DAG_ID,
                "2026-01-01",
            ]
            env, cwd = bench._airflow_env(ws), ws.root
        else:
            argv_ = bench.command(args.tool, ws, args.scenario)
            env, cwd = bench.env(args.tool, ws), ws.project
        bench_run.log(f"profiling {args.tool} {args.scenario} at {args.size} models")
        record = [str(py_spy), "record", "--subprocesses", "--threads", "--idle"]
        record += ["--rate", str(args.rate), "--format", "raw", "--output", str(raw), "--"]
        with (work / "profiled.log").open("wb") as sink:
            done = subprocess.run(
                record + argv_, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        if done.returncode != 0:
            raise SystemExit(f"the profiled run failed; see {work / 'profiled.log'}")
        text = (
            f"py-spy {PY_SPY_VERSION}, {args.rate} samples/s, idle included; "
            f"{args.tool} {args.scenario}, {args.size} models; commit {bench_run.git_commit()}, "
            f"{dt.datetime.now():%Y-%m-%d %H:%M}, load {os.getloadavg()[0]:.1f}\n\n"
            + summarize(raw, args.rate)
        )
        out = Path(
            args.output
            or bench_run.RESULTS / f"profile-{args.tool}-{args.scenario}-n{args.size}.txt"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(text)
        bench_run.log(f"wrote {out}")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
