"""Each run option is declared once, on DbtRunConfig; the CLI and the operator derive from it."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import fields
from pathlib import Path

import pytest
from airflow.exceptions import AirflowProviderDeprecationWarning

from airflow_provider_orchestra_dbt.cli import build_parser
from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig, run_options
from airflow_provider_orchestra_dbt.operators.orchestra_dbt import (
    DbtExecutionOptions,
    DbtTaskOutputs,
    OrchestraDbtOperator,
)

# Filled in by the operator itself (connection, task context), not by the DAG author.
OPERATOR_FILLS = {"key_prefix", "run_info"}
# Filled in by the command line itself: a positional, 'plan', the args after '--', --full-plan.
CLI_FILLS = {"command", "dry_run", "dbt_args", "env", "run_info"}


def test_every_run_option_is_declared_once_per_config_field() -> None:
    assert [o.name for o in run_options()] == [f.name for f in fields(DbtRunConfig)]
    assert all(o.help and not o.help.endswith(".") for o in run_options())


def test_every_declared_option_is_an_operator_parameter_or_execution_option() -> None:
    parameters = inspect.signature(OrchestraDbtOperator.__init__).parameters
    explicit = [n for n, p in parameters.items() if n != "self" and p.kind != p.VAR_KEYWORD]
    assert len(explicit) <= 16
    for option in run_options():
        if option.name in OPERATOR_FILLS:
            assert option.operator is None
        elif option.operator == "param":
            assert option.parameter in parameters, option.name
            assert option.parameter in OrchestraDbtOperator.__doc__, option.name  # type: ignore[operator]
        else:
            assert option.operator == "execution", option.name
            assert option.parameter not in parameters, option.name
            assert hasattr(DbtExecutionOptions(), option.parameter), option.name
            assert f":param {option.parameter}:" in (DbtExecutionOptions.__doc__ or "")
    declared = {o.parameter for o in run_options() if o.operator == "param"}
    own = {"state_conn_id", "execution", "outputs"}
    assert set(explicit) == declared | own, "a direct parameter that no option declares"


def test_templated_options_are_the_template_fields() -> None:
    templated = {o.parameter for o in run_options() if o.templated and o.operator == "param"}
    assert templated == set(OrchestraDbtOperator.template_fields) - {"execution"}
    nested = {o.parameter for o in run_options() if o.templated and o.operator == "execution"}
    assert set(DbtExecutionOptions.template_fields) == nested == {"target_path"}
    assert "execution" in OrchestraDbtOperator.template_fields
    renderers = {o.parameter: o.renderer for o in run_options() if o.renderer}
    assert OrchestraDbtOperator.template_fields_renderers == renderers


def test_every_declared_option_is_a_cli_flag_unless_the_cli_fills_it() -> None:
    actions = {a.dest: a for a in build_parser()._actions}
    for option in run_options():
        if option.name in CLI_FILLS:
            assert option.cli is None, option.name
            continue
        assert option.cli is not None, option.name
        action = actions[option.cli.dest]
        assert list(action.option_strings) == list(option.cli.flags)
        assert action.help


def test_nested_execution_options_render_without_touching_the_dags_operator(
    project: Path,
) -> None:
    op = OrchestraDbtOperator(
        task_id="dbt",
        project_dir=project,
        select="{{ params.sel }}",
        execution=DbtExecutionOptions(threads=2, target_path="/art/{{ run_id }}"),
        outputs=DbtTaskOutputs(emit_assets=False),
    )
    running = op.prepare_for_execution()
    running.render_template_fields({"run_id": "r1", "params": {"sel": "a+"}})  # type: ignore[arg-type]
    assert running.select == "a+" and running.execution.target_path == "/art/r1"
    assert op.execution.target_path == "/art/{{ run_id }}"
    assert running.execution.threads == 2


def test_flat_arguments_still_work_with_a_warning_naming_the_new_spelling(project: Path) -> None:
    with pytest.warns(AirflowProviderDeprecationWarning) as caught:
        op = OrchestraDbtOperator(
            task_id="dbt", project_dir=project, threads=4, lock_timeout=0, emit_assets=False
        )
    messages = [str(w.message) for w in caught]
    assert (
        "OrchestraDbtOperator(threads=...) is deprecated: pass "
        "execution=DbtExecutionOptions(threads=...) instead"
    ) in messages
    assert any("outputs=DbtTaskOutputs(emit_assets=...)" in m for m in messages)
    assert op.execution == DbtExecutionOptions(threads=4, lock_timeout=0)
    assert op.outputs.emit_assets is False


def test_option_groups_are_copied_so_operators_can_share_one(project: Path) -> None:
    shared = DbtExecutionOptions(threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = OrchestraDbtOperator(task_id="a", project_dir=project, execution=shared)
    with pytest.warns(AirflowProviderDeprecationWarning):
        b = OrchestraDbtOperator(task_id="b", project_dir=project, execution=shared, threads=8)
    assert (a.execution.threads, b.execution.threads, shared.threads) == (1, 8, 1)


def test_unknown_execution_option_is_refused() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['thread'\]"):
        DbtExecutionOptions(thread=4)


def test_operator_builds_the_same_config_as_the_declaration_defaults(project: Path) -> None:
    op = OrchestraDbtOperator(
        task_id="dbt",
        project_dir=project,
        full_refresh="True",
        execution=DbtExecutionOptions(threads="3", dbt_python="/py"),
    )
    from airflow_provider_orchestra_dbt.operators.orchestra_dbt import _PARAMS, _attribute

    config = DbtRunConfig.create(
        **{o.name: getattr(op, _attribute(o)) for o in _PARAMS}, **op.execution.run_options()
    )
    assert config.full_refresh is True and config.threads == 3 and config.python == "/py"
    assert config.reuse is True and config.command == "build" and not config.dry_run
