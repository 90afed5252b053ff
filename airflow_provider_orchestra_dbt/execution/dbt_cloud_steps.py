"""The dbt commands a state-aware dbt Cloud run sends as ``steps_override`` (docs/design.md §2.2).

A dbt Cloud job is configured as a list of dbt command lines. The state-aware run keeps what
the job's build step says (its selection, ``--vars``, ``--threads``, ``--target`` and the
rest) and replaces what it runs:

* the **plan run**: ``dbt docs generate`` with the job's selection (the compiled nodes are
  the selection, and ``catalog.json`` lists which of their relations exist), then ``dbt
  source freshness`` (``sources.json``);
* the **build run**: one ``dbt build --select <chunk>`` per chunk of the exact selection
  (``decisions/selection.py``), parents first.

Pure string work, no dbt and no network: the steps are tested in milliseconds.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["JobStep", "build_steps", "job_step", "plan_steps"]

# Options that select nodes. A state-aware run replaces them with the exact selection.
_SELECTION = frozenset(
    {"--select", "-s", "--models", "-m", "--exclude", "--selector", "--resource-type",
     "--resource-types", "--exclude-resource-type", "--exclude-resource-types",
     "--indirect-selection"}
)  # fmt: skip
# Options dbt docs generate and source freshness take too (the rest are the build's own).
_SHARED = frozenset({"--vars", "--target", "-t", "--threads", "--profile"})
_FLAGS_WITHOUT_VALUE = frozenset(
    {"--full-refresh", "-f", "--fail-fast", "-x", "--no-fail-fast", "--favor-state",
     "--no-favor-state", "--defer", "--no-defer", "--store-failures", "--empty",
     "--no-partial-parse", "--partial-parse", "--warn-error", "--debug", "-d",
     "--no-version-check", "--use-colors", "--no-use-colors"}
)  # fmt: skip
STATE_AWARE_STEP_COMMANDS = ("build", "run", "test")


class StepError(ValueError):
    """A job step that is not a dbt command line; the message quotes it."""


@dataclass(frozen=True)
class JobStep:
    """One dbt command line of a job, split into its selection and its other options."""

    command: str
    selection: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    other: tuple[str, ...] = ()

    @classmethod
    def parse(cls, step: str) -> JobStep:
        try:
            argv = shlex.split(step)
        except ValueError as exc:
            raise StepError(f"dbt Cloud step {step!r} cannot be split into words: {exc}") from exc
        if len(argv) < 2 or argv[0] != "dbt" or argv[1].startswith("-"):
            raise StepError(f"dbt Cloud step {step!r} is not a dbt command")
        selection: list[str] = []
        shared: list[str] = []
        other: list[str] = []
        index = 2
        while index < len(argv):
            option, _, inline = argv[index].partition("=")
            values: list[str] = [inline] if inline else []
            index += 1
            if not inline and option not in _FLAGS_WITHOUT_VALUE:
                # --select and --exclude take several values; the rest take one.
                many = option in _SELECTION and option != "--selector"
                while index < len(argv) and not argv[index].startswith("-"):
                    values.append(argv[index])
                    index += 1
                    if not many:
                        break
            words = [option, *values] if not inline else [argv[index - 1]]
            if option in _SELECTION:
                selection += words
            elif option in _SHARED:
                shared += words
            else:
                other += words
        return cls(argv[1], tuple(selection), tuple(shared), tuple(other))

    def value(self, *names: str) -> str | None:
        """The value the step gives option ``names`` (e.g. ``"--target", "-t"``), the last
        one winning as in dbt; None when it gives none."""
        found = None
        words = [*self.shared, *self.other]
        for index, word in enumerate(words):
            option, equals, inline = word.partition("=")
            if option not in names:
                continue
            if equals:
                found = inline
            elif index + 1 < len(words):
                found = words[index + 1]
        return found


def job_step(steps: Sequence[str], command: str) -> JobStep:
    """The job's step a state-aware ``command`` takes the place of: its first ``dbt build``
    (or ``run``/``test``, matching ``command``); a job without one selects everything."""
    parsed = [JobStep.parse(step) for step in steps]
    for wanted in (command, *STATE_AWARE_STEP_COMMANDS):
        for step in parsed:
            if step.command == wanted:
                return step
    return JobStep(command)


def plan_steps(step: JobStep, selection: Sequence[str] | None = None) -> list[str]:
    """The plan run: compile the selection (listing what exists), then measure the sources.

    ``selection`` (``--select ...``, ``--exclude ...`` words) replaces the step's own."""
    chosen = step.selection if selection is None else tuple(selection)
    return [
        _line("docs", "generate", *chosen, *step.shared),
        _line("source", "freshness", *step.shared),
    ]


def build_steps(
    step: JobStep, command: str, chunks: Sequence[str], *, full_refresh: bool = False
) -> list[str]:
    """One command per chunk of ``--select`` terms, with the job step's other options."""
    extra = [*step.shared, *step.other]
    if full_refresh and "--full-refresh" not in extra and "-f" not in extra:
        extra.append("--full-refresh")
    return [_line(command, "--select", *chunk.split(" "), *extra) for chunk in chunks]


def _line(*words: str) -> str:
    return shlex.join(["dbt", *words])
