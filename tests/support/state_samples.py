"""State as another writer leaves it, for checking that every store reads it and keeps it."""

from __future__ import annotations

from typing import Any

ORCHESTRA_DOCUMENT: dict[str, Any] = {
    "state": {
        "db.sch.m": {
            "checksum": "abc",
            "last_updated": "2025-01-01T00:00:00Z",
            "sources": {"source.p.raw.orders": "2025-01-01T00:00:00+00:00"},
        }
    }
}
"""A document as the dbt-orchestra tool writes it: ``Z`` times and none of our fields.

Shared by several tests: copy it before changing it.
"""
