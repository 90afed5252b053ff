"""What one dbt run should do: a frozen, validated description shared by the CLI and operator."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_AWARE_COMMANDS = frozenset({"build", "run", "test"})
DEFAULT_LOCK_TIMEOUT = 3600.0
"""Seconds a run waits for another run of the same project and target to finish."""
# Flags the worker sets itself for exact selection; a user value would silently break it.
_RESERVED_FLAGS = {
    "--state": "use --defer-state for deferral; --state is used for exact node selection",
    "--select": "use the select argument",
    "-s": "use the select argument",
    "--exclude": "use the exclude argument",
    "--selector": "use the selector argument",
    "--indirect-selection": "tests are selected by the planner",
    "--target-path": "use the target_path argument",
    "--project-dir": "use the project_dir argument",
    "--profiles-dir": "use the profiles_dir argument",
    "--vars": "use the vars argument",
}
_LOCK_TIMEOUT_PROBLEM = "lock_timeout must be a number of seconds >= 0, got {}"
# dbt accepts a missing profiles directory for these: deps reads no profile, init writes one,
# debug reports the problem itself.
_PROFILELESS_COMMANDS = frozenset({"debug", "deps", "init"})
_PROFILES_HINT = (
    "Set profiles_dir (CLI: --profiles-dir) or DBT_PROFILES_DIR to the directory holding "
    "profiles.yml"
)


class ConfigError(ValueError):
    """A run argument is invalid; the message names the argument and the value at fault."""


@dataclass(frozen=True)
class DbtRunConfig:
    project_dir: Path
    command: str = "build"
    profiles_dir: Path | None = None
    target: str | None = None
    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    selector: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    full_refresh: bool = False
    threads: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    dbt_args: tuple[str, ...] = ()
    reuse: bool = True
    dry_run: bool = False
    python: str | None = None
    target_path: Path | None = None
    key_prefix: str | None = None
    run_info: Mapping[str, Any] = field(default_factory=dict)
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT

    @property
    def state_aware(self) -> bool:
        return self.command in STATE_AWARE_COMMANDS

    @classmethod
    def create(
        cls,
        *,
        project_dir: str | Path,
        command: str = "build",
        profiles_dir: str | Path | None = None,
        target: str | None = None,
        select: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool = False,
        threads: int | None = None,
        env: Mapping[str, str] | None = None,
        dbt_args: Sequence[str] | None = None,
        reuse: bool = True,
        dry_run: bool = False,
        python: str | None = None,
        target_path: str | Path | None = None,
        key_prefix: str | None = None,
        run_info: Mapping[str, Any] | None = None,
        lock_timeout: float | str | None = DEFAULT_LOCK_TIMEOUT,
    ) -> DbtRunConfig:
        """Normalise loosely typed input (templated strings, lists) and validate it."""
        config = cls(
            project_dir=Path(project_dir).expanduser(),
            command=(command or "").strip(),
            profiles_dir=Path(profiles_dir).expanduser() if profiles_dir else None,
            target=target or None,
            select=_selection("select", select),
            exclude=_selection("exclude", exclude),
            selector=selector or None,
            vars=parse_vars(vars),
            full_refresh=bool(full_refresh),
            threads=_threads(threads),
            env=_env(env),
            dbt_args=_dbt_args(dbt_args),
            reuse=bool(reuse),
            dry_run=bool(dry_run),
            python=python or None,
            target_path=Path(target_path).expanduser() if target_path else None,
            key_prefix=key_prefix or None,
            run_info=dict(run_info or {}),
            lock_timeout=_lock_timeout(lock_timeout),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if not self.command or " " in self.command:
            raise ConfigError(
                f"command must be one dbt command such as 'build', got {self.command!r}"
            )
        if not self.project_dir.is_dir():
            raise ConfigError(
                f"project_dir {str(self.project_dir)!r} does not exist or is not a directory"
            )
        if not (self.project_dir / "dbt_project.yml").is_file():
            raise ConfigError(
                f"project_dir {str(self.project_dir)!r} is not a dbt project (no dbt_project.yml)"
            )
        if self.profiles_dir is not None and not self.profiles_dir.is_dir():
            raise ConfigError(
                f"profiles_dir {str(self.profiles_dir)!r} does not exist or is not a directory"
            )
        if self.profiles_dir is not None and not (self.profiles_dir / "profiles.yml").is_file():
            raise ConfigError(f"profiles_dir {str(self.profiles_dir)!r} has no profiles.yml")
        if not self.lock_timeout >= 0:  # also rejects NaN
            raise ConfigError(_LOCK_TIMEOUT_PROBLEM.format(f"{self.lock_timeout:g}"))
        if self.state_aware:
            for arg in self.dbt_args:
                flag = arg.split("=", 1)[0]
                if flag in _RESERVED_FLAGS:
                    raise ConfigError(f"dbt_args must not contain {flag}: {_RESERVED_FLAGS[flag]}")
        if self.profiles_dir is None and self.command not in _PROFILELESS_COMMANDS:
            problem = self._default_profiles_problem()
            if problem is not None:
                raise ConfigError(problem)

    def _default_profiles_problem(self) -> str | None:
        """Why dbt's own lookup would find no profiles.yml, or None if it would find one.

        Without this, dbt stops with a bare "Path '~/.dbt' does not exist." that says neither
        what it was looking for nor where else it looked.
        """
        if any(arg.split("=", 1)[0] == "--profiles-dir" for arg in self.dbt_args):
            return None  # a passthrough command's own flag: dbt checks that one
        # dbt runs with the parent's environment plus `env`, in the project directory.
        environ = {**os.environ, **self.env}
        # dbt 1.12 reads every flag from DBT_ENGINE_<FLAG> first.
        variable = next(
            (v for v in ("DBT_ENGINE_PROFILES_DIR", "DBT_PROFILES_DIR") if environ.get(v)), None
        )
        if variable is not None:
            from_env = environ[variable]
            directory = self.project_dir / Path(from_env).expanduser()
            if (directory / "profiles.yml").is_file():
                return None
            return (
                f"{variable} {from_env!r} has no profiles.yml (looked in "
                f"{str(directory)!r}; profiles_dir is not set, so dbt reads only that "
                f"directory). {_PROFILES_HINT}"
            )
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
        home_dbt = home.expanduser() / ".dbt"
        if any((d / "profiles.yml").is_file() for d in (self.project_dir, home_dbt)):
            return None
        if _dotenv_mentions_profiles_dir(self.project_dir):
            return None
        return (
            "no profiles.yml found: dbt looks in profiles_dir (CLI: --profiles-dir), else "
            "DBT_PROFILES_DIR, else the project directory, else ~/.dbt; neither setting is "
            f"given and neither {str(self.project_dir)!r} nor {str(home_dbt)!r} has one. "
            f"{_PROFILES_HINT}"
        )


def _dotenv_mentions_profiles_dir(project_dir: Path) -> bool:
    """Whether the .env dbt 1.12+ loads (the nearest at or above its cwd) may set it.

    dbt reads that file only once it starts; when it might point dbt elsewhere, dbt is left
    to decide rather than failing a setup that works.
    """
    for directory in (project_dir.absolute(), *project_dir.absolute().parents):
        candidate = directory / ".env"
        if candidate.is_file():
            try:
                return "DBT_PROFILES_DIR" in candidate.read_text(errors="replace")
            except OSError:
                return True
    return False


def parse_vars(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Accept a mapping, or a YAML/JSON string of one (as dbt's --vars does)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"vars is not valid YAML or JSON: {exc}") from exc
        if value is None:
            return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"vars must be a mapping of names to values, got {type(value).__name__}")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"vars must be JSON-serialisable: {exc}") from exc
    return {str(k): v for k, v in value.items()}


def _selection(name: str, value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a string or a list of strings, got {value!r}")
    return tuple(part for v in value for part in v.split())


def _threads(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        threads = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threads must be a positive integer, got {value!r}") from None
    if threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {value!r}")
    return threads


def _lock_timeout(value: Any) -> float:
    if value is None or value == "":
        return DEFAULT_LOCK_TIMEOUT
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(_LOCK_TIMEOUT_PROBLEM.format(repr(value))) from None


def _env(value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"env must be a mapping of variable names to values, got {type(value).__name__}"
        )
    return {str(k): str(v) for k, v in value.items()}


def _dbt_args(value: Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"dbt_args must be a list of strings such as ['--fail-fast'], got {value!r}"
        )
    return tuple(value)
