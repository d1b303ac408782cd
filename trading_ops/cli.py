"""The `trading-ops` command line: one subcommand per job, exit 0 ok, 1 failure, 2 bad usage or config."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from trading_ops import __version__, logsetup
from trading_ops.config import DEFAULT_CONFIG_PATH, Config, ConfigError, http_url_problem, load_config
from trading_ops.db.errors import database_problem

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# The reader of stdout went away (`trading-ops ... | head`): the status of a process ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141
# The configuration file when --config is not given (the reconciler sets it for the commands its steps start, so
# the disk rule's `trading-ops upkeep cleanup` reads the reconciler's own configuration).
CONFIG_ENV = "TRADING_OPS_CONFIG"
# Modules that contribute subcommands; each has `register(subparsers)` and sets `handler(args, config)`. Every command
# imports all of them to parse its command line, so a module imports at its top only what `register` needs (argparse,
# the standard library, this module, trading_ops.config, constants), and each handler imports what its command uses:
# aiohttp, SQLAlchemy, the models, the ledger, the bot runtime (tests/test_cli.py holds that line).
COMMAND_MODULES = (
    "trading_ops.commands.audit_cmd",
    "trading_ops.commands.clear_halt_cmd",
    "trading_ops.commands.config_cmd",
    "trading_ops.commands.db_cmd",
    "trading_ops.commands.mailbox_cmd",
    "trading_ops.commands.openapi_cmd",
    "trading_ops.commands.upkeep_cmd",
    "trading_ops.integrations.freqtrade.cli",
    "trading_ops.ops.backup_cli",
    "trading_ops.ops.cli",
    "trading_ops.paper.cli",
    "trading_ops.readiness.cli",
    "trading_ops.readiness.ramp_cli",
    "trading_ops.readiness.weekly_cli",
    "trading_ops.reconciler.cli",
    "trading_ops.rulepack.cli",
    "trading_ops.stack.cli",
    "trading_ops.paper.gateway.cli",
)

log = logging.getLogger("trading_ops")


class UsageError(Exception):
    """Bad usage discovered after parsing (a wrong argument value); exits 2 with one line."""


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (the usage synopsis is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def http_url(text: str) -> str:
    """argparse `type` of a base URL option (--url): http(s)://host[:port][/path], else a usage error (exit 2, one
    line naming the option)."""
    problem = http_url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="trading-ops", description="Operations for automated trading bots.")
    parser.add_argument("--version", action="version", version=f"trading-ops {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH} if it exists)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="override logging.level from the configuration",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(config: Config, override: str | None) -> None:
    logsetup.setup(override or config.logging.level, config.logging.format)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script's entry point. Output piped into a reader that stops early (`| head`) ends quietly, as
    Python's documentation of SIGPIPE recommends: stdout is pointed at /dev/null (so the flush at exit cannot fail
    again) and the exit status is that of a process killed by SIGPIPE, as `yes | head` reports."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # what is still buffered fails here, inside the try, when the reader is gone
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None and os.environ.get(CONFIG_ENV):
        args.config = os.environ[CONFIG_ENV]
    try:
        # A command that reads no configuration (`config schema`, which helps fix a file that does not load).
        config = (
            Config()
            if getattr(args, "without_config", False)
            else load_config(args.config, must_exist=args.config is not None)
        )
    except ConfigError as exc:
        logsetup.report(f"trading-ops: config: {exc}")
        return EXIT_USAGE
    setup_logging(config, args.log_level)
    try:
        return int(args.handler(args, config) or EXIT_OK)
    except ConfigError as exc:
        logsetup.report(f"trading-ops: config: {exc}")
        return EXIT_USAGE
    except UsageError as exc:
        logsetup.report(f"trading-ops: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        raise  # the reader of our output went away: main ends quietly
    except Exception as exc:
        return _report_failure(args.command, config, exc)


def _report_failure(command: str, config: Config, exc: Exception) -> int:
    """A command that failed: one line saying why (a database's problem as such), and its exit status."""
    problem = database_problem(exc, _database_url(config))
    if problem is not None:
        logsetup.report(f"trading-ops: {command}: {problem.message}")
        return problem.exit_status
    # One line on a terminal, never a traceback: the traceback is for whoever asks for it (--log-level DEBUG),
    # or inside the JSON log's one record per line, where a log pipeline keeps it.
    if config.logging.format == "json":
        log.error("%s failed", command, exc_info=True)
    else:
        log.debug("%s failed", command, exc_info=True)
    shows = config.logging.format == "json" or log.isEnabledFor(logging.DEBUG)
    hint = "" if shows else " (--log-level DEBUG shows the traceback)"
    logsetup.report(f"trading-ops: {command} failed: {type(exc).__name__}: {exc}{hint}")
    return EXIT_FAILURE


def _database_url(config: Config) -> str | None:
    try:
        return config.database_url()
    except ConfigError:
        return None


def add_schema_command(inner: Any, handler: Any, **words: str) -> None:
    """A `schema [--output FILE]` action under `inner`: it prints a JSON Schema and reads no configuration (it helps
    fix a file that does not load)."""
    schema = inner.add_parser("schema", **words)
    schema.add_argument("--output", "-o", default=None, metavar="FILE", help="write to FILE instead of stdout")
    schema.set_defaults(handler=handler, without_config=True)


def print_json_schema(schema: dict[str, Any], what: str, output: str | None) -> None:
    """`schema` as JSON to the file `output` (saying so), or to stdout without one."""
    if write_output(json.dumps(schema, indent=2) + "\n", output):
        print(f"wrote the JSON Schema of {what} to {output}")


def write_output(text: str, output: str | None) -> bool:
    """`text` to the file `output` (True), or to stdout without one (False)."""
    if output is None:
        sys.stdout.write(text)
        return False
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--output", f"cannot write {output}: {exc.strerror}") from exc
    return True
