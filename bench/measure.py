"""Wall time and memory of a whole process tree, from Linux's /proc (no psutil).

``run_measured(argv, ...)`` starts the command in its own session and, every ~50 ms until it
exits, walks the tree below it (``/proc/<pid>/task/<tid>/children`` for every thread, so children
started from any thread are found) and reads each member's memory:

* ``tree_peak_rss``: the largest *sum* of ``VmRSS`` over the live tree seen at any sample. This is
  what the machine had to hold at once. A peak shorter than the sampling interval can be missed.
* ``proc_peak_hwm``: per process (keyed by pid, named by its command), the largest ``VmHWM`` seen:
  the kernel's own high-water mark for that process, exact up to its last sample.
* ``root_maxrss``: ``ru_maxrss`` from ``wait4`` on the root: the largest *single* process among the
  root and the descendants it reaped (not a sum); a cross-check that misses nothing.

Wall time is from just before ``Popen`` to ``wait4`` returning. CPU time (user + system) comes
from the same ``wait4``: the root's own plus that of every descendant that was waited for (each
tool waits for its dbt subprocesses), which is far less sensitive to other load on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_INTERVAL = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measurement:
    argv: list[str]
    exit_code: int
    wall_seconds: float
    tree_peak_rss: int  # bytes
    root_maxrss: int  # bytes
    proc_peak_hwm: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (cmd, bytes)
    samples: int = 0
    max_processes: int = 0
    timed_out: bool = False
    root_pid: int = 0
    cpu_seconds: float = 0.0  # user + system of the root and every descendant it waited for

    @property
    def root_hwm(self) -> int:
        """Peak RSS of the root process itself (VmHWM; ru_maxrss if it exited before a sample)."""
        seen = self.proc_peak_hwm.get(self.root_pid)
        return seen[1] if seen is not None else self.root_maxrss

    def peak_of(self, needle: str) -> int:
        """Largest VmHWM among processes whose command line contains ``needle``."""
        return max((hwm for cmd, hwm in self.proc_peak_hwm.values() if needle in cmd), default=0)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return found


def _tree(root: int) -> list[int]:
    members, stack = [], [root]
    while stack:
        pid = stack.pop()
        members.append(pid)
        stack.extend(_children(pid))
    return members


def _memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in bytes, or None for a process that is gone or a zombie."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break  # VmRSS comes after VmHWM
    except (OSError, ValueError):
        return None
    if rss is None or hwm is None:
        return None
    return rss, hwm


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


class _Sampler(threading.Thread):
    def __init__(self, root: int) -> None:
        super().__init__(daemon=True, name="bench-rss-sampler")
        self.root = root
        self.stop_event = threading.Event()
        self.tree_peak = 0
        self.hwm: dict[int, tuple[str, int]] = {}
        self.samples = 0
        self.max_processes = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.perf_counter()
            total, alive = 0, 0
            for pid in _tree(self.root):
                mem = _memory(pid)
                if mem is None:
                    continue
                rss, hwm = mem
                total += rss
                alive += 1
                known = self.hwm.get(pid)
                if known is None or hwm > known[1]:
                    self.hwm[pid] = (_cmdline(pid), hwm)
            self.tree_peak = max(self.tree_peak, total)
            self.max_processes = max(self.max_processes, alive)
            self.samples += 1
            self.stop_event.wait(max(0.0, SAMPLE_INTERVAL - (time.perf_counter() - started)))


def run_measured(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float = 3600.0,
) -> Measurement:
    """Run ``argv`` to completion (stdout and stderr to ``log_path``) and measure it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = _Sampler(proc.pid)
        sampler.start()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _kill_group(proc.pid)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        sampler.stop_event.set()
        sampler.join()
    _kill_group(proc.pid)  # anything the command left behind in its session
    return Measurement(
        argv=list(argv),
        exit_code=proc.returncode,
        wall_seconds=wall,
        tree_peak_rss=sampler.tree_peak,
        root_maxrss=usage.ru_maxrss * 1024,
        proc_peak_hwm=dict(sorted(sampler.hwm.items())),
        samples=sampler.samples,
        max_processes=sampler.max_processes,
        timed_out=expired.is_set(),
        root_pid=proc.pid,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
