"""``python -m airflow_provider_orchestra_dbt``: state-aware dbt runs without Airflow."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from airflow_provider_orchestra_dbt import __version__
from airflow_provider_orchestra_dbt.execution.config import ConfigError, DbtRunConfig, cli_options
from airflow_provider_orchestra_dbt.execution.session import DbtRunError, DbtSession
from airflow_provider_orchestra_dbt.presentation.picture import write_run_html
from airflow_provider_orchestra_dbt.presentation.report import FULL_PLAN_ENV
from airflow_provider_orchestra_dbt.state import (
    SUPPORTED_STATE_URIS,
    LocalFileStateStore,
    StateError,
    StateStore,
    store_from_uri,
)

COMMANDS = ("build", "run", "test", "plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_orchestra_dbt",
        description="Run dbt build/run/test rebuilding only what changed; 'plan' only decides.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("command", choices=COMMANDS)
    # Run options come from their declarations on DbtRunConfig; the rest are the CLI's own.
    for option in cli_options():
        if option.cli is not None:
            option.cli.add_to(parser, option.help)
    state = parser.add_mutually_exclusive_group()
    state.add_argument(
        "--state-file",
        metavar="PATH",
        help="local JSON state file (default: none, i.e. everything is built and nothing recorded)",
    )
    state.add_argument(
        "--state-uri",
        metavar="URI",
        help=f"state store: {SUPPORTED_STATE_URIS}; S3 credentials, region and endpoint as "
        "boto3 finds them (AWS_* environment variables, ~/.aws, instance role)",
    )
    parser.add_argument("--report", help="write a JSON report of every node's decision here")
    parser.add_argument(
        "--html", help="write a self-contained HTML picture of the run (the DAG by outcome) here"
    )
    parser.add_argument(
        "--full-plan",
        action="store_true",
        help=f"list every reused node in the logged plan, not one line per reason (as "
        f"{FULL_PLAN_ENV}=1 does)",
    )
    parser.add_argument(
        "--plan-for",
        choices=("build", "run", "test"),
        default="build",
        help="with 'plan': which command to plan (default: build)",
    )
    parser.epilog = "Extra dbt flags go after a literal '--', e.g. -- --fail-fast"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dbt_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    store = state_store(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("orchestra_dbt")
    try:
        config = run_config(args, dbt_args)
        report = DbtSession(config, store, log).run()
    except (ConfigError, DbtRunError, StateError) as exc:
        log.error("%s", exc)
        return 2
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if args.html:
        log.info("Wrote the picture of this run to %s", write_run_html(report, args.html))
    return report.exit_code


def state_store(parser: argparse.ArgumentParser, args: argparse.Namespace) -> StateStore | None:
    """The store the state flags name; a bad ``--state-uri`` exits as any bad argument does."""
    if args.state_file:
        return LocalFileStateStore(Path(args.state_file))
    if args.state_uri is None:
        return None
    try:
        return store_from_uri(args.state_uri, label="--state-uri")
    except StateError as exc:
        parser.error(str(exc))


def run_config(args: argparse.Namespace, dbt_args: Sequence[str]) -> DbtRunConfig:
    """The run the parsed command line asks for.

    Raises:
        ConfigError: an argument is invalid.
    """
    flagged = {o.name: o.cli.value(args) for o in cli_options() if o.cli is not None}
    return DbtRunConfig.create(
        **flagged,
        command=args.plan_for if args.command == "plan" else args.command,
        dbt_args=dbt_args,
        dry_run=args.command == "plan",
        # The session reads it from the run's environment, where the operator's env= puts it.
        env={FULL_PLAN_ENV: "1"} if args.full_plan else None,
    )


if __name__ == "__main__":
    sys.exit(main())
