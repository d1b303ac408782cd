"""The example ccxt bot as the venue tests run it (examples/ccxt_bot.py on the paper gateway): its configuration,
its process, its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from ccxt_helpers import (
    API_KEY,
    API_SECRET,
)
from paper_helpers import TOKEN, get
from system_binaries import REPO_ROOT

from trading_ops.db import migrate

EXAMPLE = REPO_ROOT / "examples" / "ccxt_bot.py"
LIBRARY_DOCS = REPO_ROOT / "docs" / "library.md"
BOT, VENUE = "ccxt-1", "kraken"
SYMBOLS = ["BTC-USD", "ETH-USD"]
NEVER = 3600  # seconds: order polls off, so the bot hears of fills only through its reconciliations
MOVING = {"tick_interval": 0.02, "volatility": 0.001, "reject_probability": 0.0}
# Slow enough that the resting bids (0.2 % under the bid) mostly rest for the seconds the kill test takes, fast
# enough that the mid keeps crossing its average (market orders).
DRIFTING = {**MOVING, "volatility": 0.0002}
STOP_SECONDS = 30.0


def write_config(
    tmp: Path,
    base: str,
    port: int,
    name: str = "bot.yaml",
    recovery: dict[str, Any] | None = None,
    *,
    bot: str = BOT,
    key: tuple[str, str] = (API_KEY, API_SECRET),
    database: str | None = None,
    dead_man_switch: dict[str, Any] | None = None,
    **ccxt: Any,
) -> Path:
    """The example bot's configuration: the paper gateway at `base` through ccxt's `urls` with the API `key` (key,
    secret), fast loop and recovery; its journal in `database` (default: its own, in `tmp`); `dead_man_switch`: its
    bot.dead_man_switch section (default: the configuration's)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for file, value in (("api-key", key[0]), ("api-secret", key[1]), ("token", TOKEN)):
        (tmp / file).write_text(value)
    url = database or f"sqlite:///{tmp / 'journal.db'}"
    migrate.upgrade(url)
    settings = {
        "database": {"url": url},
        "bot": {
            "name": bot,
            "venue": VENUE,
            "strategy": "mean-reverter",
            "listen": {"host": "127.0.0.1", "port": port},
            "control_token_file": str(tmp / "token"),
            "data_dir": str(tmp / "data"),
            "loop_interval_seconds": 0.05,
            "market_data_stale_seconds": 2,
            "risk": {"daily_loss_limit": 5000},
            **({"dead_man_switch": dead_man_switch} if dead_man_switch else {}),
        },
        "ccxt": {
            "exchange": "kraken",
            "api_key_file": str(tmp / "api-key"),
            "api_secret_file": str(tmp / "api-secret"),
            "urls": {"public": base, "private": base},
            "symbols": SYMBOLS,
            "poll_interval_seconds": 0.1,
            "quote_poll_interval_seconds": 0.1,
            "enable_rate_limit": False,
            # No call budget: the gateway here keeps no call counter, and these bots step every 50 ms
            # (tests/venues/test_call_counter.py is about the counter).
            "kraken_tier": "off",
            **ccxt,
        },
        "recovery": {
            "heartbeat_interval_seconds": 0.2,
            "crash_timeout_seconds": 1,
            "reconcile_interval_seconds": 0,
            **(recovery or {}),
        },
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(settings))
    return path


@contextlib.asynccontextmanager
async def example_bot(config: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python examples/ccxt_bot.py CONFIG`, its log in `log`, in a process group of its own (what a host looks like
    to the venue: `os.killpg` kills all of it); killed if the test leaves it running."""
    with open(log, "ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), str(config), stdout=out, stderr=out, cwd=REPO_ROOT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a family's samples on the bot's /metrics whose labels include `labels` (0 when absent)."""
    try:
        status, text = await get(port, "/metrics")
    except aiohttp.ClientError:
        return 0.0
    total = 0.0
    for found in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found.group(2))
    return total


async def _at_least(port: int, name: str, value: float, **labels: str) -> bool:
    return await metric(port, name, **labels) >= value
