"""Parent side of the worker protocol: start, talk to and stop the dbt subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

WORKER_SCRIPT = Path(__file__).with_name("dbt_worker.py")
EVENT_TYPES = frozenset(
    {"node_start", "node_finished", "selection_unmatched", "dotenv_loaded", "dbt_log"}
)


class WorkerError(RuntimeError):
    """The worker reported a failure, or died without saying why."""

    def __init__(self, stage: str, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.exit_code = exit_code


class WorkerProcess:
    """One dbt worker subprocess in its own process group, which dies with this process.

    dbt's console output arrives on the worker's stderr and is handed line by line to
    ``on_output``; protocol messages arrive on stdout.

    The worker must not outlive us: killed outright (SIGKILL by the OOM killer, a lost node),
    we can neither stop it nor record what it did, and it would go on writing to the
    warehouse. So it asks the kernel to SIGKILL it when we die (Linux), and a watchdog it
    forks ends it and its process group once the lifeline, a pipe only we write to, reads
    end-of-file (anywhere). On Linux the kernel's signal comes when the *thread* that called
    ``start`` ends, not the process: call ``start`` from a thread that lives as long as the
    run (``DbtSession.run`` does, being synchronous).

    ``lock_fd`` (the run lock's descriptor, ``RunLock.open``) is handed down, so the lock is
    free only once the worker and its watchdog have gone as well as this process.
    """

    def __init__(
        self,
        *,
        python: str | None,
        env: Mapping[str, str],
        on_output: Callable[[str], None],
        stop_grace_seconds: float = 30.0,
        lock_fd: int | None = None,
    ) -> None:
        self._python = python or sys.executable
        self._env = dict(env)
        self._on_output = on_output
        self._stop_grace = stop_grace_seconds
        self._lock_fd = lock_fd
        self._lifeline: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_thread: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=30)
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        # Not stdin: we close that at the end of a normal run, while the worker still exits.
        # Our end is not inherited, so only our death (or close()) ends the lifeline.
        lifeline, self._lifeline = os.pipe()
        argv = [self._python, str(WORKER_SCRIPT), "--parent", str(os.getpid())]
        argv += ["--lifeline", str(lifeline)]
        handed = [lifeline]
        if self._lock_fd is not None:
            argv += ["--lock-fd", str(self._lock_fd)]
            handed.append(self._lock_fd)
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                # Own process group: stopping the task stops dbt and anything dbt started.
                start_new_session=True,
                pass_fds=handed,
            )
        except OSError as exc:
            self._close_lifeline()
            raise WorkerError(
                "start", f"cannot start the dbt worker with python {self._python!r}: {exc}"
            ) from exc
        finally:
            os.close(lifeline)
        self._stderr_thread = threading.Thread(
            target=self._relay_stderr, name="orchestra-dbt-worker-stderr", daemon=True
        )
        self._stderr_thread.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _relay_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in iter(self._proc.stderr.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._tail.append(line)
                self._on_output(line)

    def stop(self) -> None:
        """Ask dbt to cancel (SIGINT), then escalate; safe to call more than once."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            for sig, wait in (
                (signal.SIGINT, self._stop_grace),
                (signal.SIGTERM, 5.0),
                (signal.SIGKILL, 5.0),
            ):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    return
                try:
                    proc.wait(timeout=wait)
                    return
                except subprocess.TimeoutExpired:
                    continue

    def close(self) -> int | None:
        """Wait for the worker to exit and return its exit code."""
        if self._proc is None:
            return None
        if self._proc.stdin and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            code = self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.stop()
            code = self._proc.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=10)
        # Only now that nothing reads them: events were drained, and the relay thread has seen
        # EOF (a grandchild dbt left behind may still hold stderr open; then it stays open).
        relay_done = self._stderr_thread is None or not self._stderr_thread.is_alive()
        for pipe in (self._proc.stdout, self._proc.stderr if relay_done else None):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        # After the worker's exit, so its watchdog has already been told to stand down.
        self._close_lifeline()
        return code

    def _close_lifeline(self) -> None:
        fd, self._lifeline = self._lifeline, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- messages ------------------------------------------------------------------------------

    def send(self, message: Mapping[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._died("send") from exc

    def receive(
        self, expected: str, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Read messages until one of type ``expected``; events go to ``on_event``."""
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            raw = self._proc.stdout.readline()
            if not raw:
                raise self._died(expected)
            message: dict[str, Any] = json.loads(raw)
            kind = message.get("type")
            if kind in EVENT_TYPES:
                if on_event is not None:
                    on_event(message)
                continue
            if kind == "error":
                code = self._proc.poll()
                raise WorkerError(str(message.get("stage")), str(message.get("message")), code)
            if kind != expected:
                raise WorkerError(
                    "protocol", f"expected {expected!r} from the worker, got {kind!r}"
                )
            return message

    def drain_events(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        """After a stop: hand over node events the worker wrote before it exited."""
        if self._proc is None or self._proc.stdout is None or self._proc.poll() is None:
            return
        for raw in self._proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if message.get("type") in EVENT_TYPES:
                on_event(message)

    def _died(self, stage: str) -> WorkerError:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=5)
        tail = "\n".join(list(self._tail)[-10:])
        message = f"the dbt worker exited unexpectedly (exit code {code}) while waiting for {stage}"
        if tail:
            message += f"; its last output:\n{tail}"
        return WorkerError(stage, message, code)
