"""Helpers to run a real paper bot in the test's event loop with fast settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from decision_helpers import TRUSTED
from polling import until_async

from trading_ops.bot.gate import REFUSED_STALE
from trading_ops.config import Config, parse_config
from trading_ops.db import migrate

TOKEN = "paper-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class IdleStrategy:
    """Places nothing, so that a test places exactly the orders it needs. The bot stays active: a paused bot's order
    gate refuses every order, the test's own included."""

    async def step(self, bot: Any) -> None:
        return None


def fast_config(tmp_path: Path, **paper: Any) -> Config:
    """A paper bot that trades every 20 ms on a venue ticking every 10 ms, with no random rejects."""
    settings: dict[str, Any] = {
        "seed": 7,
        "tick_interval_seconds": 0.01,
        "loop_interval_seconds": 0.02,
        "order_latency_seconds": 0.0,
        "reject_probability": 0.0,
        "partial_fill_probability": 0.3,
        "volatility": 0.002,
        "order_max_age_seconds": 0.2,
    }
    settings.update(paper)
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    migrate.upgrade(url)
    return parse_config(
        {
            "database": {"url": url},
            "bot": {
                "data_dir": str(tmp_path / "data"),
                "heartbeat_timeout_seconds": 0.5,
                "market_data_stale_seconds": 0.3,
                "event_loop_lag_interval_seconds": 0.05,
                "decision_keys": [TRUSTED],
            },
            "paper": settings,
        },
        base_dir=tmp_path,
    )


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """`polling.until_async` named by the predicate (no error waited out): its truthy result, or a failure at the
    deadline."""
    what = f"condition {getattr(predicate, '__name__', predicate)}"
    return await until_async(what, predicate, timeout, interval, tolerate=())


async def control(
    port: int, command: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/control/{command}", json=body or {}, headers=AUTH if headers is None else headers
        ) as response,
    ):
        return response.status, await response.json()


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


def counter_total(bot: Any, family: str) -> float:
    """The sum of a counter family's `_total` samples over every label set (e.g. all fills of a bot)."""
    return sum(
        s.value
        for f in bot.inst.registry.collect()
        if f.name == family
        for s in f.samples
        if s.name == f"{family}_total"
    )


def refused_stale(bot: Any) -> float:
    """How many orders the gate refused for stale market data, over every symbol."""
    return sum(
        s.value
        for f in bot.inst.registry.collect()
        if f.name == "tradingbot_orders_refused"
        for s in f.samples
        if s.name == "tradingbot_orders_refused_total" and s.labels.get("reason") == REFUSED_STALE
    )


async def submit_fresh(bot: Any, *args: Any, timeout: float = 20.0, **kwargs: Any) -> Any:
    """`bot.submit(*args, **kwargs)`, again while the gate refuses it for stale market data only: fast_config's bound
    is 0.3 s, which a busy machine's late tick (every 10 ms) passes now and then. A refusal of any other kind is the
    answer (None), and so is the order it placed."""

    async def answered() -> list[Any] | None:
        stale = refused_stale(bot)
        order = await bot.submit(*args, **kwargs)
        return None if order is None and refused_stale(bot) > stale else [order]

    return (await until_async("an order the gate did not refuse for stale market data", answered, timeout))[0]


NOT_PLACED = ("tradingbot_orders_refused", "tradingbot_orders_rejected", "tradingbot_orders_outcome_unknown")


def not_placed(bot: Any) -> str:
    """Why the bot's orders did not go out, as its counters say: each refusal by the bot's gate (by symbol and
    reason), rejection by the venue and submission without an answer, and the bot's trading state."""
    counts = [
        f"{f.name}{{{', '.join(f'{k}={v}' for k, v in s.labels.items() if k in ('symbol', 'reason'))}}} {s.value:g}"
        for f in bot.inst.registry.collect()
        if f.name in NOT_PLACED
        for s in f.samples
        if s.name == f"{f.name}_total" and s.value
    ]
    state = bot.inst.state
    return f"{'; '.join(counts) or 'no refusal, rejection or unknown outcome counted'} (state {state.state.value})"


async def placed(bot: Any, *args: Any, **kwargs: Any) -> Any:
    """The order `bot.submit(*args, **kwargs)` placed (after any refusal for market data gone stale meanwhile, see
    submit_fresh); a test that needs it placed fails saying why it was not."""
    order = await submit_fresh(bot, *args, **kwargs)
    assert order is not None, f"the order {args} was not placed: {not_placed(bot)}"
    return order


def submitted(bot: Any) -> float:
    """Every order a bot (a BotRuntime) sent to its venue: tradingbot_orders_submitted_total over all its labels."""
    return sum(
        s.value
        for f in bot.inst.registry.collect()
        if f.name == "tradingbot_orders_submitted"
        for s in f.samples
        if s.name.endswith("_total")
    )
