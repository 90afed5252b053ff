"""dbt's partial-parse cache, kept by us between runs, never makes a run see old YAML.

The runs only plan (parse, measure, decide): what dbt parsed shows in the reasons.
"""

from __future__ import annotations

import os

import pytest
from support.tutorial import Workspace

pytestmark = pytest.mark.integration

SOURCES = "models/staging/_sources.yml"


def reasons(report: dict[str, object]) -> str:
    nodes = report["nodes"]
    assert isinstance(nodes, list)
    return "\n".join(str(n["reason"]) for n in nodes)


def test_a_yaml_file_put_back_with_its_old_time_is_parsed_again(ws: Workspace) -> None:
    # dbt skips a YAML file whose modification time equals the one it saved, and after an
    # edit it keeps the old time: `cp -p`, `rsync -t` or an unpacked archive putting the
    # original back would leave the edited version in force.
    path = ws.project / SOURCES
    original, before = path.read_bytes(), path.stat()
    ws.run("plan")  # the cache now holds the original
    ws.edit(SOURCES, "_loaded_at", "_no_such_column")
    assert "_no_such_column" in reasons(ws.run("plan"))
    path.write_bytes(original)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "_no_such_column" not in reasons(ws.run("plan"))
