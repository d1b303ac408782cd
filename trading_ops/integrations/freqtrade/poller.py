"""Polls one freqtrade's REST API on an interval and keeps the last answers as an immutable snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from trading_ops.integrations.freqtrade.client import FreqtradeClient, FreqtradeRefused, FreqtradeUnavailable
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)

# freqtrade's bot states -> the library's trading states. `stopped` is freqtrade's kill switch: nothing trades
# until someone starts it again, exactly what `halted` means; `reload_config` is a moment of standing still.
STATES = {"running": "active", "paused": "paused", "stopped": "halted", "reload_config": "paused"}


def symbol_of(pair: str) -> str:
    """freqtrade's pair (BTC/USD, or BTC/USDT:USDT for futures) as the library's symbol (BTC-USD)."""
    return pair.split(":", 1)[0].replace("/", "-")


@dataclass(frozen=True)
class Snapshot:
    """What the last poll learned. `up` false: freqtrade did not answer the last poll; then only what stays true of a
    dead process is kept (its version, its last heartbeat), never data that would read as zeros."""

    up: bool = False
    polled_at: float | None = None  # Unix time of the last poll that succeeded
    error: str = ""
    version: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    heartbeat: float | None = None  # freqtrade's last completed process() iteration (Unix time)
    bot_start: float | None = None  # when this freqtrade process started (health's bot_startup)
    trades: tuple[dict[str, Any], ...] = ()
    profit: dict[str, Any] = field(default_factory=dict)
    balance: dict[str, Any] = field(default_factory=dict)
    locks: dict[str, Any] = field(default_factory=dict)
    today: dict[str, Any] | None = None

    @property
    def freqtrade_state(self) -> str | None:
        state = self.config.get("state")
        return str(state) if state is not None else None

    @property
    def state(self) -> str | None:
        """The library's trading state, or None while down or unknown."""
        return STATES.get(self.freqtrade_state or "") if self.up else None

    @property
    def venue(self) -> str:
        return str(self.config.get("exchange") or "unknown")

    @property
    def strategy(self) -> str:
        return str(self.config.get("strategy") or "unknown")

    @property
    def max_open_trades(self) -> float | None:
        value = self.config.get("max_open_trades")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return float(value)
        return None  # -1 / inf: unlimited

    def open_orders(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(trade, order) for every order freqtrade holds open."""
        return [(t, o) for t in self.trades for o in t.get("orders") or () if o.get("is_open")]


class FreqtradePoller:
    """Keeps `snapshot` fresh: one poll every `interval` seconds, each bounded by the client's timeout."""

    def __init__(self, client: FreqtradeClient, interval: float, clock: Any = time.time) -> None:
        self.client = client
        self.interval = interval
        self.snapshot = Snapshot()
        self.polls = 0
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._polled = asyncio.Event()

    async def start(self) -> None:
        await self.client.open()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="freqtrade-poller")

    async def stop(self) -> None:
        await stop_tasks([self._task])
        self._task = None
        await self.client.close()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def wait_next(self, timeout: float) -> Snapshot:
        """The snapshot of the next poll to complete (for a command that must see its own effect)."""
        self._polled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._polled.wait(), timeout)
        return self.snapshot

    async def poll(self) -> Snapshot:
        """Ask freqtrade everything once; a failure of any part reports it down (never half a picture)."""
        previous = self.snapshot
        try:
            snapshot = await self._fetch(previous)
        except (FreqtradeUnavailable, FreqtradeRefused) as exc:
            if previous.up or not previous.error:
                log.warning("freqtrade at %s is down: %s", self.client.base, exc)
            snapshot = Snapshot(
                up=False,
                polled_at=previous.polled_at,
                error=str(exc),
                version=previous.version,
                config={k: previous.config[k] for k in ("exchange", "strategy") if k in previous.config},
                heartbeat=previous.heartbeat,
                bot_start=previous.bot_start,
            )
        else:
            if not previous.up:
                log.info("freqtrade at %s is up (version %s)", self.client.base, snapshot.version)
        self.snapshot = snapshot
        self.polls += 1
        self._polled.set()
        return snapshot

    async def _fetch(self, previous: Snapshot) -> Snapshot:
        c = self.client
        health, config, trades, profit, balance, locks, daily = await asyncio.gather(
            c.get("/health"),
            c.get("/show_config"),
            c.get("/status"),
            c.get("/profit"),
            c.get("/balance"),
            c.get("/locks"),
            c.get("/daily", timescale=1),
        )
        # The version is asked once per freqtrade process (a restart may bring another one).
        version = previous.version
        bot_start = _number(health.get("bot_startup_ts")) if isinstance(health, dict) else None
        if version is None or not previous.up or bot_start != previous.bot_start:
            answer = await c.get("/version")
            version = str(answer.get("version")) if isinstance(answer, dict) else None
        days = daily.get("data") if isinstance(daily, dict) else None
        return Snapshot(
            up=True,
            polled_at=self._clock(),
            version=version,
            config=config if isinstance(config, dict) else {},
            heartbeat=_number(health.get("last_process_ts")) if isinstance(health, dict) else None,
            bot_start=bot_start,
            trades=tuple(t for t in trades if isinstance(t, dict)) if isinstance(trades, list) else (),
            profit=profit if isinstance(profit, dict) else {},
            balance=balance if isinstance(balance, dict) else {},
            locks=locks if isinstance(locks, dict) else {},
            today=days[0] if isinstance(days, list) and days and isinstance(days[0], dict) else None,
        )

    def replace(self, **changes: Any) -> None:
        """Amend the snapshot (a command's known effect) until the next poll confirms it."""
        self.snapshot = dataclasses.replace(self.snapshot, **changes)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
