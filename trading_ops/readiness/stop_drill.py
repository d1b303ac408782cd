"""The emergency stop exercised on a paper bot: halt, flatten, see it flat with nothing working, then trade again.

What the readiness criterion `emergency_stop` counts (tradingbot_control_commands_total of halt and flatten); run on a
paper bot only, whose positions are the paper venue's.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp

from trading_ops.config import BotEntryConfig, Config, resolve_secret

# How long the bot may take to be flat after `flatten` (its market orders filled) before the drill fails.
FLAT_DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.2
TIMEOUT = aiohttp.ClientTimeout(total=10)
DESTRUCTIVE = ("halt", "flatten", "clear_halt")


class DrillFailed(Exception):
    """The bot did not do what the emergency stop asks; the message says which step."""


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
    """Halt, flatten, wait until flat, clear the halt and resume; the steps taken, one line each."""
    key = f"bots[{config.bots.index(bot)}]"
    token = resolve_secret(config, bot, "token", f"{key}.token")
    destructive = resolve_secret(config, bot, "destructive_token", f"{key}.destructive_token") or token
    steps: list[str] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

        async def command(name: str) -> dict[str, Any]:
            secret = destructive if name in DESTRUCTIVE else token
            url = f"{bot.url.rstrip('/')}/control/{name}"
            try:
                async with session.post(url, json={}, headers={"Authorization": f"Bearer {secret}"}) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200:
                        raise DrillFailed(f"{name}: HTTP {response.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise DrillFailed(f"{name}: {exc or type(exc).__name__}") from exc
            return body if isinstance(body, dict) else {}

        began = time.monotonic()
        await command("halt")
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
        await command("clear_halt")
        await command("resume")
        steps.append("halt cleared and trading resumed")
    return steps
