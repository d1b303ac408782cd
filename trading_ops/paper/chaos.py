"""Fault injection for the paper bot (`--chaos`): extra control commands that break it in known ways."""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import shutil
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

from trading_ops.bot.broker import Quote, VenueFill
from trading_ops.bot.control import CommandError, ControlPlane

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 1024 * 1024
PAGE_BYTES = mmap.PAGESIZE
# Caps so that a chaos command can hurt the bot but not the machine it runs on.
MAX_LEAK_MIB = 4096
MAX_DISK_MIB = 4096
MAX_HANG_SECONDS = 3600
# Reasons a venue gives when it refuses every order for a while (the paper venue's reject reasons).
REJECT_STORM_REASONS = ("insufficient_funds", "venue_busy", "price_out_of_band")
# Defaults sized to cross the budgets `trading-ops up` gives the bot (trading_ops.stack.app_config: 384 MiB of
# memory, 256 MiB of data directory) well within a minute, whatever the machine: the leak passes 80 % of the memory
# budget in about 25 s, the fill passes 95 % of the disk budget in about 12 s and ends a quarter past it.
DEFAULT_LEAK_MIB_PER_SECOND = 10
DEFAULT_LEAK_MIB = 1024
DEFAULT_FILL_MIB_PER_SECOND = 20
DEFAULT_FILL_MIB = 320
DEFAULT_LOSS_SPIKE_SHARE_OF_LIMIT = Decimal("1.2")
# Without an amount, a book that cannot lose 1.2x the limit in one gap loses what it can, if that is at least this
# share of the limit (clear of the day's small gains and fees): `chaos loss_spike` works on the demo's book as it is.
MIN_LOSS_SPIKE_SHARE_OF_LIMIT = Decimal("1.05")
# The largest gap of one price, as a share of it: a long position can lose at most this much of its notional at once.
MAX_PRICE_GAP = Decimal("0.9")
# Each fault command and the arguments it takes: any other is refused (400, `chaos` exits 2), never ignored.
CHAOS_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "hang_loop": ("seconds",),
    "crash": ("delay",),
    "drop_connection": (),
    "stale_market_data": ("symbol",),
    "leak_memory": ("mib_per_second", "max_mib"),
    "fill_disk": ("mib_per_second", "max_mib"),
    "position_drift": ("symbol", "quantity"),
    "loss_spike": ("amount",),
    "reject_storm": ("seconds", "reason"),
    "stall_journal": ("seconds",),
    "clear_chaos": (),
}
CHAOS_COMMANDS = tuple(CHAOS_ARGUMENTS)
# The stream's faults, on a paper bot that streams (paper.stream): its push channel dropped (new connections refused
# for `seconds`), a channel acked and then silent (`persistent`: until clear_chaos), executions messages lost (a
# sequence gap).
STREAM_CHAOS_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "drop_stream": ("endpoint", "seconds"),
    "silent_stream": ("channel", "symbol", "persistent"),
    "stream_gap": ("count",),
}
MAX_STREAM_DROP_SECONDS = 3600


class VenueFaults(Protocol):
    """What Chaos breaks on the venue (the paper venue offers it)."""

    def faults(self) -> dict[str, Any]: ...

    async def clear_faults(self) -> None: ...

    async def drop_connection(self) -> None: ...

    async def stop_market_data(self, symbol: str) -> None: ...

    async def inject_hidden_fill(self, symbol: str, quantity: Decimal) -> VenueFill: ...

    async def gap_price(self, symbol: str, relative_change: float) -> Quote: ...

    async def reject_orders(self, reason: str, seconds: float) -> None: ...


class StreamFaults(Protocol):
    """What Chaos breaks on a streaming venue's push channel (PushChannel offers it)."""

    def drop(self, endpoint: str = "all", seconds: float = 0.0) -> int: ...

    def silence(self, channel: str, symbol: str = "*", *, persistent: bool = False) -> None: ...

    def lose(self, count: int) -> None: ...

    def clear(self) -> None: ...

    def faults(self) -> dict[str, Any]: ...


class JournalThread(Protocol):
    """The journal's database thread, which stall_journal blocks (the Journal offers it)."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T: ...


class Holdings(Protocol):
    """What loss_spike reads to size a loss: each symbol's position at its mark (the Book offers it)."""

    def notional(self, symbol: str) -> Decimal: ...


def _number(args: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"{key} must be a number")
    if not low <= value <= high:
        raise CommandError(f"{key} must be between {low} and {high}")
    return float(value)


def _checked(
    name: str, handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """`handler` refusing an argument the fault `name` does not take (a typo would otherwise inject the default)."""
    allowed = CHAOS_ARGUMENTS[name] if name in CHAOS_ARGUMENTS else STREAM_CHAOS_ARGUMENTS[name]

    async def handle(args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(str(key)[:40] for key in args if key not in allowed)
        if unknown:
            takes = ", ".join(allowed) if allowed else "no argument"
            raise CommandError(f"{name} does not take {', '.join(unknown)} (it takes {takes})")
        return await handler(args)

    return handle


class Chaos:
    """Registers the fault commands on a bot's control plane and keeps what they started. It needs only what it
    breaks, each through a small Protocol: the venue's faults, the journal's thread, the trading loop (`hang`), the
    holdings (to size a loss) and a scratch directory."""

    def __init__(
        self,
        control: ControlPlane,
        venue: VenueFaults,
        *,
        symbols: Sequence[str],
        journal: JournalThread,
        book: Holdings,
        hang: Callable[[float], None],
        daily_loss_limit: float,
        data_dir: Path,
        stream: StreamFaults | None = None,
    ) -> None:
        self.venue = venue
        self.stream = stream
        self.state = control.state  # the trading state: a loss_spike on a bot that trades nothing says so
        self.symbols = list(symbols)
        self.journal = journal
        self.book = book
        self.hang = hang
        self.daily_loss_limit = daily_loss_limit
        self.scratch = data_dir / "scratch"
        self._leak: list[mmap.mmap] = []
        self._journal_stalls: list[threading.Event] = []  # set to release a stalled journal thread
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.active: dict[str, Any] = {}
        for name in CHAOS_COMMANDS:
            control.register(name, _checked(name, getattr(self, f"_{name}")))
        names = list(CHAOS_COMMANDS)
        if stream is not None:
            for name in STREAM_CHAOS_ARGUMENTS:
                control.register(name, _checked(name, getattr(self, f"_{name}")))
            names += STREAM_CHAOS_ARGUMENTS
        log.warning("chaos commands enabled: %s", ", ".join(names))

    def status(self) -> dict[str, Any]:
        stream = {"stream": self.stream.faults()} if self.stream is not None else {}
        return {**self.active, "venue": self.venue.faults(), **stream, "leaked_mib": len(self._leak)}

    def clear(self) -> None:
        for release in self._journal_stalls:
            release.set()
        self._journal_stalls.clear()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        for chunk in self._leak:
            chunk.close()  # unmapped: the memory goes back to the system at once
        self._leak.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.hang(0)
        self.active.clear()

    def _symbol(self, args: dict[str, Any]) -> str:
        symbol = args.get("symbol", self.symbols[0])
        if symbol not in self.symbols:
            raise CommandError(f"unknown symbol {str(symbol)[:32]!r}; known: {', '.join(self.symbols)}")
        return str(symbol)

    # -- faults ---------------------------------------------------------------------------------------
    async def _hang_loop(self, args: dict[str, Any]) -> dict[str, Any]:
        seconds = _number(args, "seconds", 300, 0.1, MAX_HANG_SECONDS)
        self.hang(seconds)
        self.active["hang_loop"] = {"seconds": seconds}
        return {"fault": "hang_loop", "seconds": seconds}

    async def _crash(self, args: dict[str, Any]) -> dict[str, Any]:
        delay = _number(args, "delay", 0.2, 0, 10)
        loop = asyncio.get_running_loop()
        # After the response is on its way: SIGKILL, so no clean-shutdown code runs, as in a real crash.
        loop.call_later(delay, os.kill, os.getpid(), signal.SIGKILL)
        return {"fault": "crash", "in_seconds": delay}

    async def _drop_connection(self, _args: dict[str, Any]) -> dict[str, Any]:
        await self.venue.drop_connection()
        return {"fault": "drop_connection", "heal": "reconnect"}

    async def _stale_market_data(self, args: dict[str, Any]) -> dict[str, Any]:
        symbol = self._symbol(args)
        await self.venue.stop_market_data(symbol)
        return {"fault": "stale_market_data", "symbol": symbol, "heal": "resubscribe"}

    async def _leak_memory(self, args: dict[str, Any]) -> dict[str, Any]:
        rate = _number(args, "mib_per_second", DEFAULT_LEAK_MIB_PER_SECOND, 0.1, 512)
        limit = _number(args, "max_mib", DEFAULT_LEAK_MIB, 1, MAX_LEAK_MIB)

        async def leak() -> None:
            while len(self._leak) < limit:
                # An anonymous mapping of its own, not a Python object on the heap: clear_chaos unmaps it and the
                # process's resident memory really falls (freed heap memory often stays with the process).
                chunk = mmap.mmap(-1, MIB)
                chunk[::PAGE_BYTES] = b"x" * (MIB // PAGE_BYTES)  # touch every page so it is resident
                self._leak.append(chunk)
                await asyncio.sleep(1 / rate)

        self._start("leak_memory", leak())
        self.active["leak_memory"] = {"mib_per_second": rate, "max_mib": limit}
        return {"fault": "leak_memory", "mib_per_second": rate, "max_mib": limit}

    async def _fill_disk(self, args: dict[str, Any]) -> dict[str, Any]:
        rate = _number(args, "mib_per_second", DEFAULT_FILL_MIB_PER_SECOND, 0.1, 1024)
        limit = int(_number(args, "max_mib", DEFAULT_FILL_MIB, 1, MAX_DISK_MIB))
        self.scratch.mkdir(parents=True, exist_ok=True)

        def write_mib(index: int) -> None:
            with open(self.scratch / f"fill-{index:05d}.bin", "wb") as fh:
                fh.write(os.urandom(MIB))

        async def fill() -> None:
            for index in range(limit):
                await asyncio.to_thread(write_mib, index)
                await asyncio.sleep(1 / rate)

        self._start("fill_disk", fill())
        self.active["fill_disk"] = {"mib_per_second": rate, "max_mib": limit, "path": str(self.scratch)}
        return {"fault": "fill_disk", "path": str(self.scratch), "max_mib": limit}

    async def _position_drift(self, args: dict[str, Any]) -> dict[str, Any]:
        symbol = self._symbol(args)
        quantity = Decimal(str(_number(args, "quantity", 0.05, -1e9, 1e9)))
        if quantity == 0:
            raise CommandError("quantity must not be 0")
        fill = await self.venue.inject_hidden_fill(symbol, quantity)
        return {
            "fault": "position_drift",
            "symbol": symbol,
            "quantity": str(quantity),
            "trade_id": fill.trade_id,
            "heal": "the bot's own reconciliation",
        }

    async def _loss_spike(self, args: dict[str, Any]) -> dict[str, Any]:
        """Gap every held symbol's price against the position by the same share, together losing exactly `amount`.
        Without one: 1.2x the daily loss limit, or what the book can lose in one gap (at most 90 % of a price) when
        that is less but still 1.05x the limit or more. A book too small to lose what is asked is refused with what
        it could lose, rather than delivering less than the answer says."""
        limit = Decimal(str(self.daily_loss_limit))
        book = self.book
        held = {s: book.notional(s) for s in self.symbols if book.notional(s)}
        if not held:
            state = self.state.state
            if not state.may_open_positions:  # halted, paused, flattening, reduce_only: it opens none to lose on
                raise CommandError(
                    f"the bot holds no position to lose on, and opens none while {state.value}: "
                    "resume it (a halt: clear_halt, then resume) before a loss_spike"
                )
            raise CommandError("the bot holds no position to lose on yet; try again in a few seconds")
        exposure = sum(abs(n) for n in held.values())
        if "amount" in args:
            amount = Decimal(str(_number(args, "amount", 0, 1, 1e12)))
        elif not limit:
            raise CommandError("the bot has no daily loss limit to pass: give an amount")
        else:
            # Rounded down: a cent up would ask for a gap just past the largest one, and be refused.
            most = (exposure * MAX_PRICE_GAP).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
            amount = min(limit * DEFAULT_LOSS_SPIKE_SHARE_OF_LIMIT, most)
            if amount < limit * MIN_LOSS_SPIKE_SHARE_OF_LIMIT:
                raise CommandError(
                    f"the book's exposure {exposure:.2f} can lose at most {most:.2f} in one gap, not enough to pass "
                    f"the daily loss limit {limit:.2f} clearly: try again once the bot holds more, or give an amount"
                )
        move = amount / exposure
        if move > MAX_PRICE_GAP:
            raise CommandError(
                f"the book's exposure {exposure:.2f} can lose at most {exposure * MAX_PRICE_GAP:.2f} in one gap, less "
                f"than the {amount:.2f} asked: ask for less, or try again once the bot holds more"
            )
        for symbol, notional in held.items():
            await self.venue.gap_price(symbol, float(-move if notional > 0 else move))
        return {
            "fault": "loss_spike",
            "symbols": sorted(held),
            "price_move": f"{move:.4f}",
            "expected_loss": str((exposure * move).quantize(Decimal("0.01"))),
        }

    async def _reject_storm(self, args: dict[str, Any]) -> dict[str, Any]:
        """The venue rejects every new order for `seconds` (default 300) with `reason` (default insufficient_funds),
        the connection staying up: the reject ratio climbs while the strategy keeps trying."""
        seconds = _number(args, "seconds", 300, 1, MAX_HANG_SECONDS)
        reason = args.get("reason", REJECT_STORM_REASONS[0])
        if reason not in REJECT_STORM_REASONS:
            raise CommandError(f"reason must be one of {', '.join(REJECT_STORM_REASONS)}")
        await self.venue.reject_orders(str(reason), seconds)
        self.active["reject_storm"] = {"seconds": seconds, "reason": reason}
        return {"fault": "reject_storm", "seconds": seconds, "reason": reason, "heal": "pause, then a human"}

    async def _stall_journal(self, args: dict[str, Any]) -> dict[str, Any]:
        """The journal's database thread blocks (a hung database): writes queue behind it, the trading loop stalls
        on its next write, and a shutdown cannot flush; its deadline must still end the process."""
        seconds = _number(args, "seconds", 300, 0.1, MAX_HANG_SECONDS)
        release = threading.Event()
        self._journal_stalls.append(release)

        async def stall() -> None:
            await self.journal.call(release.wait, seconds)

        self._start("stall_journal", stall())
        self.active["stall_journal"] = {"seconds": seconds}
        return {"fault": "stall_journal", "seconds": seconds, "heal": "clear_chaos"}

    async def _clear_chaos(self, _args: dict[str, Any]) -> dict[str, Any]:
        self.clear()
        await self.venue.clear_faults()
        if self.stream is not None:
            self.stream.clear()
        return {"cleared": True}

    # -- the stream's faults (a streaming paper bot) ------------------------------------------------------------
    def _stream(self) -> StreamFaults:
        assert self.stream is not None  # registered only with one
        return self.stream

    async def _drop_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        endpoint = args.get("endpoint", "all")
        if endpoint not in ("public", "private", "all"):
            raise CommandError("endpoint must be public, private or all")
        seconds = _number(args, "seconds", 0, 0, MAX_STREAM_DROP_SECONDS)
        closed = self._stream().drop(str(endpoint), seconds)
        return {"fault": "drop_stream", "endpoint": endpoint, "seconds": seconds, "closed": closed, "heal": "reconnect"}

    async def _silent_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel", "ticker")
        if channel not in ("ticker", "executions"):
            raise CommandError("channel must be ticker or executions")
        symbol = self._symbol(args) if "symbol" in args else "*"
        persistent = args.get("persistent", False)
        if not isinstance(persistent, bool):
            raise CommandError("persistent must be true or false")
        self._stream().silence(str(channel), symbol, persistent=persistent)
        heal = "clear_chaos" if persistent else "resubscribe"
        return {"fault": "silent_stream", "channel": channel, "symbol": symbol, "persistent": persistent, "heal": heal}

    async def _stream_gap(self, args: dict[str, Any]) -> dict[str, Any]:
        count = int(_number(args, "count", 1, 1, 1000))
        self._stream().lose(count)
        return {"fault": "stream_gap", "count": count, "heal": "reconcile"}

    def _start(self, name: str, coro: Any) -> None:
        previous = self._tasks.pop(name, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(coro, name=f"chaos-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._tasks.pop(name, None) if self._tasks.get(name) is t else None)
