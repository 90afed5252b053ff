"""Benchmark: state saves per second and save latency with many concurrent writers.

    uv run python bench/state_saves.py              # 3 backends x {1, 8, 32} writers, 5 saves each
    uv run python bench/state_saves.py --quick      # 2 saves per writer, 15 s cap (smoke run)
    uv run python bench/state_saves.py --backends s3 --writers 32 --saves 12 --time-cap 120

For each state backend (local file, Orchestra HTTP API, S3) and each number of writers, a
fresh state document of ``--entries`` (2,000) entries is laid down and ``--writers`` spawned
processes (one per writer, as separate Airflow tasks are) each make ``--saves`` saves. A save
is ``StateStore.save(updates)``, the read-modify-write the session makes at the end of a run
(``execution/session.py``: ``store.save(outcome.updates)``), with ``--handful`` entries shaped
like those ``decisions/outcomes.py`` records. Writers build their store and connect before a
barrier and are released together, so their saves overlap instead of being staggered by
process start-up; each times every save with ``time.perf_counter``.

The servers are the repository's own test servers, on 127.0.0.1 in this process:
``tests/support/orchestra_server.py`` (the Orchestra state API, merging PATCHes per key) and
``tests/support/s3_server.py`` (moto's S3 server; it answers one request at a time, which is
S3's per-request atomicity, see ``_SerializedApp``). The local file lives in a temp directory.
Stores run with their default timeouts and retry budgets, as in production.

Every writer owns distinct keys and every save writes keys of its own, marked with the writer
and save number (``run.run_id``), so afterwards the final document shows whether any update
was lost: each successful save's entries must be there with its marker, and every other
entry must be unchanged. Retries are counted where a store shows them cheaply: S3 conditional
writes that lost the race (HTTP 412/409 on PutObject), HTTP retries (the store's warnings).

Bounded: writers stop starting saves ``--time-cap`` seconds after the release (the saves
left are counted as "capped"), and a writer still running ``KILL_GRACE`` seconds after that
is killed (its save in flight and the rest counted as "killed", apart from failures). Also
recorded per save: the writer's CPU time, which other load on the machine barely moves, and
per row the CPU time of this process, where the servers run. Writes
``bench/results/<date>-state-saves.md`` (``-quick`` with ``--quick``) and the raw numbers
as ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
# The test servers (tests/support) are imported as ``support.*``, as the tests do.
sys.path.insert(1, str(REPO / "tests"))

from run import git_commit, log, machine_facts, machine_lines, package_versions  # noqa: E402

RESULTS = BENCH / "results"
BACKENDS = ("local", "http", "s3")
BACKEND_TITLES = {"local": "local file", "http": "Orchestra HTTP API", "s3": "S3 (moto)"}
HOW = {
    "local": "flock on `<file>.lock`, re-read and parse the whole document, merge, write a "
    "temp file, fsync, rename, fsync the directory",
    "http": "one PATCH carrying only the updates; the server merges them per key (no read)",
    "s3": "GET the object and its ETag, merge, PUT with `If-Match`; a lost race (412/409) "
    "re-reads and tries again after a jittered backoff",
}
SPAWN = multiprocessing.get_context("spawn")
BASE_STAMP = "2026-01-01T00:00:00+00:00"
S3_KEY = "orchestra/state.json"
HTTP_LOGGER = "airflow_provider_orchestra_dbt.state.http"
# Seconds for the slowest writer to import its store, connect and reach the barrier; 32
# processes importing boto3 on 2 busy cores take a while.
STARTUP_TIMEOUT = 180.0
# Past the time cap a save in flight may still be retrying; the stores' own budgets
# (120 s) are longer than a benchmark should wait, so a writer is killed after this.
KILL_GRACE = 45.0


# -- the document and the updates ----------------------------------------------------------


def state_key(index: int) -> str:
    return f"analytics.bench.m_{index:05d}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def node_entry(index: int, stamp: str, marker: str) -> dict[str, Any]:
    """One entry with the fields and sizes ``decisions/outcomes.py`` records for a built model."""
    name = f"m_{index:05d}"
    sources = [
        f"source.bench.raw_{(index + k) % 20:02d}.t_{(index * 7 + k) % 40:03d}" for k in (0, 1)
    ]
    return {
        "unique_id": f"model.bench.{name}",
        "checksum": _digest(f"{name}:{marker}"),
        "checksum_parts": {
            part: _digest(f"{part}:{name}") for part in ("code", "config", "macros", "vars")
        }
        | {"env_vars": _digest("{}")},
        "last_updated": stamp,
        "sources": dict.fromkeys(sources, BASE_STAMP),
        "source_tokens": {},
        "upstream": {state_key((index * 13 + k) % 997): BASE_STAMP for k in (1, 2, 3)},
        "status": "success",
        "execution_time": round(0.5 + (index % 50) / 10, 3),
        "run": {
            "dag_id": "bench_state_saves",
            "run_id": marker,
            "task_id": f"model_{name}",
            "try_number": 1,
            "map_index": -1,
        },
    }


def base_entries(count: int) -> dict[str, dict[str, Any]]:
    return {state_key(i): node_entry(i, BASE_STAMP, "base") for i in range(count)}


def base_document(count: int) -> bytes:
    """The starting document, serialised by the package itself (the on-disk form)."""
    from airflow_provider_orchestra_dbt.state import StateDocument

    return StateDocument(base_entries(count), {}).to_json_bytes()


def run_id(writer: int, save: int) -> str:
    return f"bench_w{writer:02d}_s{save:03d}"


def save_keys(writer: int, save: int, saves: int, handful: int) -> range:
    """The key indices save ``save`` of ``writer`` writes: a slice no other save writes.

    Distinct per save, not only per writer, so the final document can show every single
    save's entries rather than just each writer's last.
    """
    first = (writer * saves + save) * handful
    return range(first, first + handful)


def updates_for(writer: int, save: int, saves: int, handful: int) -> dict[str, dict[str, Any]]:
    from airflow_provider_orchestra_dbt.state import format_timestamp

    stamp = format_timestamp(dt.datetime.now(dt.UTC))
    marker = run_id(writer, save)
    return {
        state_key(i): node_entry(i, stamp, marker) for i in save_keys(writer, save, saves, handful)
    }


# -- the writers (spawned processes) -------------------------------------------------------


@dataclass
class WriterSpec:
    writer: int
    saves: int
    handful: int
    time_cap: float
    target: dict[str, Any]  # what make_store needs, plain data so it pickles


@dataclass
class WriterResult:
    """What the parent learnt from one writer's messages (see ``run_writer``)."""

    writer: int
    released: float | None = None  # time.monotonic() (system-wide on Linux) at the release
    finished: float | None = None  # None: killed by the benchmark before it said it was done
    latencies: list[float] = field(default_factory=list)  # seconds, successful saves
    cpu: list[float] = field(default_factory=list)  # the writer's CPU seconds per such save
    attempted: int = 0
    saved: list[int] = field(default_factory=list)  # save numbers that returned
    failed: int = 0  # saves that raised
    errors: list[str] = field(default_factory=list)
    retries: int | None = None  # None: the store shows no count
    busy: float = 0.0  # the writer's CPU seconds since the release
    stopped_by_cap: bool = False

    def take(self, message: tuple[Any, ...]) -> None:
        kind, _, *rest = message
        if kind == "released":
            self.released = rest[0]
        elif kind == "saved":
            save, latency, cpu, self.retries, self.busy = rest
            self.attempted += 1
            self.saved.append(save)
            self.latencies.append(latency)
            self.cpu.append(cpu)
        elif kind == "failed":
            save, text, self.retries, self.busy = rest
            self.attempted += save is not None
            self.failed += save is not None
            self.errors.append(text)
        elif kind == "done":
            self.finished, self.stopped_by_cap = rest


def make_store(target: dict[str, Any]) -> Any:
    """The store a task would build for ``target``, with the package's defaults."""
    from airflow_provider_orchestra_dbt.state import (
        LocalFileStateStore,
        OrchestraHttpStateStore,
        S3StateStore,
    )

    kind = target["backend"]
    if kind == "local":
        return LocalFileStateStore(target["path"])
    if kind == "http":
        return OrchestraHttpStateStore(target["url"], target["token"], label="bench")
    return S3StateStore(target["bucket"], S3_KEY, label="bench", **target["kwargs"])


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def count_retries(store: Any, kind: str) -> Callable[[], int | None]:
    """A way to read how many retries the store made, where that is cheap to see."""
    if kind == "http":
        # The HTTP store logs one warning per retried request and nothing else at that level.
        handler = _Counter()
        logger = logging.getLogger(HTTP_LOGGER)
        logger.addHandler(handler)
        logger.propagate = False  # counted, not printed 32 times over
        return lambda: handler.count
    if kind == "s3":
        lost = [0]

        def on_put(http_response: Any, **_: Any) -> None:
            if http_response.status_code in (409, 412):
                lost[0] += 1

        # The store's own client (built with its timeouts and retry mode), reached through a
        # private accessor: the bench counts on it, the store is left as production runs it.
        store._get_client().meta.events.register("after-call.s3.PutObject", on_put)
        return lambda: lost[0]
    return lambda: None


def writer_main(spec: WriterSpec, start: Barrier, out: Any) -> None:
    """Body of one writer process: reports on ``out`` as it goes, ends with ``done``.

    One message per save rather than one at the end, so the saves of a writer killed at the
    time limit are still counted.
    """
    try:
        run_writer(spec, start, out)
    except BaseException as exc:  # reported, not raised: the parent prints it
        out.put(("failed", spec.writer, None, f"writer {spec.writer}: {_describe(exc)}", None, 0))
        # The others would otherwise wait the whole start-up timeout for this one.
        start.abort()
        out.put(("done", spec.writer, time.monotonic(), False))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_writer(spec: WriterSpec, start: Barrier, out: Any) -> None:
    store = make_store(spec.target)
    # Imports, client and connection happen before the barrier, and the document is
    # loaded, as the session does at the start of a run; only the saves are timed.
    store.load()
    retries = count_retries(store, spec.target["backend"])
    start.wait(timeout=STARTUP_TIMEOUT)
    released, busy = time.monotonic(), time.process_time()
    out.put(("released", spec.writer, released))
    stopped = False
    for save in range(spec.saves):
        if time.monotonic() >= released + spec.time_cap:
            stopped = True
            break
        updates = updates_for(spec.writer, save, spec.saves, spec.handful)
        began, cpu = time.perf_counter(), time.process_time()
        try:
            store.save(updates)
        except Exception as exc:
            text = f"save {save}: {_describe(exc)}"
            out.put(("failed", spec.writer, save, text, retries(), time.process_time() - busy))
            continue
        latency, cpu = time.perf_counter() - began, time.process_time() - cpu
        # Running totals ride along with every save, so a writer killed later still has them.
        spent = time.process_time() - busy
        out.put(("saved", spec.writer, save, latency, cpu, retries(), spent))
    out.put(("done", spec.writer, time.monotonic(), stopped))


# -- the backends (servers in this process) ------------------------------------------------


class Backend(Protocol):
    name: str

    def reset(self, document: bytes) -> dict[str, Any]:
        """Lay down ``document`` as the whole state; return the writers' target."""
        ...


@dataclass
class LocalBackend:
    root: Path
    name: str = "local"
    _runs: int = 0

    def reset(self, document: bytes) -> dict[str, Any]:
        self._runs += 1
        path = self.root / f"run{self._runs}" / "state.json"
        path.parent.mkdir(parents=True)
        path.write_bytes(document)
        return {"backend": self.name, "path": str(path)}


@dataclass
class HttpBackend:
    server: Any  # support.orchestra_server.OrchestraStateServer
    name: str = "http"

    def reset(self, document: bytes) -> dict[str, Any]:
        self.server.set_document(json.loads(document))
        self.server.clear_requests()
        return {"backend": self.name, "url": self.server.state_url, "token": self.server.token}


@dataclass
class S3Backend:
    server: Any  # support.s3_server.MotoS3Server
    name: str = "s3"

    def reset(self, document: bytes) -> dict[str, Any]:
        # A new bucket per scenario, so no scenario inherits another's object versions.
        params = self.server.create_bucket("bench")
        params.client().put_object(
            Bucket=params.bucket, Key=S3_KEY, Body=document, ContentType="application/json"
        )
        return {"backend": self.name, "bucket": params.bucket, "kwargs": params.store_kwargs()}


@contextlib.contextmanager
def open_backend(name: str, scratch: Path) -> Iterator[Backend]:
    """Start what ``name`` needs and stop it on the way out, whatever happened."""
    if name == "local":
        yield LocalBackend(scratch / "local")
    elif name == "http":
        from support.orchestra_server import OrchestraStateServer

        with OrchestraStateServer() as server:
            yield HttpBackend(server)
    else:
        from support.s3_server import MotoS3Server

        with MotoS3Server() as server:
            yield S3Backend(server)


# -- one scenario --------------------------------------------------------------------------


@dataclass
class Scenario:
    """One row: a backend, a number of writers, and what came of their saves."""

    backend: str
    writers: int
    saves_per_writer: int
    handful: int
    load_before: float
    planned: int = 0
    saved: int = 0
    failed: int = 0  # raised, or never made because the writer crashed
    unfinished: int = 0  # not made or cut short: the benchmark killed the writer
    skipped: int = 0  # not started: the time cap had passed
    lost: int = 0
    wall: float = float("nan")
    latencies: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    writers_cpu: float = 0.0
    retries: int | None = None
    errors: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    final_entries: int = 0

    @property
    def rate(self) -> float:
        return self.saved / self.wall if self.wall > 0 else float("nan")

    @property
    def cores(self) -> float:
        """CPU the row got (writers + servers) per second of wall time: how starved it ran."""
        busy = self.writers_cpu + self.server_cpu
        return busy / self.wall if self.wall > 0 else float("nan")

    def count(self, results: Sequence[WriterResult]) -> None:
        """Sort every planned save into saved, failed, unfinished or skipped."""
        self.planned = self.writers * self.saves_per_writer
        for r in results:
            self.saved += len(r.saved)
            self.failed += r.failed
            not_made = self.saves_per_writer - r.attempted
            if r.finished is None:
                self.unfinished += not_made
            elif r.stopped_by_cap:
                self.skipped += not_made
            else:
                self.failed += not_made
            self.latencies += r.latencies
            self.cpu += r.cpu
            self.writers_cpu += r.busy
            self.errors += [f"writer {r.writer}: {e}" for e in r.errors]
        counts = [r.retries for r in results if r.retries is not None]
        self.retries = sum(counts) if counts else None


def percentile(values: Sequence[float], share: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = share * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spawn_writers(
    specs: Sequence[WriterSpec], run_for: float
) -> tuple[list[WriterResult], float, float]:
    """Run one process per spec, released together; every process is gone on return.

    This process waits on the barrier too, so it knows when the saves began and can kill
    writers still running ``run_for`` seconds later (they were told to stop earlier).
    Returns the writers' results, this process's CPU seconds meanwhile (the servers run in
    it) and when it stopped listening (time.monotonic()).
    """
    start = SPAWN.Barrier(len(specs) + 1)
    out = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=writer_main, args=(spec, start, out), daemon=True) for spec in specs
    ]
    results = {spec.writer: WriterResult(spec.writer) for spec in specs}
    try:
        for process in processes:
            process.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            # Broken when a writer failed to start (it aborts the barrier) or at the timeout:
            # the writers then report their errors, collected below.
            start.wait(timeout=STARTUP_TIMEOUT)
        cpu = time.process_time()
        deadline = time.monotonic() + run_for
        # Drained before joining: a child blocks in exit until its queue data is read.
        while any(r.finished is None for r in results.values()):
            try:
                message = out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            results[message[1]].take(message)
        cpu = time.process_time() - cpu
        ended = time.monotonic()
    finally:
        # One short grace for all (not per process), then whatever still runs is killed.
        grace_end = time.monotonic() + 5
        for process in processes:
            process.join(timeout=max(0.0, grace_end - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join()
        out.close()
    for result in results.values():
        if result.finished is None:
            result.errors.append("killed by the benchmark at the time limit")
    return [results[spec.writer] for spec in specs], cpu, ended


def check_final(
    final: dict[str, dict[str, Any]],
    base: dict[str, dict[str, Any]],
    results: Sequence[WriterResult],
    saves: int,
    handful: int,
) -> tuple[int, list[str]]:
    """Saves whose entries are not in ``final`` as written, and examples of what differs.

    Also checks that nothing else moved: every key not written keeps its base entry and no
    key appeared or vanished.
    """
    lost: list[str] = []
    for result in results:
        for save in result.saved:
            keys = [state_key(i) for i in save_keys(result.writer, save, saves, handful)]
            wrong = [
                k
                for k in keys
                if final.get(k, {}).get("run", {}).get("run_id") != run_id(result.writer, save)
            ]
            if wrong:
                found = final.get(wrong[0], {}).get("run", {}).get("run_id", "missing")
                lost.append(f"writer {result.writer} save {save}: {wrong[0]} holds {found}")
    count = len(lost)
    # Keys of failed saves may hold either version; only the untouched ones must be intact.
    touched = {
        state_key(i)
        for result in results
        for save in range(saves)
        for i in save_keys(result.writer, save, saves, handful)
    }
    for key, entry in base.items():
        if key not in touched and final.get(key) != entry:
            count += 1
            lost.append(f"untouched entry {key} changed or vanished")
    extra = sorted(set(final) - set(base))
    if extra:
        count += len(extra)
        lost.append(f"{len(extra)} unexpected key(s), e.g. {extra[0]}")
    return count, lost[:10]


def run_scenario(backend: Backend, writers: int, args: argparse.Namespace) -> Scenario:
    scenario = Scenario(
        backend.name, writers, args.saves, args.handful, load_before=os.getloadavg()[0]
    )
    target = backend.reset(args.document)
    specs = [WriterSpec(w, args.saves, args.handful, args.time_cap, target) for w in range(writers)]
    results, scenario.server_cpu, ended = spawn_writers(specs, args.time_cap + KILL_GRACE)
    scenario.count(results)
    released = [r.released for r in results if r.released is not None]
    if released:
        finished = [ended if r.finished is None else r.finished for r in results]
        scenario.wall = max(finished) - min(released)
    final = make_store(target).load().entries
    scenario.final_entries = len(final)
    scenario.lost, scenario.lost_examples = check_final(
        final, args.base, results, args.saves, args.handful
    )
    return scenario


# -- the report ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds == seconds else "-"


def _retries(scenario: Scenario) -> str:
    if scenario.retries is None:
        return "- (not counted)"
    noun = "lost conditional writes" if scenario.backend == "s3" else "retried requests"
    return f"{scenario.retries} {noun}"


def _bold(count: int) -> str:
    return f"**{count}**" if count else "0"


def markdown_table(scenarios: Sequence[Scenario]) -> str:
    lines = [
        "| backend | writers | saves done | failed | killed / capped | lost updates | wall s "
        "| saves/s | p50 ms | p95 ms | max ms | writer CPU ms/save (median) | server CPU s "
        "| cores used | retries / conflicts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in scenarios:
        slowest = max(s.latencies, default=float("nan"))
        lines.append(
            f"| {BACKEND_TITLES[s.backend]} | {s.writers} | {s.saved}/{s.planned} "
            f"| {_bold(s.failed)} | {s.unfinished} / {s.skipped} | {_bold(s.lost)} "
            f"| {s.wall:.1f} | {s.rate:.2f} | {_ms(percentile(s.latencies, 0.5))} "
            f"| {_ms(percentile(s.latencies, 0.95))} | {_ms(slowest)} "
            f"| {_ms(percentile(s.cpu, 0.5))} | {s.server_cpu:.1f} | {s.cores:.2f} "
            f"| {_retries(s)} |"
        )
    return "\n".join(lines)


def problems(scenarios: Sequence[Scenario]) -> list[str]:
    out = []
    for s in scenarios:
        where = f"{BACKEND_TITLES[s.backend]}, {s.writers} writers"
        out += [f"{where}: {error}" for error in s.errors[:10]]
        if len(s.errors) > 10:
            out.append(f"{where}: ... {len(s.errors) - 10} more error(s), in the .json")
        out += [f"{where}: lost: {example}" for example in s.lost_examples]
        if s.unfinished:
            out.append(f"{where}: {s.unfinished} save(s) unfinished, writers killed at the limit")
        if s.skipped:
            out.append(f"{where}: {s.skipped} save(s) not started, time cap reached")
    return out


def write_report(
    scenarios: Sequence[Scenario],
    args: argparse.Namespace,
    facts: dict[str, Any],
    versions: dict[str, str],
) -> Path:
    today = dt.date.today().isoformat()
    name = f"{today}-state-saves" + ("-quick" if args.quick else "")
    out = Path(args.output) if args.output else RESULTS / f"{name}.md"
    loads = [s.load_before for s in scenarios]
    found = problems(scenarios)
    lines = [
        f"# State saves under concurrent writers {today}",
        "",
        f"`{' '.join(sys.argv)}` — per backend and number of writers: one spawned process "
        f"per writer, released together by a barrier, each making {args.saves} save(s) of "
        f"{args.handful} entries into a {args.entries:,}-entry state document "
        f"({len(args.document) / 1024**2:.1f} MB as the package writes it), laid down fresh "
        "for every row. A save is `StateStore.save(updates)`, as the session makes it at the "
        "end of a run; stores with their default timeouts and retry budgets.",
        "",
        "## Machine",
        "",
        *machine_lines(
            facts,
            loads,
            during="before the rows",
            started=args.started,
            elapsed=args.elapsed,
            commit=args.commit,
            versions=versions,
        ),
        f"* local file on {facts['scratch_fs']} ({facts['scratch']}); servers on 127.0.0.1 in "
        "the benchmark's own process: `tests/support/orchestra_server.py` and "
        "`tests/support/s3_server.py` (moto, one request at a time)",
        "",
        "## Saves",
        "",
        "saves done: successful / planned. failed: saves that raised (or a writer that "
        "crashed). killed / capped: saves the benchmark cut short (writer killed "
        f"{KILL_GRACE:g} s after the time cap) / never started (the {args.time_cap:g} s time "
        "cap had passed). lost updates: successful saves whose entries are not in the final "
        "document as written, plus untouched entries that changed; checked on every row. "
        "Latencies: one `save()` call, over all writers' successful saves; saves/s: successful "
        "saves over the wall time from the barrier's release to the last writer's end. "
        "Writer CPU: user + system CPU of the writer process during one save, much less "
        "sensitive to other load than the latency. Server CPU: this process (the test "
        "servers run in it) during the row. cores used: the CPU seconds the writers (since "
        "their release) and the servers got, per second of wall time; well under the "
        f"{os.cpu_count()} cores means the row was starved by other load (the benchmark runs "
        "at whatever priority it was started with), and its latencies are inflated.",
        "",
        markdown_table(scenarios),
        "",
        "## What one save does",
        "",
        *[f"* {BACKEND_TITLES[b]}: {HOW[b]}" for b in args.backends],
        "",
        "## Failures and lost updates",
        "",
        *(
            [f"* {line}" for line in found]
            or ["None: every save returned and every update is in the final document."]
        ),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    raw = {
        "args": {k: v for k, v in vars(args).items() if k not in ("document", "base")},
        "machine": facts,
        "versions": versions,
        "document_bytes": len(args.document),
        "scenarios": [
            asdict(s)
            | {
                "saves_per_second": s.rate,
                "p50": percentile(s.latencies, 0.5),
                "p95": percentile(s.latencies, 0.95),
            }
            for s in scenarios
        ],
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    return out


# -- main ----------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _backend_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown}; choose from {BACKENDS}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends",
        type=_backend_list,
        default=list(BACKENDS),
        help="comma-separated, of local,http,s3 (default: all)",
    )
    parser.add_argument(
        "--writers",
        type=_int_list,
        default=[1, 8, 32],
        help="comma-separated writer counts (default 1,8,32)",
    )
    parser.add_argument("--saves", type=int, help="saves per writer (default 5, --quick 2)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 saves per writer, 15 s cap"
    )
    parser.add_argument("--entries", type=int, default=2_000, help="entries in the document")
    parser.add_argument("--handful", type=int, default=5, help="entries per save (default 5)")
    parser.add_argument(
        "--time-cap",
        type=float,
        help="seconds after the release when writers stop starting saves (30, --quick 15)",
    )
    parser.add_argument("--output", help="results file (default bench/results/<date>-...md)")
    args = parser.parse_args(argv)
    if args.saves is None:
        args.saves = 2 if args.quick else 5
    if args.time_cap is None:
        args.time_cap = 15.0 if args.quick else 30.0
    if min(args.writers, default=0) < 1 or args.saves < 1 or args.handful < 1:
        parser.error("--writers, --saves and --handful must be >= 1")
    needed = max(args.writers) * args.saves * args.handful
    if needed > args.entries:
        # Every save writes keys of its own (see save_keys), all inside the document.
        parser.error(
            f"{max(args.writers)} writers x {args.saves} saves x {args.handful} entries = "
            f"{needed} keys, more than --entries {args.entries}"
        )
    return args


def filesystem_of(path: Path) -> str:
    """The file system type the local store writes to (fsync costs differ widely)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            mount = fields[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = dt.datetime.now().isoformat(timespec="seconds")
    args.commit = git_commit()
    began = time.perf_counter()
    args.base = base_entries(args.entries)
    args.document = base_document(args.entries)
    versions = package_versions(
        sys.executable, ["airflow-provider-orchestra-dbt", "boto3", "botocore", "moto", "requests"]
    )
    scenarios: list[Scenario] = []
    scratch = Path(tempfile.mkdtemp(prefix="orchestra-dbt-state-saves-"))
    try:
        for name in args.backends:
            with open_backend(name, scratch) as backend:
                for writers in args.writers:
                    log(f"{BACKEND_TITLES[name]}: {writers} writer(s) x {args.saves} saves")
                    scenario = run_scenario(backend, writers, args)
                    scenarios.append(scenario)
                    log(
                        f"  {scenario.saved}/{scenario.planned} saved, {scenario.failed} failed, "
                        f"{scenario.unfinished} killed, {scenario.skipped} capped, "
                        f"{scenario.lost} lost, {scenario.rate:.1f} saves/s, p95 "
                        f"{_ms(percentile(scenario.latencies, 0.95))} ms"
                    )
                    for error in scenario.errors[:5]:
                        log(f"  error: {error}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.elapsed = time.perf_counter() - began
    facts = machine_facts() | {
        "commit_at_end": git_commit(),
        "scratch": str(scratch.parent),
        "scratch_fs": filesystem_of(scratch.parent),
        "nice": os.nice(0),
    }
    out = write_report(scenarios, args, facts, versions)
    print()
    print(markdown_table(scenarios))
    print()
    for line in problems(scenarios):
        print(line)
    log(f"wrote {out} in {args.elapsed / 60:.1f} min")
    bad = sum(s.failed + s.lost for s in scenarios)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
