"""Polls one freqtrade's REST API on an interval and keeps the last answers as an immutable snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from trading_ops.integrations.freqtrade.client import FreqtradeClient, FreqtradeRefused, FreqtradeUnavailable
from trading_ops.integrations.freqtrade.logs import LOG_LIMIT, LogCursor, Record, records
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)

# freqtrade's bot states -> the library's trading states. `stopped` is freqtrade's kill switch: nothing trades
# until someone starts it again, exactly what `halted` means.
STATES = {"running": "active", "paused": "paused", "stopped": "halted"}
# freqtrade rebuilding itself in place (its reload_config: the sidecar's reconnect and reload, a config change): no one
# decided to stop it, and it comes back in its configuration's initial_state a second or two later. Its API answers
# `reload_config` for about a second, then for a moment an empty state, then nothing until the new bot answers
# (freqtrade 2026.9). In any state but STATES the sidecar keeps reporting the state it saw last (a reload is no
# transition), or `paused` when it has seen none yet.
RELOADING_UNKNOWN = "paused"
# What `tradingbot_freqtrade_info` says of freqtrade besides its version: kept, with the version, while freqtrade is
# down, so its info series keeps its labels (a new series with empty ones would read as another bot).
INFO_KEYS = ("exchange", "strategy", "bot_name", "dry_run", "trading_mode", "stake_currency")
# Trades that closed since the last poll are asked for with this many more (freqtrade lists them newest first), so
# one that closed between two of a poll's requests is not missed; the first poll asks for this many alone (already
# closed: a baseline), so every answer overlaps trades already known. /trades answers at most 500 at a time.
CLOSED_MARGIN = 5
CLOSED_MAX = 500
# A sidecar that started with its host (a host back from the dead, a reboot) waits for freqtrade's API, which comes up
# after its exchange and strategy are built (10-30 s): until freqtrade first answers it, for at most this long after
# the sidecar's own start, the bot is `starting`, as a runtime bot is during its safe start. The rules' own bound on a
# start (tradingbot-availability.yml: 300 s after process_start_time_seconds) is the same; past it, a freqtrade that
# never answered is down.
STARTING_SECONDS = 300.0


@dataclass(frozen=True)
class News:
    """What happened since the previous poll: freqtrade's new log records and the trades it closed."""

    records: list[Record]
    closed_trades: list[dict[str, Any]]


# Called after every answered poll with (previous snapshot, new snapshot, news, count): count is false for the
# sidecar's first answered poll, whose news are history (a baseline, not events).
Listener = Callable[["Snapshot", "Snapshot", News, bool], None]
# Called after every poll freqtrade did not answer, with the new snapshot.
DownListener = Callable[["Snapshot"], None]


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
    heartbeat: float | None = None  # freqtrade's last completed process() iteration (Unix time, to the microsecond)
    bot_start: float | None = None  # when this freqtrade process started (health's bot_startup)
    closed_count: int | None = None  # trades freqtrade closed since its database began (/profit)
    trades: tuple[dict[str, Any], ...] = ()
    profit: dict[str, Any] = field(default_factory=dict)
    balance: dict[str, Any] = field(default_factory=dict)
    locks: dict[str, Any] = field(default_factory=dict)
    today: dict[str, Any] | None = None
    # The library's state freqtrade was in last, kept while it is in none of STATES: a reload_config.
    before_reload: str | None = None

    @property
    def freqtrade_state(self) -> str | None:
        state = self.config.get("state")
        return str(state) if state is not None else None

    @property
    def phase(self) -> str | None:
        """freqtrade's lifecycle phase as the runtime exports it (tradingbot_phase): `starting` until its loop has
        completed an iteration since its start (or while it reloads its configuration: it builds its exchange and
        strategy again), `trading` after; None while it does not answer (it may be dead: TradingBotFreqtradeDown)."""
        if not self.up:
            return None
        if self.freqtrade_state == "reload_config":
            return "starting"
        if self.heartbeat is None or (self.bot_start is not None and self.heartbeat < self.bot_start):
            return "starting"
        return "trading"

    @property
    def state(self) -> str | None:
        """The library's trading state, or None while down; while freqtrade reloads, the one before."""
        if not self.up:
            return None
        return STATES.get(self.freqtrade_state or "") or self.before_reload or RELOADING_UNKNOWN

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
        # The sidecar is shutting down (its phase `stopping` from then on).
        self.stopping = False
        self._clock = clock
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._polled = asyncio.Event()
        self.listeners: list[Listener] = []
        self.down_listeners: list[DownListener] = []
        self._cursor = LogCursor()
        self._baseline = False
        self._known_state: str | None = None  # the last state freqtrade was in that was not a reload
        # One poll at a time: a command's fresh poll waits for the scheduled one in flight, so each poll starts from
        # the snapshot of the one before (two at once would both start from the same one, and the slower, older
        # answer would come last: counters would see fees fall and rise again, trades close twice).
        self._polling = asyncio.Lock()

    @property
    def phase(self) -> str | None:
        """The lifecycle phase the sidecar exports for its freqtrade (tradingbot_phase, `status`): `stopping` once the
        sidecar shuts down; `starting` before freqtrade has ever answered this sidecar (for STARTING_SECONDS after its
        start: a returning host's freqtrade is starting, not down); else what the last answer says (Snapshot.phase:
        None while freqtrade does not answer after it did, as it may be dead)."""
        if self.stopping:
            return "stopping"
        snap = self.snapshot
        if not snap.up and snap.polled_at is None and time.monotonic() - self._started < STARTING_SECONDS:
            return "starting"
        return snap.phase

    async def start(self) -> None:
        await self.client.open()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="freqtrade-poller")

    async def stop(self) -> None:
        self.stopping = True
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

    async def poll(self, timeout: float | None = None, connect_for: float = 0.0) -> Snapshot:
        """Ask freqtrade everything once, each request within `timeout` seconds (default: the client's) and a refused
        connection tried again for `connect_for` (FreqtradeClient.call); a failure of any part reports it down (never
        half a picture)."""
        async with self._polling:
            return await self._poll(timeout, connect_for)

    async def _poll(self, timeout: float | None, connect_for: float = 0.0) -> Snapshot:
        previous = self.snapshot
        try:
            snapshot, news = await self._fetch(previous, timeout, connect_for)
        except (FreqtradeUnavailable, FreqtradeRefused) as exc:
            if previous.up or not previous.error:
                log.warning("freqtrade at %s is down: %s", self.client.base, exc)
            snapshot = Snapshot(
                up=False,
                polled_at=previous.polled_at,
                error=str(exc),
                version=previous.version,
                config={k: previous.config[k] for k in INFO_KEYS if k in previous.config},
                heartbeat=previous.heartbeat,
                bot_start=previous.bot_start,
                closed_count=previous.closed_count,
            )
            for down_listener in self.down_listeners:
                down_listener(snapshot)
        else:
            if not previous.up:
                log.info("freqtrade at %s is up (version %s)", self.client.base, snapshot.version)
            for listener in self.listeners:
                listener(previous, snapshot, news, self._baseline)
            self._baseline = True
        self.snapshot = snapshot
        self.polls += 1
        self._polled.set()
        return snapshot

    async def _fetch(self, previous: Snapshot, timeout: float | None, connect_for: float) -> tuple[Snapshot, News]:
        c = self.client

        def get(path: str, **params: Any) -> Awaitable[Any]:
            return c.get(path, timeout=timeout, connect_for=connect_for, **params)

        health, config, trades, profit, balance, locks, daily, logs = await asyncio.gather(
            get("/health"),
            get("/show_config"),
            get("/status"),
            get("/profit"),
            get("/balance"),
            get("/locks"),
            get("/daily", timescale=1),
            get("/logs", limit=LOG_LIMIT),
        )
        profit = profit if isinstance(profit, dict) else {}
        closed_count = profit.get("closed_trade_count")
        closed_count = closed_count if isinstance(closed_count, int) and not isinstance(closed_count, bool) else None
        closed: list[dict[str, Any]] = []
        limit = 0
        if closed_count is not None and previous.closed_count is None:
            limit = CLOSED_MARGIN  # the first answer: the latest closed trades, the ones the margin will ask again
        elif closed_count is not None and previous.closed_count is not None and closed_count > previous.closed_count:
            limit = min(closed_count - previous.closed_count + CLOSED_MARGIN, CLOSED_MAX)
        if limit and closed_count:
            # Newest closed first: by default freqtrade sorts /trades by id, oldest first, and a limit would then
            # answer the same oldest trades forever, never the one that just closed.
            answer = await get("/trades", limit=limit, order_by_id="false")
            rows = answer.get("trades") if isinstance(answer, dict) else None
            closed = [t for t in rows if isinstance(t, dict)] if isinstance(rows, list) else []
        # The version is asked once per freqtrade process (a restart may bring another one).
        version = previous.version
        bot_start = _instant(health, "bot_startup")
        if version is None or not previous.up or bot_start != previous.bot_start:
            answer = await get("/version")
            version = str(answer.get("version")) if isinstance(answer, dict) else None
        days = daily.get("data") if isinstance(daily, dict) else None
        snapshot = Snapshot(
            up=True,
            polled_at=self._clock(),
            version=version,
            config=config if isinstance(config, dict) else {},
            heartbeat=_instant(health, "last_process"),
            bot_start=bot_start,
            closed_count=closed_count,
            trades=tuple(t for t in trades if isinstance(t, dict)) if isinstance(trades, list) else (),
            profit=profit,
            balance=balance if isinstance(balance, dict) else {},
            locks=locks if isinstance(locks, dict) else {},
            today=days[0] if isinstance(days, list) and days and isinstance(days[0], dict) else None,
            before_reload=self._known_state,
        )
        if (snapshot.freqtrade_state or "") in STATES:
            self._known_state = snapshot.state
        return snapshot, News(self._cursor.new(records(logs)), closed)

    def replace(self, **changes: Any) -> None:
        """Amend the snapshot (a command's known effect) until the next poll confirms it."""
        self.snapshot = dataclasses.replace(self.snapshot, **changes)


def _instant(health: Any, key: str) -> float | None:
    """A time of freqtrade's /health as Unix time: `key` to the microsecond, else `key`_ts (whole seconds)."""
    if not isinstance(health, dict):
        return None
    text = health.get(key)
    if isinstance(text, str) and text:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return _number(health.get(f"{key}_ts"))


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
