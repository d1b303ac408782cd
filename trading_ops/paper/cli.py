"""`trading-ops paper-bot` (run the paper-trading bot) and `trading-ops chaos` (inject a fault into it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

from trading_ops import logsetup
from trading_ops.cli import UsageError, http_url
from trading_ops.config import Config, ConfigError, resolve_secret

log = logging.getLogger(__name__)
CHAOS_TIMEOUT_SECONDS = 10
EXIT_ALREADY_RUNNING = 1


def register(sub: Any) -> None:
    bot = sub.add_parser("paper-bot", help="run the paper-trading bot on the simulated venue")
    bot.add_argument("--chaos", action="store_true", help="enable the fault-injection control commands")
    bot.add_argument("--host", default=None, help="override bot.listen.host")
    bot.add_argument("--port", type=int, default=None, help="override bot.listen.port")
    bot.set_defaults(handler=run_paper_bot)

    chaos = sub.add_parser(
        "chaos",
        help="inject a fault into a bot started with --chaos (or send any control command)",
        description="Faults: hang_loop [seconds=N], crash, drop_connection, stale_market_data [symbol=S], "
        "leak_memory [mib_per_second=N max_mib=N], fill_disk [mib_per_second=N max_mib=N], "
        "position_drift [symbol=S quantity=Q], loss_spike [amount=A], "
        "reject_storm [seconds=N reason=insufficient_funds|venue_busy|price_out_of_band], stall_journal [seconds=N], "
        "clear_chaos; on a bot with paper.stream: drop_stream [endpoint=public|private|all seconds=N], "
        "silent_stream [channel=ticker|executions symbol=S], stream_gap [count=N]. Heal with reconnect, resubscribe, "
        "reconcile, or any other control command. Prints the bot's "
        "answer as `key: value` lines (--json: the JSON it sent); a refusal is one line on stderr, exit 2 for a bad "
        "command, argument or token, 1 for one the bot could not carry out.",
    )
    chaos.add_argument("fault", help="the fault or control command to send, e.g. drop_connection or status")
    # default=[]: without it argparse reports an empty `nargs="*"` positional as required.
    chaos.add_argument(
        "params", nargs="*", default=[], metavar="KEY=VALUE", help="optional arguments (numbers are sent as numbers)"
    )
    chaos.add_argument(
        "--url", type=http_url, default=None, help="bot base URL, http://host:port (default: from bot.listen)"
    )
    chaos.add_argument("--json", action="store_true", help="print the bot's answer as the JSON it sent")
    chaos.set_defaults(handler=run_chaos)


def run_paper_bot(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.secret_files import refuse_loose_secrets

    refuse_loose_secrets(config)  # as ssh and PostgreSQL refuse a key others can read: at start, not mid-incident
    import asyncio

    from trading_ops.bot.instance_lock import AnotherInstanceRunning
    from trading_ops.bot.shutdown import OrdersLeftOpen
    from trading_ops.paper.bot import PaperBot, control_tokens

    control_tokens(config)  # configuration problems first
    problem = schema_problem(config)
    if problem is not None:
        raise UsageError(problem)
    try:
        bot = PaperBot(config, chaos=args.chaos)
        # A shutdown past recovery.shutdown_deadline_seconds ends the process with exit status 1.
        asyncio.run(bot.run(args.host, args.port, force_exit=True))
    except AnotherInstanceRunning as exc:
        # One line naming the holder: the single-instance lock (nothing of the running bot was touched), or, at the
        # start, a previous run's heartbeat that kept moving (one on a host the locks cannot see).
        logsetup.report(f"trading-ops: paper-bot: {exc}")
        return EXIT_ALREADY_RUNNING
    except OrdersLeftOpen as exc:  # it shut down, but could not confirm that its orders are canceled
        logsetup.report(f"trading-ops: paper-bot: {exc}")
        return 1
    return 0


def schema_problem(config: Config) -> str | None:
    """Why the database cannot hold this version's journal (not migrated to the Alembic head), or None."""
    from trading_ops.db.base import make_engine
    from trading_ops.db.revisions import schema_problem as problem_of

    engine = make_engine(config.database_url())
    try:
        return problem_of(engine)
    finally:
        engine.dispose()


def parse_params(params: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {item!r} is not KEY=VALUE")
        value: Any = raw
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            pass
        body[key] = value
    return body


def run_chaos(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    import aiohttp

    token = resolve_secret(config, config.bot, "control_token", "bot.control_token")
    if not token:
        raise ConfigError("bot.control_token", "no token to call the bot's control API with")
    listen = config.bot.listen
    url = (args.url or f"http://{listen.host}:{listen.port}").rstrip("/") + f"/control/{args.fault}"
    body = parse_params(args.params)
    try:
        status, payload = asyncio.run(post_json(url, token, body))
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"trading-ops: chaos: cannot reach the bot at {url}: {unreachable(exc, url)}", file=sys.stderr)
        return 1
    return print_answer("chaos", args.fault, status, payload, args.json)


# Answers of a control or fault command that are the caller's mistake (a bad or unknown command or argument, a body
# too large, a token the bot does not take): exit 2, as a usage or configuration error. Anything else is a failure.
USAGE_STATUSES = frozenset({400, 401, 403, 404, 413})


def print_answer(prog: str, command: str, status: int, payload: Any, as_json: bool) -> int:
    """Print a control or fault command's answer as every command speaks: on success its fields as `key: value` lines
    (nested values as compact JSON), or with `as_json` the JSON as sent; on a refusal one line on stderr (the error,
    the HTTP status, and for an unknown command the known ones), exit 2 when it was the caller's mistake
    (USAGE_STATUSES), else 1."""
    if status == 200:
        if as_json:
            print(json.dumps(payload, indent=2, sort_keys=True))
        elif isinstance(payload, dict):
            for key, value in sorted(payload.items()):
                print(f"{key}: {value if isinstance(value, str) else json.dumps(value, sort_keys=True)}")
        else:
            print(json.dumps(payload))
        return 0
    error = payload.get("error") or payload.get("body") if isinstance(payload, dict) else None
    line = " ".join(str(error or payload).split())[:300]  # one line, however the answer was laid out
    known = payload.get("commands") if isinstance(payload, dict) else None
    if status == 404 and isinstance(known, list):
        line += f" (known: {', '.join(map(str, known))})"
    print(f"trading-ops: {prog}: {command}: {line} (HTTP {status})", file=sys.stderr)
    return 2 if status in USAGE_STATUSES else 1


def unreachable(exc: Exception, url: str) -> str:
    """Why a request to `url` got no answer, in words: "Connection refused", "cannot resolve host h (Name or service
    not known)", "no answer within 10 s"."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, socket.gaierror):  # getaddrinfo's errors are negative: os.strerror says "Unknown error"
            return f"cannot resolve host {urlsplit(url).hostname} ({error.strerror or error})"
        return os.strerror(error.errno) if error.errno else str(error)
    return str(exc) or f"no answer within {CHAOS_TIMEOUT_SECONDS} s"


async def post_json(url: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST `body` as JSON with the bearer `token` (the fault commands of the bot and of the gateway): the status and
    the answer's JSON, or its first 500 characters when it is not JSON."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=CHAOS_TIMEOUT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        try:
            payload = await response.json(content_type=None)
        except ValueError:
            payload = {"status": response.status, "body": (await response.text())[:500]}
        return response.status, payload
