"""A logger that keeps its lines, for tests of code that logs through a ``RunLogger``."""

from __future__ import annotations


class Lines:
    """Keeps each formatted message; errors are marked ``ERROR`` so tests can tell them apart."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, /, *args: object) -> None:
        self.lines.append(msg % args)

    def warning(self, msg: str, /, *args: object) -> None:
        self.lines.append(msg % args)

    def error(self, msg: str, /, *args: object) -> None:
        self.lines.append("ERROR " + msg % args)

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]
