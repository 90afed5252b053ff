"""What one dbt run should do: a frozen, validated description shared by the CLI and operator."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from airflow_provider_orchestra_dbt.decisions.planner import STATE_AWARE_COMMANDS

DEFAULT_RUN_LOCK_TIMEOUT = 3600.0
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
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ValueError):
    """A run argument is invalid; the message names the argument and the value at fault."""


# -- how a run option is declared ------------------------------------------------------------

OperatorPlace = Literal["param", "execution"]
"""Where the Airflow operator takes an option: an ``__init__`` parameter of its own, or a
field of its ``execution=DbtExecutionOptions(...)`` object."""


@dataclass(frozen=True)
class CliFlag:
    """How the command line spells an option."""

    flags: tuple[str, ...]
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    many: bool = False
    """Takes one or more values (``nargs="+"``)."""
    switch: bool = False
    """Takes no value: given means True, or False with ``invert``."""
    invert: bool = False
    default: Any = None
    help: str | None = None
    """The command line's wording, where the option's own help reads wrong for the flag."""

    @property
    def dest(self) -> str:
        return self.flags[0].lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser, help: str) -> None:
        text = _plain(self.help or help)
        if self.default is not None:
            text += f" (default: {self.default})"
        if self.switch:
            parser.add_argument(*self.flags, dest=self.dest, action="store_true", help=text)
            return
        typed: dict[str, Any] = {} if self.type is None else {"type": self.type}
        parser.add_argument(
            *self.flags,
            dest=self.dest,
            metavar=self.metavar,
            nargs="+" if self.many else None,
            default=self.default,
            help=text,
            **typed,
        )

    def value(self, args: argparse.Namespace) -> Any:
        given = getattr(args, self.dest)
        return not given if self.invert else given


@dataclass(frozen=True)
class RunOption:
    """One run option, declared once on its ``DbtRunConfig`` field (see ``run_options()``).

    The command line's flags, the operator's parameters, ``template_fields`` and docstring,
    and ``DbtRunConfig.create``'s normalisation are all derived from these declarations.
    """

    help: str
    """One sentence for the operator's docstring and the command line's ``--help``."""
    normalise: Callable[[str, Any], Any]
    """``(name, loose value) -> field value``; raises ConfigError naming the option."""
    operator: OperatorPlace | None = None
    """Where the operator takes it; None: the operator fills it in itself."""
    param: str = ""
    """The operator's and execution options' name for it (default: the field's name)."""
    templated: bool = False
    """Rendered by Airflow's Jinja templating."""
    renderer: str | None = None
    """How Airflow's UI shows the rendered value (``template_fields_renderers``)."""
    cli: CliFlag | None = None
    """Its command-line flag; None: the command line fills it in itself."""
    # Filled in from the dataclass field by run_options().
    name: str = ""
    default: Any = None

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def parameter(self) -> str:
        return self.param or self.name

    @property
    def doc(self) -> str:
        return f"{self.help}. Templated." if self.templated else f"{self.help}."


_OPTION = "orchestra_dbt.run_option"


def _option(
    spec: RunOption, default: Any = None, *, factory: Callable[[], Any] | None = None
) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={_OPTION: spec})
    return field(default=default, metadata={_OPTION: spec})


def run_options() -> tuple[RunOption, ...]:
    """Every run option, in declaration order, with its name and default filled in."""
    return _RUN_OPTIONS


def operator_options(place: OperatorPlace) -> tuple[RunOption, ...]:
    return tuple(o for o in _RUN_OPTIONS if o.operator == place)


def cli_options() -> tuple[RunOption, ...]:
    return tuple(o for o in _RUN_OPTIONS if o.cli is not None)


# -- normalisers: loosely typed input (templated strings, lists) to a field's value ----------


def _path(name: str, value: Any) -> Path:
    return Path(value).expanduser()


def _optional_path(name: str, value: Any) -> Path | None:
    return Path(value).expanduser() if value else None


def _optional_str(name: str, value: Any) -> str | None:
    return value or None


def _stripped(name: str, value: Any) -> str:
    return (value or "").strip()


def _flag(name: str, value: Any) -> bool:
    """A bool, or a templated string of one ("true", "False", "1")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _vars(name: str, value: Any) -> dict[str, Any]:
    return parse_vars(value)


def _mapping(name: str, value: Any) -> dict[str, Any]:
    return dict(value or {})


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


def _threads(name: str, value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        threads = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threads must be a positive integer, got {value!r}") from None
    if threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {value!r}")
    return threads


def _lock_timeout(name: str, value: Any) -> float:
    if value is None or value == "":
        return DEFAULT_RUN_LOCK_TIMEOUT
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(_LOCK_TIMEOUT_PROBLEM.format(repr(value))) from None


def _env(name: str, value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"env must be a mapping of variable names to values, got {type(value).__name__}"
        )
    return {str(k): str(v) for k, v in value.items()}


def _dbt_args(name: str, value: Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"dbt_args must be a list of strings such as ['--fail-fast'], got {value!r}"
        )
    return tuple(value)


@dataclass(frozen=True)
class DbtRunConfig:
    """What one dbt run should do. Each field declares its run option (``RunOption``)."""

    project_dir: Path = field(
        metadata={
            _OPTION: RunOption(
                "the dbt project directory (holds ``dbt_project.yml``); never modified",
                _path,
                operator="param",
                templated=True,
                cli=CliFlag(("--project-dir",), default="."),
            )
        }
    )
    command: str = _option(
        RunOption(
            "dbt command; build/run/test are state-aware, others run unchanged",
            _stripped,
            operator="param",
        ),
        "build",
    )
    # _option() returns a dataclasses.field, which ruff cannot see through.
    profiles_dir: Path | None = _option(  # noqa: RUF009
        RunOption(
            "directory holding ``profiles.yml`` (default: dbt's own lookup)",
            _optional_path,
            operator="param",
            templated=True,
            cli=CliFlag(("--profiles-dir",)),
        )
    )
    target: str | None = _option(
        RunOption(
            "dbt target",
            _optional_str,
            operator="param",
            templated=True,
            cli=CliFlag(("--target", "-t")),
        )
    )
    select: tuple[str, ...] = _option(
        RunOption(
            "dbt selection (a string or a list)",
            _selection,
            operator="param",
            templated=True,
            cli=CliFlag(("--select", "-s"), many=True, help="dbt selection"),
        ),
        (),
    )
    exclude: tuple[str, ...] = _option(
        RunOption(
            "dbt exclusion (a string or a list)",
            _selection,
            operator="param",
            templated=True,
            cli=CliFlag(("--exclude",), many=True, help="dbt exclusion"),
        ),
        (),
    )
    selector: str | None = _option(
        RunOption(
            "a selector from ``selectors.yml``",
            _optional_str,
            operator="param",
            templated=True,
            cli=CliFlag(("--selector",)),
        )
    )
    vars: Mapping[str, Any] = _option(
        RunOption(
            "dbt vars, a mapping (or a YAML/JSON string of one)",
            _vars,
            operator="param",
            templated=True,
            renderer="json",
            cli=CliFlag(("--vars",)),
        ),
        factory=dict,
    )
    full_refresh: bool = _option(
        RunOption(
            "pass ``--full-refresh`` and rebuild everything selected",
            _flag,
            operator="param",
            templated=True,
            cli=CliFlag(("--full-refresh",), switch=True),
        ),
        False,
    )
    threads: int | None = _option(
        RunOption(
            "dbt threads (default: the profile's)",
            _threads,
            operator="execution",
            cli=CliFlag(("--threads",), type=int),
        )
    )
    env: Mapping[str, str] = _option(
        RunOption(
            "extra environment variables for dbt",
            _env,
            operator="param",
            templated=True,
            renderer="json",
        ),
        factory=dict,
    )
    dbt_args: tuple[str, ...] = _option(
        RunOption(
            'extra dbt flags as a list, e.g. ``["--fail-fast"]`` (CLI: after a literal ``--``)',
            _dbt_args,
            operator="param",
            templated=True,
            renderer="json",
        ),
        (),
    )
    reuse: bool = _option(
        RunOption(
            "set False to build everything selected (state is still recorded)",
            _flag,
            operator="param",
            cli=CliFlag(
                ("--no-reuse",), switch=True, invert=True, help="build everything, still record"
            ),
        ),
        True,
    )
    dry_run: bool = _option(
        RunOption(
            "only plan: log and return the decisions, run no model, change no state "
            "(CLI: the ``plan`` command)",
            _flag,
            operator="param",
        ),
        False,
    )
    python: str | None = _option(
        RunOption(
            "interpreter for the dbt worker, e.g. a separate dbt virtualenv's python "
            "(default: this one)",
            _optional_str,
            operator="execution",
            param="dbt_python",
            cli=CliFlag(("--dbt-python",)),
        )
    )
    target_path: Path | None = _option(  # noqa: RUF009
        RunOption(
            "keep dbt's artifacts (``manifest.json``, ``run_results.json``) in this directory "
            "(default: a per-run temp dir, removed afterwards). Runs of one project and target "
            "take turns, so a fixed path holds the latest run's artifacts; template it, e.g. "
            '``"/data/dbt-artifacts/{{ run_id }}"``, to keep each run\'s',
            _optional_path,
            operator="execution",
            templated=True,
            cli=CliFlag(("--target-path",), help="keep dbt's artifacts here (default: a temp dir)"),
        )
    )
    key_prefix: str | None = _option(
        RunOption(
            "prefix state keys with '<ID>.', as the operator does with its connection's "
            "Integration account id (default: no prefix)",
            _optional_str,
            cli=CliFlag(("--integration-account-id",), type=str.strip, metavar="ID"),
        )
    )
    run_info: Mapping[str, Any] = _option(
        RunOption("where the run comes from (Airflow DAG, run, task and try)", _mapping),
        factory=dict,
    )
    lock_timeout: float = _option(
        RunOption(
            "seconds to wait for another run of the same project and target (on this "
            "machine, or any sharing the state store) to finish before failing (default "
            f"{DEFAULT_RUN_LOCK_TIMEOUT:g}; 0 fails at once)",
            _lock_timeout,
            operator="execution",
            cli=CliFlag(("--lock-timeout",), type=float, metavar="SECONDS"),
        ),
        DEFAULT_RUN_LOCK_TIMEOUT,
    )

    @property
    def state_aware(self) -> bool:
        return self.command in STATE_AWARE_COMMANDS

    @classmethod
    def create(cls, **options: Any) -> DbtRunConfig:
        """Normalise loosely typed input (templated strings, lists) and validate it.

        Takes every run option by its field name; an omitted or None option takes its
        declared default.
        """
        unknown = sorted(set(options) - {o.name for o in _RUN_OPTIONS})
        if unknown:
            raise TypeError(f"DbtRunConfig.create() got unexpected keyword arguments {unknown}")
        values: dict[str, Any] = {}
        for option in _RUN_OPTIONS:
            value = options.get(option.name)
            if value is None:
                if option.required:
                    raise TypeError(f"DbtRunConfig.create() missing argument {option.name!r}")
                continue  # the field's default
            values[option.name] = option.normalise(option.name, value)
        config = cls(**values)
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


def _declared() -> tuple[RunOption, ...]:
    declared = []
    for f in fields(DbtRunConfig):
        spec: RunOption = f.metadata[_OPTION]
        default: Any = f.default
        if f.default_factory is not MISSING:
            default = f.default_factory()
        declared.append(replace(spec, name=f.name, default=default))
    return tuple(declared)


_RUN_OPTIONS = _declared()


def _plain(text: str) -> str:
    """Docstring markup to command-line help (argparse treats ``%`` as a format)."""
    return text.replace("``", "").replace("%", "%%")
