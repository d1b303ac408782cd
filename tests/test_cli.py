"""The `trading-ops` console script as a real process: every error is one line with its exit status, the db and
config commands, a `--help` that describes every option of every subcommand, and what starting a command imports."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg_cluster import own_cluster
from ports import free_port
from secret_file import write_secret

from trading_ops.cli import build_parser
from trading_ops.db import migrate
from trading_ops.db.errors import NOT_MIGRATED

UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:5999/nope"
# The newest migration, and every known one in order: the messages name them.
HEAD = migrate.script_directory().get_current_head()
KNOWN = ", ".join(sorted(r.revision for r in migrate.script_directory().walk_revisions()))


REPO_ROOT = Path(__file__).resolve().parents[1]
# The console script a user runs (pip's entry point beside this Python), not `python -m trading_ops`: its own import
# path, and PYTHONPATH (this checkout) first.
CONSOLE_SCRIPT = Path(sys.executable).parent / "trading-ops"


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The command failed with `status` and said so in exactly one line on stderr (no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def config_with(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def sqlite_config(tmp_path: Path) -> str:
    return config_with(tmp_path, "database:\n  url: sqlite:///t.db\n")


@pytest.fixture
def migrated_config(tmp_path: Path, sqlite_config: str) -> str:
    migrate.upgrade(f"sqlite:///{tmp_path / 't.db'}")
    return sqlite_config


# ---- db ----------------------------------------------------------------------------------------------


def test_db_upgrade_of_an_unknown_revision_names_the_known_ones(sqlite_config: str) -> None:
    line = one_line_error(cli("-c", sqlite_config, "db", "upgrade", "nosuchrev"), 2)
    assert "unknown revision 'nosuchrev'" in line and f"(known: {KNOWN}, head, base)" in line


def test_db_upgrade_to_an_older_revision_is_refused_as_a_downgrade(migrated_config: str) -> None:
    line = one_line_error(cli("-c", migrated_config, "db", "upgrade", "0003"), 2)
    assert f"database is at {HEAD}; 0003 is older: that is a downgrade" in line
    assert "trading-ops db downgrade 0003 --yes" in line
    current = cli("-c", migrated_config, "db", "current")
    assert current.returncode == 0 and current.stdout.strip() == f"{HEAD} (head)"


def test_db_downgrade_needs_yes_and_upgrade_brings_it_back(migrated_config: str) -> None:
    line = one_line_error(cli("-c", migrated_config, "db", "downgrade", "0004"), 2)
    assert f"downgrading from {HEAD} to 0004 drops" in line and "--yes" in line
    assert cli("-c", migrated_config, "db", "current").stdout.strip() == f"{HEAD} (head)"
    down = cli("-c", migrated_config, "db", "downgrade", "0004", "--yes")
    assert down.returncode == 0 and down.stdout.strip() == f"database downgraded from {HEAD} to 0004"
    behind = cli("-c", migrated_config, "db", "current").stdout.strip()
    assert behind == f"0004 (head is {HEAD}: run `trading-ops db upgrade`)"
    line = one_line_error(cli("-c", migrated_config, "db", "downgrade", "0005", "--yes"), 2)
    assert "0005 is not older: nothing to downgrade" in line
    up = cli("-c", migrated_config, "db", "upgrade")
    assert up.returncode == 0 and up.stdout.strip() == f"database upgraded from 0004 to {HEAD}"
    again = cli("-c", migrated_config, "db", "upgrade")
    assert again.returncode == 0 and again.stdout.strip() == f"database already at {HEAD}"


def test_db_upgrade_logs_each_migration_once_and_db_check_prints_one_line(sqlite_config: str) -> None:
    revisions = list(reversed([r.revision for r in migrate.script_directory().walk_revisions()]))
    up = cli("-c", sqlite_config, "db", "upgrade")
    assert up.returncode == 0 and up.stdout == f"database upgraded from base (empty) to {HEAD}\n", up.stderr
    running = [line.split("Running upgrade ", 1)[1] for line in up.stderr.splitlines() if "Running upgrade" in line]
    assert [step.split(",")[0].split("-> ")[1] for step in running] == revisions, up.stderr
    check = cli("-c", sqlite_config, "db", "check")
    # Not Alembic's "No new upgrade operations detected." besides our own line.
    assert check.returncode == 0 and check.stdout == "models and migrations agree\n", check.stdout
    assert check.stderr == ""


def test_a_role_refused_by_peer_authentication_says_as_whom_to_run(tmp_path: Path) -> None:
    """Debian's PostgreSQL authenticates local connections by peer: the services' role is their operating-system user,
    so `reconciler history` run as root failed with "Peer authentication failed" alone. The line says to run it as
    that user. A PostgreSQL cluster of the test's own, its local connections by peer (pg_hba.conf), as Debian's."""
    with own_cluster() as pg:
        (pg.data / "pg_hba.conf").write_text("local all all peer\nhost all all 127.0.0.1/32 trust\n")
        pg.ctl("reload")
        url = f"postgresql+psycopg://trading-ops@/trading-ops?host={pg.data}&port={pg.port}"
        config = config_with(tmp_path, f"database:\n  url: {url}\n")
        line = one_line_error(cli("-c", config, "reconciler", "history"), 1)
    assert 'Peer authentication failed for user "trading-ops"' in line, line
    assert "run the command as the operating-system user trading-ops" in line and "runuser -u trading-ops" in line


@pytest.mark.parametrize(
    "command",
    [
        ["db", "upgrade"],
        ["db", "check"],
        ["db", "current"],
        ["reconciler", "history"],
    ],
)
def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path, command: list[str]) -> None:
    config = config_with(tmp_path, f"database:\n  url: {UNREACHABLE_URL}\n")
    line = one_line_error(cli("-c", config, *command), 1)
    assert "database unreachable (postgresql+psycopg://postgres@127.0.0.1:5999/nope)" in line
    assert "Connection refused" in line


@pytest.mark.parametrize(
    "command",
    [
        ["reconciler", "history"],
        ["db", "check"],
    ],
)
def test_an_unmigrated_database_says_run_db_upgrade_and_exit_2(sqlite_config: str, command: list[str]) -> None:
    line = one_line_error(cli("-c", sqlite_config, *command), 2)
    assert line == f"trading-ops: {command[0]}: {NOT_MIGRATED}"


@pytest.mark.parametrize(
    "command",
    [
        ["reconciler", "pause"],
        ["reconciler", "resume"],
        ["reconciler", "circuits", "reset", "bot-1"],
        ["reconciler", "retry", "1"],
        ["reconciler", "ack", "1"],
        ["maintenance", "start", "--duration", "1h", "--reason", "r"],
        ["maintenance", "end", "--id", "1"],
    ],
)
def test_a_deciding_command_needs_a_persons_token_and_a_reconciler_that_answers(
    tmp_path: Path, command: list[str]
) -> None:
    """What decides goes through the reconciler's API with the person's own token (its name is the audit's
    principal): without a token, exit 2 naming where one is read from; with one and no reconciler answering, exit 1
    naming the address; one line each, and no database touched."""
    config = config_with(tmp_path, f"database:\n  url: {UNREACHABLE_URL}\n")
    no_token = {"TRADING_OPS_TOKEN": "", "TRADING_OPS_TOKEN_FILE": ""}
    line = one_line_error(cli("-c", config, *command, env=no_token), 2)
    assert line.endswith(
        "needs your own token of reconciler.api_tokens (--token-file FILE, $TRADING_OPS_TOKEN_FILE or "
        "$TRADING_OPS_TOKEN): the decision is recorded under that token's name"
    ), line
    write_secret(tmp_path / "my-token", "my-token")
    url = f"http://127.0.0.1:{free_port()}"
    given = ("--token-file", str(tmp_path / "my-token"), "--url", url)
    line = one_line_error(cli("-c", config, *command, *given, env=no_token), 1)
    assert f"the reconciler at {url} did not answer" in line and "Connection refused" in line, line


# ---- chaos ---------------------------------------------------------------------------------------------


def test_chaos_against_a_bot_that_is_not_running_names_the_url(tmp_path: Path) -> None:
    write_secret(tmp_path / "token", "t\n")
    port = free_port()
    config = config_with(tmp_path, f"bot:\n  control_token_file: token\n  listen:\n    port: {port}\n")
    line = one_line_error(cli("-c", config, "chaos", "drop_connection"), 1)
    assert line == (
        f"trading-ops: chaos: cannot reach the bot at http://127.0.0.1:{port}/control/drop_connection: "
        "Connection refused"
    )


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:9101", "ftp://127.0.0.1", "http://", "http://127.0.0.1:99999"])
def test_chaos_with_a_url_that_is_no_http_url_is_a_usage_error(url: str) -> None:
    line = one_line_error(cli("chaos", "status", "--url", url), 2)
    assert line.startswith("trading-ops chaos: argument --url: ") and repr(url) in line


def test_chaos_against_a_host_that_does_not_resolve_says_so(tmp_path: Path) -> None:
    # .invalid never resolves (RFC 6761): getaddrinfo's error, not "Unknown error -2".
    write_secret(tmp_path / "token", "t\n")
    config = config_with(tmp_path, "bot:\n  control_token_file: token\n")
    line = one_line_error(cli("-c", config, "chaos", "status", "--url", "http://nosuchhost.invalid:9101"), 1)
    assert line.startswith(
        "trading-ops: chaos: cannot reach the bot at http://nosuchhost.invalid:9101/control/status: "
        "cannot resolve host nosuchhost.invalid ("
    ), line


def test_chaos_help_lists_every_fault_of_the_paper_bot() -> None:
    from trading_ops.paper.chaos import CHAOS_COMMANDS

    shown = " ".join(cli("chaos", "--help").stdout.split())
    assert [fault for fault in CHAOS_COMMANDS if fault not in shown] == []
    assert "--json" in shown


def test_chaos_without_arguments_asks_only_for_the_fault() -> None:
    line = one_line_error(cli("chaos"), 2)
    assert "the following arguments are required: fault" in line and "KEY=VALUE" not in line


# ---- reconciler history arguments ---------------------------------------------------------------------


def test_history_refuses_an_unknown_state_naming_the_valid_ones(migrated_config: str) -> None:
    line = one_line_error(cli("-c", migrated_config, "reconciler", "history", "--state", "bogus"), 2)
    assert "invalid choice: 'bogus'" in line
    for state in ("pending", "waiting", "running", "escalated", "recovered", "resolved"):
        assert f"'{state}'" in line


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_history_refuses_a_limit_below_one(migrated_config: str, limit: str) -> None:
    line = one_line_error(cli("-c", migrated_config, "reconciler", "history", "--limit", limit), 2)
    assert "argument --limit" in line


def test_history_of_an_episode_that_does_not_exist_is_one_line(migrated_config: str) -> None:
    line = one_line_error(cli("-c", migrated_config, "reconciler", "history", "42"), 1)
    assert line.startswith("trading-ops: reconciler history: no episode 42")


@pytest.mark.parametrize("args", [["99999999999999999999999"], ["--limit", "9223372036854775808"]])
def test_history_of_a_number_past_any_ledger_integer_is_one_usage_line(migrated_config: str, args: list[str]) -> None:
    """No database integer is that large (SQLite's INTEGER, PostgreSQL's bigint): a usage error, not an OverflowError
    from the driver."""
    line = one_line_error(cli("-c", migrated_config, "reconciler", "history", *args), 2)
    assert f"expected at most 9223372036854775807, got {args[-1]}" in line


def test_history_of_the_largest_ledger_integer_is_no_episode(migrated_config: str) -> None:
    line = one_line_error(cli("-c", migrated_config, "reconciler", "history", "9223372036854775807"), 1)
    assert line.startswith("trading-ops: reconciler history: no episode 9223372036854775807")


# ---- output into a pipe whose reader went away (`| head`) ---------------------------------------------


def cli_into_a_closed_pipe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The console script with stdout a pipe whose reader is already gone (as `| head` leaves it once it has read
    its lines): every write to it fails with EPIPE, whatever the timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [str(CONSOLE_SCRIPT), *args],
            check=False,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["config", "show"],
        ["reconciler", "history"],
        ["playbook", "test", str(REPO_ROOT / "trading_ops" / "reconciler" / "playbooks" / "default-cases.yml")],
    ],
)
def test_output_into_a_closed_pipe_ends_quietly_with_the_sigpipe_status(migrated_config: str, args: list[str]) -> None:
    result = cli_into_a_closed_pipe("-c", migrated_config, *args)
    assert (result.returncode, result.stderr) == (141, "")


# ---- playbook test ---------------------------------------------------------------------------------------


def test_playbook_test_of_a_cases_file_with_a_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yml"
    cases.write_text("cases: [\n  - {name: a\n")
    line = one_line_error(cli("playbook", "test", str(cases)), 2)
    assert line.startswith(f"trading-ops: {cases}: cannot read cases: ") and "at line 2, column 3" in line


# ---- config ----------------------------------------------------------------------------------------------


def test_config_check_says_which_file_it_read(tmp_path: Path) -> None:
    none = cli("config", "check", "--no-secrets", cwd=tmp_path)
    assert none.returncode == 0
    assert none.stdout.strip() == "configuration ok for bot (defaults: no --config and no ./trading-ops.yaml)"
    (tmp_path / "trading-ops.yaml").write_text("bot:\n  name: from-the-file\n")
    found = cli("config", "check", "--no-secrets", cwd=tmp_path)
    assert found.returncode == 0 and found.stdout.strip() == "configuration ok for bot (./trading-ops.yaml)"
    shown = cli("config", "show", cwd=tmp_path)
    assert shown.returncode == 0 and "name: from-the-file" in shown.stdout
    given = cli("-c", str(tmp_path / "trading-ops.yaml"), "config", "check", "--no-secrets")
    assert given.stdout.strip() == f"configuration ok for bot ({tmp_path / 'trading-ops.yaml'})"


def test_config_show_masks_every_secret(tmp_path: Path) -> None:
    write_secret(tmp_path / "token", "file-secret-value\n")
    config = config_with(
        tmp_path,
        "database:\n  url_env: TEST_DB_URL\nbot:\n  control_token_file: token\n"
        "reconciler:\n  token_env: TEST_RECONCILER_TOKEN\n",
    )
    env = {
        "TEST_DB_URL": "postgresql://ops:db-password-value@127.0.0.1:5432/ops",
        "TEST_RECONCILER_TOKEN": "env-secret-value",
        "TRADING_OPS_APPRISE_URLS": "mailto://user:apprise-secret@example.org",
    }
    result = cli("-c", config, "config", "show", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for value in ("file-secret-value", "db-password-value", "env-secret-value", "apprise-secret"):
        assert value not in out
    assert "url: postgresql+psycopg://ops:***@127.0.0.1:5432/ops" in out and "url_from: url_env" in out
    assert "control_token_file: token\n  control_token_status: set" in out
    assert "token_env: TEST_RECONCILER_TOKEN\n  token_status: set" in out
    assert "urls_env: TRADING_OPS_APPRISE_URLS\n  urls_status: set" in out


# ---- help ------------------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(_parsers(child, f"{path} {name}"))
    return found


def _squeezed(text: str) -> str:
    """Text without its whitespace: argparse re-wraps help to the terminal's width (breaking at hyphens too)."""
    return "".join(text.split())


def test_every_option_of_every_subcommand_is_described_in_its_help() -> None:
    """Each option has a description of its own, and `--help` shows it: the text argparse prints for `--help`
    (format_help, rendered once per subcommand in-process: 45 console-script starts would cost ~40 s)."""
    problems = []
    parsers = _parsers(build_parser(), "trading-ops")
    for path, parser in parsers:
        rendered = _squeezed(parser.format_help())
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not (choice.help or "").strip():
                        problems.append(f"{path} {choice.dest}: no help")
                    elif _squeezed(choice.help or "") not in rendered:
                        problems.append(f"{path} {choice.dest}: its help is not in `{path} --help`")
                continue
            text = (action.help or "").strip()
            where = f"{path} {'/'.join(action.option_strings) or action.dest}"
            names = {action.dest, action.dest.replace("_", "-"), *(s.lstrip("-") for s in action.option_strings)}
            shown_as = action.option_strings or [str(action.metavar or action.dest)]
            if not text or text.lower() in names or len(text.split()) < 2:
                problems.append(f"{where}: help {text!r}")
            elif _squeezed(formatter._expand_help(action)) not in rendered:
                problems.append(f"{where}: its help is not in `{path} --help`")
            elif not any(_squeezed(name) in rendered for name in shown_as):
                problems.append(f"{where}: not named in `{path} --help`")
    assert len(parsers) > 20
    assert problems == []


def test_help_of_the_reconciler_says_serving_is_the_default_and_lists_the_states() -> None:
    top = cli("reconciler", "--help")
    assert top.returncode == 0 and "run the reconciler (the default, without ACTION)" in cli("--help").stdout
    assert "Without ACTION: serve the webhook intake" in top.stdout
    history = cli("reconciler", "history", "--help").stdout
    assert "open pending, waiting, running, verifying, interrupted" in " ".join(history.split())


def test_an_unexpected_error_is_one_line_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import logging

    from trading_ops import cli as cli_module
    from trading_ops.commands import config_cmd

    def broken(args: argparse.Namespace, config: object) -> int:
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(config_cmd, "check_config", broken)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert cli_module.main(["config", "check"]) == 1
    finally:
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    assert err.strip() == (
        "trading-ops: config failed: RuntimeError: something nobody expected (--log-level DEBUG shows the traceback)"
    )


# ---- start-up: what a command imports ------------------------------------------------------------------------------

# Modules that cost a command tens of milliseconds or more to import. Parsing the command line imports none of them:
# each handler imports what its command uses (tests/test_cli.py's `--help` of every subcommand parses them all).
HEAVY_MODULES = (
    "aiohttp",
    "sqlalchemy",
    "alembic",
    "prometheus_client",
    "apprise",
    "ccxt",
    "freqtrade",
    "trading_ops.db.models",
    "trading_ops.reconciler.ledger",
    "trading_ops.reconciler.actions",
    "trading_ops.reconciler.engine",
    "trading_ops.bot.runtime",
    "trading_ops.bot.instrumentation",
)


# The command line as trading_ops/__main__.py runs it, then the modules it had imported, on stderr's last line.
IMPORTS_PROBE = """
import sys
from trading_ops.cli import main
try:
    status = main(sys.argv[1:])
finally:
    print("imported:", *sorted(sys.modules), file=sys.stderr)
sys.exit(status)
"""


def imported_modules(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `trading-ops ARGS` in a fresh Python; its result, and the modules it imported (stderr without them)."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )
    stderr, _, modules = result.stderr.rpartition("imported: ")
    result.stderr = stderr
    return result, set(modules.split())


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["stackctl", "--help"],
        ["upkeep", "cleanup", "--help"],
        ["chaos", "--help"],
        ["reconciler", "history", "--help"],
        ["playbook", "explain", "--help"],
    ],
)
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    result, modules = imported_modules(*args)
    assert result.returncode == 0 and "usage: trading-ops" in result.stdout, result.stderr[-2000:]
    assert {"trading_ops.cli", "trading_ops.stack.cli", "trading_ops.reconciler.cli"} <= modules
    assert heavy(modules) == []


def test_a_usage_error_imports_no_heavy_module() -> None:
    result, modules = imported_modules("stackctl", "reboot")
    assert result.returncode == 2 and "invalid choice: 'reboot'" in result.stderr
    assert heavy(modules) == []


def test_stackctl_and_upkeep_cleanup_as_the_reconciler_runs_them_import_no_heavy_module(tmp_path: Path) -> None:
    """The reconciler's systemd steps run `stackctl show|restart` twice per restart in the local stack, its disk rule
    `upkeep cleanup`: each a process, with the reconciler's configuration (a database.url given) in the environment."""
    scratch = tmp_path / "data" / "scratch"
    scratch.mkdir(parents=True)
    (scratch / "junk.bin").write_bytes(bytes(1000))
    config = config_with(
        tmp_path,
        f"database:\n  url: sqlite:///{tmp_path / 'db.sqlite'}\nbot:\n  data_dir: {tmp_path / 'data'}\n"
        f"backup:\n  directory: {tmp_path / 'backups'}\n",
    )
    env = {"TRADING_OPS_CONFIG": config}
    show, modules = imported_modules(
        "stackctl", "--state-dir", str(tmp_path / "no-stack"), "show", "trading-ops-paper-bot.service", env=env
    )
    assert one_line_error(show, 1).startswith("trading-ops: stackctl: no `trading-ops up` runs with state directory")
    assert heavy(modules) == []
    cleanup, modules = imported_modules("upkeep", "cleanup", env=env)
    assert cleanup.returncode == 0 and "cleanup scratch" in cleanup.stdout, cleanup.stderr
    assert not (scratch / "junk.bin").exists()
    assert heavy(modules) == []
