"""The tests' dbt fork server for worker runs, and the launcher to pass as ``--dbt-python``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from support.airflow_env import end_process, wait_for

SUPPORT = Path(__file__).parent


class ForkedWorkers:
    """``dbt_fork_server.py --socket`` and its launcher (``worker_shim.py``, run with ``-I -S``).

    Started on first use; ``close`` stops it once its workers have ended.
    """

    def __init__(self) -> None:
        self._root: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None

    def launcher(self) -> str:
        if self._root is None:
            self._start()
        assert self._root is not None
        return str(self._root / "python")

    def _start(self) -> None:
        # Under /tmp: a Unix socket's path has room for about a hundred characters.
        root = Path(tempfile.mkdtemp(prefix="orchestra-workers-"))
        socket_path = root / "server.sock"
        server = subprocess.Popen(
            [sys.executable, str(SUPPORT / "dbt_fork_server.py"), "--socket", str(socket_path)],
            stdin=subprocess.PIPE,
        )
        self._server = server
        launcher = root / "python"
        launcher.write_text(
            f"#!{sys.executable} -IS\n"
            "import sys\n"
            f"sys.path.insert(0, {str(SUPPORT)!r})\n"
            "from worker_shim import main\n"
            f"main({str(socket_path)!r})\n"
        )
        launcher.chmod(0o755)

        def listening() -> bool:  # it binds first and imports dbt after: shims queue
            if server.poll() is not None:
                raise AssertionError(f"the worker fork server exited {server.returncode}")
            return socket_path.exists()

        wait_for(listening, 60, "the worker fork server's socket", interval=0.01)
        self._root = root

    def close(self) -> None:
        server, root = self._server, self._root
        self._server = self._root = None
        if server is not None and server.stdin is not None:
            end_process(server, server.stdin.close, timeout=60)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
