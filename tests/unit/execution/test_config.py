"""Run arguments are validated up front, with errors naming the argument at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.execution.config import ConfigError, DbtRunConfig, parse_vars


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"project_dir": "/no/such/dir"}, "project_dir '/no/such/dir' does not exist"),
        ({"project_dir": "{empty}"}, "is not a dbt project (no dbt_project.yml)"),
        ({"profiles_dir": "/no/profiles"}, "profiles_dir '/no/profiles' does not exist"),
        ({"profiles_dir": "{empty}"}, "has no profiles.yml"),
        ({"vars": ["a", "b"]}, "vars must be a mapping of names to values, got list"),
        ({"vars": "[1, 2]"}, "vars must be a mapping of names to values, got list"),
        ({"vars": "{a: [unclosed"}, "vars is not valid YAML or JSON"),
        ({"threads": 0}, "threads must be a positive integer, got 0"),
        ({"threads": "many"}, "threads must be a positive integer, got 'many'"),
        ({"dbt_args": "--fail-fast"}, "dbt_args must be a list of strings"),
        ({"dbt_args": ["--state", "x"]}, "dbt_args must not contain --state: use --defer-state"),
        ({"dbt_args": ["--select=a"]}, "dbt_args must not contain --select: use the select"),
        ({"command": "build now"}, "command must be one dbt command"),
        ({"env": ["A=1"]}, "env must be a mapping"),
        ({"select": [1, 2]}, "select must be a string or a list of strings"),
        ({"lock_timeout": -1}, "lock_timeout must be a number of seconds >= 0, got -1"),
        ({"lock_timeout": "soon"}, "lock_timeout must be a number of seconds >= 0, got 'soon'"),
        ({"lock_timeout": True}, "lock_timeout must be a number of seconds >= 0, got True"),
        ({"lock_timeout": "nan"}, "lock_timeout must be a number of seconds >= 0, got nan"),
    ],
)
def test_bad_arguments_name_the_culprit(
    project: Path, tmp_path_factory: pytest.TempPathFactory, kwargs: dict, message: str
) -> None:
    empty = tmp_path_factory.mktemp("empty")
    args = {"project_dir": project, **kwargs}
    args = {k: (str(empty) if v == "{empty}" else v) for k, v in args.items()}
    with pytest.raises(ConfigError) as info:
        DbtRunConfig.create(**args)
    assert message in str(info.value)


def test_loose_input_is_normalised(project: Path) -> None:
    config = DbtRunConfig.create(
        project_dir=project,
        select="tag:daily  stg_orders+",
        exclude=["a b", "c"],
        vars="{start: '2026-01-01'}",
        threads="4",
        env={"N": 1},
    )
    assert config.select == ("tag:daily", "stg_orders+")
    assert config.exclude == ("a", "b", "c")
    assert config.vars == {"start": "2026-01-01"}
    assert config.threads == 4 and config.env == {"N": "1"}
    assert config.state_aware
    assert config.lock_timeout == 3600.0, "an hour by default"
    assert DbtRunConfig.create(project_dir=project, lock_timeout="0").lock_timeout == 0.0


def test_passthrough_commands_may_use_any_flag(project: Path) -> None:
    config = DbtRunConfig.create(project_dir=project, command="docs", dbt_args=["--state", "x"])
    assert not config.state_aware


def test_parse_vars_accepts_json_yaml_and_empty() -> None:
    assert parse_vars('{"a": 1}') == {"a": 1}
    assert parse_vars("a: 1") == {"a": 1}
    assert parse_vars("") == {} and parse_vars(None) == {}


def test_create_takes_each_declared_option_and_none_means_its_default(project: Path) -> None:
    config = DbtRunConfig.create(project_dir=project, reuse=None, command=None, full_refresh="no")
    assert config.reuse is True and config.command == "build" and config.full_refresh is False
    assert DbtRunConfig.create(project_dir=project, reuse="false").reuse is False
    with pytest.raises(ConfigError, match="reuse must be true or false, got 'maybe'"):
        DbtRunConfig.create(project_dir=project, reuse="maybe")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['thread'\]"):
        DbtRunConfig.create(project_dir=project, thread=4)
    with pytest.raises(TypeError, match="missing argument 'project_dir'"):
        DbtRunConfig.create(target="dev")
