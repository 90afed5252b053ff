"""dbt Cloud job steps: split into selection/shared/other words, rebuilt as plan and build runs."""

from __future__ import annotations

import shlex

import pytest

from airflow_provider_orchestra_dbt.execution.dbt_cloud_steps import (
    JobStep,
    StepError,
    build_steps,
    job_step,
    plan_steps,
)

VARS = "{day: '2026-06-01', n: 3}"
STEP = (
    f'dbt build --select stg_a+ tag:daily --exclude m2 --vars "{VARS}" --target prod '
    "--threads 8 --fail-fast --full-refresh --state prod-artifacts"
)


def test_a_build_step_is_split_into_selection_shared_and_other_words() -> None:
    step = JobStep.parse(STEP)
    assert step == JobStep(
        "build",
        selection=("--select", "stg_a+", "tag:daily", "--exclude", "m2"),
        shared=("--vars", VARS, "--target", "prod", "--threads", "8"),
        other=("--fail-fast", "--full-refresh", "--state", "prod-artifacts"),
    )


@pytest.mark.parametrize("flag", ["--select", "-s", "--models", "-m", "--exclude"])
def test_selection_options_take_several_values(flag: str) -> None:
    step = JobStep.parse(f"dbt run {flag} a b+ tag:x --threads 2")
    assert step.command == "run"
    assert step.selection == (flag, "a", "b+", "tag:x")
    assert step.shared == ("--threads", "2")
    assert step.other == ()


def test_selector_takes_one_value() -> None:
    step = JobStep.parse("dbt build --selector nightly --select a b --profile p")
    assert step.selection == ("--selector", "nightly", "--select", "a", "b")
    assert step.shared == ("--profile", "p")


def test_inline_values_stay_one_word() -> None:
    step = JobStep.parse("dbt build --select=stg_a+ --threads=4 --state=x -s m1")
    assert step.selection == ("--select=stg_a+", "-s", "m1")
    assert step.shared == ("--threads=4",)
    assert step.other == ("--state=x",)


@pytest.mark.parametrize("flag", ["-t", "--target"])
def test_target_is_shared(flag: str) -> None:
    step = JobStep.parse(f"dbt test {flag} dev -s m1")
    assert step.command == "test"
    assert step.shared == (flag, "dev")
    assert step.selection == ("-s", "m1")


def test_flags_without_values_do_not_swallow_the_next_word() -> None:
    step = JobStep.parse("dbt build --fail-fast --full-refresh -x --log-level debug -s a b")
    assert step.other == ("--fail-fast", "--full-refresh", "-x", "--log-level", "debug")
    assert step.selection == ("-s", "a", "b")
    assert step.shared == ()


def test_a_step_without_options_has_only_its_command() -> None:
    assert JobStep.parse("dbt build") == JobStep("build")
    assert JobStep.parse("  dbt   seed  ") == JobStep("seed")


@pytest.mark.parametrize(
    "step",
    ["echo hi", "dbt", "", "dbt --select a", "python -m dbt build", "dbt build --vars '{a: 1}"],
)
def test_a_step_that_is_not_a_dbt_command_line_is_refused_quoting_it(step: str) -> None:
    with pytest.raises(StepError) as caught:
        JobStep.parse(step)
    assert isinstance(caught.value, ValueError)
    assert repr(step) in str(caught.value)


def test_an_unbalanced_quote_says_so() -> None:
    with pytest.raises(StepError, match="cannot be split into words"):
        JobStep.parse("dbt build --vars '{a: 1}")


def test_job_step_prefers_the_step_running_the_command() -> None:
    steps = ["dbt deps", "dbt seed", "dbt run -s a", "dbt build -s b", "dbt test -s c"]
    assert job_step(steps, "run").selection == ("-s", "a")
    assert job_step(steps, "test").selection == ("-s", "c")
    assert job_step(steps, "build").selection == ("-s", "b")


def test_job_step_falls_back_to_a_build_then_run_then_test_step() -> None:
    assert job_step(["dbt seed", "dbt run -s a", "dbt build -s b"], "test").selection == (
        "-s",
        "b",
    )
    assert job_step(["dbt test -s c", "dbt run -s a"], "build").command == "run"
    assert job_step(["dbt test -s c"], "build").command == "test"


def test_the_first_of_two_matching_steps_wins() -> None:
    assert job_step(["dbt build -s a", "dbt build -s b"], "build").selection == ("-s", "a")


def test_a_job_without_a_build_step_selects_everything() -> None:
    assert job_step(["dbt deps", "dbt seed", "dbt docs generate"], "run") == JobStep("run")
    assert job_step([], "build") == JobStep("build")


def test_job_step_refuses_a_step_that_is_not_dbt() -> None:
    with pytest.raises(StepError, match="'echo hi'"):
        job_step(["dbt deps", "echo hi"], "build")


def test_plan_steps_compile_the_selection_then_measure_the_sources() -> None:
    lines = plan_steps(JobStep.parse(STEP))
    assert lines == [
        "dbt docs generate --select stg_a+ tag:daily --exclude m2 --vars "
        + shlex.quote(VARS)
        + " --target prod --threads 8",
        "dbt source freshness --vars " + shlex.quote(VARS) + " --target prod --threads 8",
    ]
    assert shlex.split(lines[0]) == [
        "dbt", "docs", "generate", "--select", "stg_a+", "tag:daily", "--exclude", "m2",
        "--vars", VARS, "--target", "prod", "--threads", "8",
    ]  # fmt: skip
    assert shlex.split(lines[1]) == [
        "dbt", "source", "freshness", "--vars", VARS, "--target", "prod", "--threads", "8",
    ]  # fmt: skip


def test_an_explicit_selection_replaces_the_steps_own() -> None:
    step = JobStep.parse(STEP)
    generate, freshness = plan_steps(step, ["--select", "m1", "--exclude", "tag:slow"])
    assert shlex.split(generate)[:8] == [
        "dbt", "docs", "generate", "--select", "m1", "--exclude", "tag:slow", "--vars",
    ]  # fmt: skip
    assert "stg_a+" not in shlex.split(generate)
    assert freshness == plan_steps(step)[1]
    # an empty selection is a selection too: everything
    assert shlex.split(plan_steps(step, ())[0])[3] == "--vars"


def test_plan_steps_of_an_empty_step() -> None:
    assert plan_steps(JobStep("build")) == ["dbt docs generate", "dbt source freshness"]


def test_build_steps_are_one_build_per_chunk_with_the_steps_options() -> None:
    step = JobStep.parse("dbt build -s everything --vars '{a: 1}' -t prod --fail-fast --defer")
    lines = build_steps(step, "build", ["stg_a+ m1", "resource_type:model,package:p,m2"])
    assert [shlex.split(line) for line in lines] == [
        ["dbt", "build", "--select", "stg_a+", "m1",
         "--vars", "{a: 1}", "-t", "prod", "--fail-fast", "--defer"],
        ["dbt", "build", "--select", "resource_type:model,package:p,m2",
         "--vars", "{a: 1}", "-t", "prod", "--fail-fast", "--defer"],
    ]  # fmt: skip
    assert "everything" not in " ".join(lines)


def test_build_steps_run_the_command_asked() -> None:
    (line,) = build_steps(JobStep("build"), "run", ["m1"])
    assert line == "dbt run --select m1"


def test_full_refresh_is_added_once() -> None:
    plain = JobStep.parse("dbt build --threads 4")
    (line,) = build_steps(plain, "build", ["m1"], full_refresh=True)
    assert shlex.split(line) == [
        "dbt",
        "build",
        "--select",
        "m1",
        "--threads",
        "4",
        "--full-refresh",
    ]
    (line,) = build_steps(plain, "build", ["m1"])
    assert "--full-refresh" not in shlex.split(line)
    for flag in ("--full-refresh", "-f"):
        refreshing = JobStep.parse(f"dbt build {flag} --threads 4")
        (line,) = build_steps(refreshing, "build", ["m1"], full_refresh=True)
        words = shlex.split(line)
        assert words.count(flag) == 1
        assert words.count("--full-refresh") + words.count("-f") == 1


def test_no_chunks_no_steps() -> None:
    assert build_steps(JobStep.parse(STEP), "build", []) == []


@pytest.mark.parametrize(
    "step",
    [
        STEP,
        'dbt run -m a b --exclude c --selector s --vars \'{"k": "v w"}\' --profile p -t t',
        "dbt test --select=x --threads=3 --fail-fast",
    ],
)
def test_rebuilt_lines_parse_back_to_the_same_words(step: str) -> None:
    parsed = JobStep.parse(step)
    generate, freshness = plan_steps(parsed)
    again = JobStep.parse(generate)
    assert again.command == "docs"  # 'generate' is read as an option-less word
    assert shlex.split(generate) == ["dbt", "docs", "generate", *parsed.selection, *parsed.shared]
    assert shlex.split(freshness) == ["dbt", "source", "freshness", *parsed.shared]
    (build,) = build_steps(parsed, parsed.command, ["a b"])
    rebuilt = JobStep.parse(build)
    assert rebuilt.command == parsed.command
    assert rebuilt.selection == ("--select", "a", "b")
    assert rebuilt.shared == parsed.shared
    assert rebuilt.other == parsed.other


@pytest.mark.parametrize(
    ("step", "names", "expected"),
    [
        ("dbt build --target prod", ("--target", "-t"), "prod"),
        ("dbt build -t dev --select a", ("--target", "-t"), "dev"),
        ("dbt build --target=ci", ("--target", "-t"), "ci"),
        ("dbt build --vars '{a: 1}' --vars '{b: 2}'", ("--vars",), "{b: 2}"),
        ("dbt build --select a", ("--target", "-t"), None),
    ],
)
def test_a_steps_option_value_is_read_as_dbt_reads_it(
    step: str, names: tuple[str, ...], expected: str | None
) -> None:
    assert JobStep.parse(step).value(*names) == expected
