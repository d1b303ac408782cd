"""The emergency stop exercised on a paper bot: halt, flatten, see it flat with nothing working, then trade again.

What the readiness criterion `emergency_stop` counts (tradingbot_control_commands_total of halt and flatten); run on a
paper bot only, whose positions are the paper venue's.

The drill never lifts a halt (or a pause, a reduce-only) it did not set: it runs only on a bot that is trading
(`active`) with no approval pending for it in the ledger (a venue-direct flatten waiting for a person, say), and it
clears only the halt it set itself. Anything else refuses it in one line, before it changes anything.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import aiohttp

from trading_ops.bot.control import SOURCE_HEADER, SOURCE_RECONCILER
from trading_ops.config import BotEntryConfig, Config, resolve_secret

# How long the bot may take to be flat after `flatten` (its market orders filled) before the drill fails.
FLAT_DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.2
TIMEOUT = aiohttp.ClientTimeout(total=10)
DESTRUCTIVE = ("halt", "flatten", "clear_halt")
# The reason the drill's own halt carries (the bot's state_reason): the halt it may clear is the one saying this.
DRILL_REASON = "stop drill"
# The only state the drill starts from: it ends by resuming, which would lift any other state someone else set.
STARTS_FROM = "active"
# How many pending approvals a refusal names.
NAMED_APPROVALS = 3


class DrillFailed(Exception):
    """The bot did not do what the emergency stop asks; the message says which step. `changed`: it failed after the
    drill's halt was sent (the bot's state may have changed: the audit records it)."""

    changed = False


class DrillRefused(Exception):
    """The drill may not run now (the bot is halted by a limit, someone paused it, an approval waits): nothing was
    changed; the message says why."""


def pending_approvals(config: Config, bot: BotEntryConfig) -> list[str]:
    """The approvals waiting for a person's decision about `bot` (open episodes whose target or labels name its
    instance or its name), one short description each. A ledger without the reconciler's tables (never migrated, or
    an SQLite file that does not exist) holds none: a reconciler refuses to start on it. DrillRefused when the ledger
    cannot be read (whether one waits is then unknown)."""
    from sqlalchemy import inspect, select
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from trading_ops.db.base import make_engine
    from trading_ops.db.models.ledger import Approval, Episode
    from trading_ops.db.states import OPEN_STATES

    url = config.database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and (not parsed.database or not Path(parsed.database).exists()):
        return []
    engine = make_engine(url, sqlite_synchronous=config.database.sqlite_synchronous)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if not {Approval.__tablename__, Episode.__tablename__} <= tables:
                return []
            rows = conn.execute(
                select(
                    Approval.id, Approval.step_name, Approval.action, Episode.alertname, Episode.target, Episode.labels
                )
                .join(Episode, Episode.id == Approval.episode_id)
                .where(Approval.status == "pending", Episode.state.in_(OPEN_STATES))
                .order_by(Approval.id)
            ).all()
    except SQLAlchemyError as exc:
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DrillRefused(f"cannot tell whether an approval waits for it: the ledger is unreachable ({first[:200]})")
    finally:
        engine.dispose()
    names = {bot.name, bot.instance} - {""}
    found = []
    for row in rows:
        try:
            labels = json.loads(row.labels or "{}")
        except ValueError:
            labels = {}
        values = {row.target, *(str(v) for v in labels.values())} if isinstance(labels, dict) else {row.target}
        if names & values:
            found.append(
                f"approval {row.id} ({row.action} {row.step_name or ''} for {row.alertname})".replace(" )", ")")
            )
    return found


def _flat(status: dict[str, Any]) -> bool:
    """Every position closed, no order working and none in flight (sent, its answer not come: the venue may hold
    it)."""
    try:
        positions = [Decimal(str(v)) for v in (status.get("positions") or {}).values()]
    except InvalidOperation:
        return False
    working = status.get("open_orders") or status.get("orders_in_flight")
    return all(p == 0 for p in positions) and not working


async def run_drill(config: Config, bot: BotEntryConfig, deadline: float = FLAT_DEADLINE_SECONDS) -> list[str]:
    """Halt, flatten, wait until flat, clear the halt and resume; the steps taken, one line each. DrillRefused (nothing
    changed) on a bot that is not active or has an approval pending."""
    key = f"bots[{config.bots.index(bot)}]"
    token = resolve_secret(config, bot, "token", f"{key}.token")
    destructive = resolve_secret(config, bot, "destructive_token", f"{key}.destructive_token") or token
    steps: list[str] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

        async def command(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
            secret = destructive if name in DESTRUCTIVE else token
            url = f"{bot.url.rstrip('/')}/control/{name}"
            try:
                # Sent by the reconciler, on the drill a person asked (its audit entry, under that person's token):
                # the bot counts them as the reconciler's, so its control audit never shows them as a command someone
                # sent straight to the bot.
                headers = {"Authorization": f"Bearer {secret}", SOURCE_HEADER: SOURCE_RECONCILER}
                async with session.post(url, json=args or {}, headers=headers) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200:
                        raise DrillFailed(f"{name}: HTTP {response.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise DrillFailed(f"{name}: {exc or type(exc).__name__}") from exc
            return body if isinstance(body, dict) else {}

        before = await command("status")
        state, reason = str(before.get("state")), str(before.get("state_reason") or "")
        if state != STARTS_FROM:
            by = f" by {before['state_by']}" if before.get("state_by") else ""
            raise DrillRefused(
                f"it is {state} ({reason[:200]}){by}: the drill runs on an active bot only and would lift a state "
                "it did not set; clear it first (a loss-limit halt needs a person's decision)"
            )
        waiting = await asyncio.to_thread(pending_approvals, config, bot)
        if waiting:
            more = f" and {len(waiting) - NAMED_APPROVALS} more" if len(waiting) > NAMED_APPROVALS else ""
            raise DrillRefused(
                f"{', '.join(waiting[:NAMED_APPROVALS])}{more} waits for a person's decision: decide it first "
                "(`trading-ops reconciler approvals`)"
            )
        try:
            return await _exercise(command, steps, deadline)
        except DrillFailed as exc:
            exc.changed = True
            raise


async def _exercise(command: Any, steps: list[str], deadline: float) -> list[str]:
    """Halt, flatten, wait until flat, clear the drill's halt, resume (the bot was active with nothing pending)."""
    began = time.monotonic()
    halted = await command("halt", {"reason": DRILL_REASON})
    if not halted.get("changed", True):
        # Halted by something else between the status and the halt (a loss limit): that halt is not the drill's.
        raise DrillFailed("halt: the bot was halted meanwhile by something else; the drill stops, the halt stays")
    steps.append("halt: no new risk")
    await command("flatten")
    steps.append("flatten: every position closed at the market")
    while True:
        status = await command("status")
        if _flat(status):
            break
        if time.monotonic() - began > deadline:
            raise DrillFailed(f"not flat {deadline:g} s after flatten: {status.get('positions')}")
        await asyncio.sleep(POLL_SECONDS)
    steps.append(f"flat with no order working after {time.monotonic() - began:.1f} s")
    if status.get("state") != "halted" or status.get("state_reason") != DRILL_REASON:
        # Another halt (a limit's, a person's) replaced the drill's while it flattened: it stays.
        raise DrillFailed(
            f"clear_halt: the bot is {status.get('state')} ({str(status.get('state_reason'))[:200]}), not the "
            "drill's halt; it stays as it is"
        )
    await command("clear_halt")
    await command("resume")
    steps.append("halt cleared and trading resumed")
    return steps
