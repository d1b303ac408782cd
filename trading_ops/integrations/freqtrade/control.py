"""The library's control commands carried out on freqtrade through its REST API; what it cannot do answers 409."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from trading_ops.bot.broker import BrokerError
from trading_ops.bot.control import CALLER, COMMAND_SCOPES, CONTROL_EVENTS, HEADER_SOURCES, STATE_COMMANDS, Caller
from trading_ops.bot.metrics import PREFIX
from trading_ops.bot.state import TradingState, TransitionRefused
from trading_ops.integrations.command_journal import CommandJournal
from trading_ops.integrations.freqtrade.client import FreqtradeRefused, FreqtradeUnavailable
from trading_ops.integrations.freqtrade.poller import STATES, FreqtradePoller
from trading_ops.integrations.halt_gate import HaltGate
from trading_ops.scopes import DESTRUCTIVE, READ

log = logging.getLogger(__name__)

# A command may wait for freqtrade to place orders on the exchange (forceexit, cancel) behind its own trading loop's
# lock: longer than a poll may take. A command's own polls (the state before and after it) wait as long: a busy
# freqtrade that answers in 4 s must not fail an operator's halt, where the scheduled poll's short request timeout only
# reports freqtrade slow (down) until the next poll. A command's request whose connection freqtrade's API refuses is
# tried again as long (`connect_for`): its API server is down for seconds during a reload_config, and a halt sent
# meanwhile waits for it rather than failing.
COMMAND_TIMEOUT_SECONDS = 30.0
# reload_config rebuilds freqtrade in place (its API server too: it does not answer for a second or two, then its loop
# starts again); the command waits this long for it to answer with a new start time. The rebuild is a start of its bot
# (the exchange's markets loaded from the venue again, the strategy, the database): on a busy host it was still loading
# its markets 32 s after the reload (the sidecar's reconnect then failed, freqtrade came back only afterwards), and a
# whole freqtrade start took 55 s there; an operator's reconnect waits as long as a start may take.
RELOAD_SECONDS = 120.0
RELOAD_POLL_SECONDS = 0.25
# flatten sends a trade's exit again, this long after a failed one, as many times in all as FLATTEN_ATTEMPTS.
FLATTEN_ATTEMPTS = 3
FLATTEN_RETRY_SECONDS = 1.0
# A halted freqtrade paused for cancel_all or flatten is stopped again once its loop has taken in what the command did
# (no order of its trades open any more), or after this long: freqtrade applies an exit's fill to its trade only in its
# loop, which runs paused, not stopped.
SETTLE_SECONDS = 30.0
SETTLE_POLL_SECONDS = 0.25
CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Checks that the venue answers (public and private calls) before freqtrade is asked to rebuild its connection to it;
# raises BrokerError when it does not.
VenueProbe = Callable[[], Awaitable[None]]
# Why freqtrade cannot do these: the 409 answer says so.
UNSUPPORTED = {
    "reduce_only": "freqtrade has no reduce-only mode: use pause (no new entries, open trades are still managed) "
    "or flatten",
    "resubscribe": "freqtrade cannot renew one subscription (polling, it fetches its candles on every iteration; "
    "streaming, its watch waits on a silent channel for good): use reconnect (reload_config), which rebuilds its "
    "exchange connection and its stream",
}
NO_VENUE = "no venue is configured for this freqtrade (freqtrade.targets.<name>.ccxt)"


class CommandRefused(TransitionRefused):
    """A command freqtrade cannot carry out now or at all; the control API answers 409 with `reason`."""

    def __init__(self, command: str, state: TradingState | None, reason: str) -> None:
        Exception.__init__(self, f"'{command}' refused: {reason}")
        self.command = command
        self.state = state or TradingState.PAUSED
        self.reason = reason


class ControlMetrics:
    """`tradingbot_control_commands_total{command, source}` and `..._failures_total`, the library's names for the
    control API: who paused or halted a freqtrade shows on the boards as it does for a bot on the runtime. The state
    commands are exported at 0 for each source a caller can name from the start (increase() over a series that
    appears at 1 misses that first command); freqtrade's own limits are not the sidecar's, so no `risk` source.
    `sources`: the names a caller can have (the single token's header sources, the named tokens)."""

    def __init__(self, registry: CollectorRegistry | None, sources: tuple[str, ...] = HEADER_SOURCES) -> None:
        self._commands = Counter(
            f"{PREFIX}_control_commands",
            "Control commands received by the sidecar's control API, by who asked (source: the token's name, or for "
            "the single control_token operator, reconciler, maintenance; unauthenticated).",
            ["command", "source"],
            registry=registry,
        )
        for command in STATE_COMMANDS:
            for source in sources:
                self._commands.labels(command, source)
        self._failures = Counter(
            f"{PREFIX}_control_command_failures",
            "Control commands that were not carried out, by reason.",
            ["command", "reason"],
            registry=registry,
        )

    def control_command(self, command: str, source: str) -> None:
        self._commands.labels(command, source).inc()

    def control_failure(self, command: str, reason: str) -> None:
        self._failures.labels(command, reason).inc()


class FreqtradeControl:
    """Maps pause, resume, halt, clear_halt, flatten, cancel_all, reconnect, reload, reconcile and status onto
    freqtrade's /pause, /start, /stop, /forceexit, DELETE /trades/{id}/open-order and /reload_config.

    Like the library's state machine, `resume` does not leave a halt (freqtrade `stopped`): `clear_halt` does, and
    lands in paused. Every command re-polls freqtrade after acting, so the next scrape shows its effect.

    `reconnect` and `reload` are freqtrade's reload_config, which rebuilds its exchange connection (and strategy,
    pairlists) from its configuration file. Two things about it make it unsafe to send blindly, so the sidecar checks
    first: freqtrade comes back in its configuration's `initial_state`, so from paused or stopped it could start
    trading (refused, 409: only a running freqtrade is reloaded, and one that comes back otherwise is started again);
    and a freqtrade that cannot load its markets while reloading exits, so `reconnect` first starts a session of its
    own with the target's ccxt venue, as a careful client does (its status, its markets: `CcxtBroker.check_session`),
    and answers 503 while the venue does not let it (the reconciler retries, then escalates). A venue that dropped
    its clients' connections until one starts a new session is back after that check, as it is for any client.
    """

    def __init__(
        self,
        poller: FreqtradePoller,
        reconcile: CommandHandler | None = None,
        heartbeat_timeout: float = 15.0,
        probe: VenueProbe | None = None,
        halts: HaltGate | None = None,
        journal: CommandJournal | None = None,
    ) -> None:
        self.poller = poller
        self.halts = halts
        # Where every command an authenticated caller sent is journaled and read back (`control_events`); None: nowhere
        # (a library caller without a database: the log line and tradingbot_control_commands_total only).
        self.journal = journal
        self.client = poller.client
        self.heartbeat_timeout = heartbeat_timeout
        self._probe = probe
        self._handlers: dict[str, CommandHandler] = {
            "pause": self._pause,
            "resume": self._resume,
            "halt": self._halt,
            "clear_halt": self._clear_halt,
            "flatten": self._flatten,
            "cancel_all": self._cancel_all,
            "reconnect": self._reconnect,
            "reload": self._reload,
            "status": self._status,
        }
        self._reconcile = reconcile
        self._handlers["reconcile"] = self._reconcile_command
        for name in UNSUPPORTED:
            self._handlers[name] = self._unsupported(name)
        if journal is not None:
            self._handlers[CONTROL_EVENTS] = journal.handler

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    def has(self, name: str) -> bool:
        return name in self._handlers

    def scope(self, name: str) -> str:
        """The scope a token needs to send command `name` (the library's table: `reload` is a reconnect)."""
        return COMMAND_SCOPES.get(name, DESTRUCTIVE)

    def record(self, command: str, caller: Caller, outcome: str, detail: dict[str, Any]) -> Awaitable[None] | None:
        """A command an authenticated caller sent, carried out or refused (the bot server hands each one here), to the
        journal; the reads (`status`, `control_events`) aside, as a bot on the runtime leaves them."""
        if self.journal is not None and self.scope(command) != READ:
            return self.journal.record(command, caller, outcome, detail)
        return None

    async def run(self, name: str, args: dict[str, Any], caller: Caller | None = None) -> dict[str, Any]:
        """Carry out `name`. Raises CommandRefused (409) or BrokerError (503: freqtrade does not answer). `caller`: who
        sent it (what `control_events` answers as its caller)."""
        CALLER.set(caller)
        try:
            return await self._handlers[name](args)
        except FreqtradeUnavailable as exc:
            raise BrokerError("unavailable", f"freqtrade does not answer: {exc}", outcome_unknown=False) from exc
        except FreqtradeRefused as exc:
            raise CommandRefused(name, self._state(), f"freqtrade says: {exc.reason}") from exc

    # -- state commands --------------------------------------------------------------------------------------
    def _state(self) -> TradingState | None:
        state = self.poller.snapshot.state
        return TradingState(state) if state is not None else None

    async def _current(self) -> TradingState:
        """freqtrade's state now (a fresh poll, as patient as the command), as the library's."""
        snap = await self.poller.poll(COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS)
        if not snap.up:
            raise FreqtradeUnavailable(snap.error)
        return TradingState(snap.state or "paused")

    async def _transition(self, command: str, endpoint: str) -> dict[str, Any]:
        before = await self._current()
        answer = await self.client.post(endpoint, timeout=COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS)
        after = await self._current()
        return {
            "state": after.value,
            "previous_state": before.value,
            "changed": before is not after,
            "freqtrade": _status_text(answer),
        }

    async def _pause(self, _args: dict[str, Any]) -> dict[str, Any]:
        if await self._current() is TradingState.HALTED:
            # freqtrade's /pause would start a stopped bot (in paused): leaving a halt is clear_halt's job.
            raise CommandRefused("pause", TradingState.HALTED, "freqtrade is stopped (halted); clear_halt first")
        return await self._transition("pause", "/pause")

    async def _resume(self, _args: dict[str, Any]) -> dict[str, Any]:
        if await self._current() is TradingState.HALTED:
            raise CommandRefused(
                "resume", TradingState.HALTED, "freqtrade is stopped (halted); clear the halt first with 'clear_halt'"
            )
        return await self._transition("resume", "/start")

    async def _halt(self, args: dict[str, Any]) -> dict[str, Any]:
        result = await self._transition("halt", "/stop")
        if self.halts is not None and result["state"] == TradingState.HALTED.value:
            # Why it halted, kept: a halt naming a loss limit clears only on a signed decision (_clear_halt).
            self.halts.halted(str(args.get("reason") or ""), result["previous_state"] != TradingState.HALTED.value)
        return result

    async def _clear_halt(self, args: dict[str, Any]) -> dict[str, Any]:
        """Leave the halt (freqtrade's /pause from stopped: it lands paused). A halt whose reason names a loss limit
        (`risk limit daily_loss ...`) leaves only on a clear_halt decision the reconciler signed for this bot
        ({"decision": SIGNED}), verified and spent once (403 otherwise, freqtrade untouched)."""
        state = await self._current()
        if state is not TradingState.HALTED:
            raise CommandRefused("clear_halt", state, f"freqtrade is not stopped (halted) but {state.value}")
        decision = self.halts.check_clear(args) if self.halts is not None else None
        if self.halts is not None:
            self.halts.spend(decision)
        result = await self._transition("clear_halt", "/pause")
        if self.halts is not None and result["state"] != TradingState.HALTED.value:
            self.halts.cleared()
        if decision is not None:
            result["decision"] = decision.id
        return result

    async def _reconnect(self, _args: dict[str, Any]) -> dict[str, Any]:
        if self._probe is None:
            raise CommandRefused(
                "reconnect",
                self._state(),
                f"{NO_VENUE}: the sidecar cannot check that the venue answers, and freqtrade's reload_config exits "
                "freqtrade when it cannot load its markets",
            )
        return await self._reload_config("reconnect")

    async def _reload(self, _args: dict[str, Any]) -> dict[str, Any]:
        return await self._reload_config("reload")

    async def _reload_config(self, command: str) -> dict[str, Any]:
        """reload_config, guarded (see the class): freqtrade running, the venue answering; then wait until freqtrade
        answers again as a new start, running."""
        before = await self._current()
        if before is not TradingState.ACTIVE:
            raise CommandRefused(
                command,
                before,
                f"freqtrade is {before.value}: its reload_config restarts it in its configuration's initial_state, "
                "which could start it trading; resume it first, or restart it yourself",
            )
        if self._probe is not None:
            try:
                await self._probe()
            except BrokerError as exc:
                raise BrokerError(
                    exc.error_class,
                    f"the venue does not answer ({exc}); freqtrade's reload_config now would make it exit (it cannot "
                    "load its markets): try again once the venue answers",
                    outcome_unknown=False,
                ) from exc
        started = self.poller.snapshot.bot_start
        answer = await self.client.post(
            "/reload_config", timeout=COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS
        )
        snap = await self._back_from_reload(started)
        restarted = snap.freqtrade_state != "running"
        if restarted:  # its initial_state is not running: back to what it was
            await self.client.post("/start", timeout=COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS)
            snap = await self.poller.poll(COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS)
        return {
            "state": snap.state,
            "previous_state": before.value,
            "freqtrade": _status_text(answer),
            "freqtrade_started_at": snap.bot_start,
            "started_again": restarted,
        }

    async def _back_from_reload(self, started: float | None) -> Any:
        deadline = time.monotonic() + RELOAD_SECONDS
        while True:
            snap = await self.poller.poll()
            # Back: a new start in one of its states (not reload_config, nor the empty state it answers after it).
            if snap.up and snap.bot_start != started and snap.freqtrade_state in STATES:
                return snap
            if time.monotonic() > deadline:
                raise BrokerError(
                    "unavailable",
                    f"freqtrade did not come back from reload_config within {RELOAD_SECONDS:g}s"
                    + (f": {snap.error}" if snap.error else ""),
                    outcome_unknown=False,
                )
            await asyncio.sleep(RELOAD_POLL_SECONDS)

    # -- orders and positions --------------------------------------------------------------------------------
    async def _flatten(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Stop entries, then force-exit every open trade, one /forceexit per trade (freqtrade places the exit
        orders). freqtrade's "all" stops at the first trade whose exit fails and leaves the rest open; one by one, a
        trade the venue refuses now does not keep the others open. A trade whose exit failed and that is still open
        with no exit order on the venue is sent again after FLATTEN_RETRY_SECONDS, FLATTEN_ATTEMPTS times in all; one
        still left then fails the command (503), naming it and freqtrade's reason, and the trades that did exit. A
        halted freqtrade is flattened too, and stays halted (_reducing)."""
        state = await self._current()
        async with self._reducing(state):
            trades, answer = await self._exit_all(state)
        after = await self._current()
        return {
            "state": after.value,
            "previous_state": state.value,
            "trades_exited": trades,
            "freqtrade": _status_text(answer) if answer is not None else "no open trade",
        }

    @contextlib.asynccontextmanager
    async def _reducing(self, state: TradingState) -> AsyncIterator[None]:
        """Around a command that only reduces risk (cancel_all, flatten). A halted bot still takes them: halted means
        no new risk, never that risk cannot be reduced. freqtrade refuses both while stopped (its /forceexit and
        order cancel answer "trader is not running"), so a halted freqtrade is paused for the command (freqtrade's
        /pause from stopped: its loop runs again but enters nothing, it only manages what it holds) and stopped again
        after it, whether the command worked or not: it stays halted. Once the command worked it is stopped only after
        its loop has taken in what the command did (_settled): stopped, freqtrade would hold its exited trades open
        forever, their exit orders filled on the venue and never applied."""
        if state is not TradingState.HALTED:
            yield
            return
        await self.client.post("/pause", timeout=COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS)
        try:
            yield
            await self._settled()
        finally:
            await self.client.post("/stop", timeout=COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS)

    async def _settled(self) -> None:
        """Until no order of freqtrade's trades is open (an exit that filled closed its trade), or SETTLE_SECONDS."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            snap = await self.poller.poll()
            if snap.up and not snap.open_orders():
                return
            if time.monotonic() > deadline:
                log.warning(
                    "freqtrade still works %d orders %gs after the command: halting it again with them open",
                    len(snap.open_orders()),
                    SETTLE_SECONDS,
                )
                return
            await asyncio.sleep(SETTLE_POLL_SECONDS)

    async def _exit_all(self, state: TradingState) -> tuple[list[Any], Any]:
        """flatten's exits (see _flatten): the trades exited and freqtrade's last answer. Raises BrokerError."""
        if state is TradingState.ACTIVE:
            await self.client.post("/pause", timeout=COMMAND_TIMEOUT_SECONDS, connect_for=COMMAND_TIMEOUT_SECONDS)
        trades = [t.get("trade_id") for t in self.poller.snapshot.trades]
        failed: dict[str, str] = {}
        answer: Any = None
        pending = trades
        for attempt in range(FLATTEN_ATTEMPTS):
            if attempt:
                await asyncio.sleep(FLATTEN_RETRY_SECONDS)
            for trade_id in pending:
                try:
                    answer = await self.client.post(
                        "/forceexit",
                        {"tradeid": str(trade_id)},
                        timeout=COMMAND_TIMEOUT_SECONDS,
                        connect_for=COMMAND_TIMEOUT_SECONDS,
                    )
                except (FreqtradeUnavailable, FreqtradeRefused) as exc:
                    failed[str(trade_id)] = str(exc)
                else:
                    failed.pop(str(trade_id), None)
            if not failed:
                break
            # Sent again: only a trade whose exit failed and that has no exit order on the venue yet (one placed
            # after all, or filled, would be sold twice); one gone meanwhile exited.
            await self._current()
            left = {str(trade_id) for trade_id in _without_exit(self.poller.snapshot.trades)}
            failed = {trade_id: reason for trade_id, reason in failed.items() if trade_id in left}
            pending = [trade_id for trade_id in trades if str(trade_id) in failed]
        if failed:
            reasons = "; ".join(f"trade {trade_id}: {reason}" for trade_id, reason in failed.items())
            log.warning("flatten: %d of %d trades not exited: %s", len(failed), len(trades), reasons)
            raise BrokerError(
                "unavailable",
                f"freqtrade did not exit {len(failed)} of {len(trades)} trades "
                f"(exited {[t for t in trades if str(t) not in failed]}): {reasons}",
                outcome_unknown=False,
            )
        return trades, answer

    async def _cancel_all(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Cancel every open order of freqtrade's trades; a halted freqtrade too, which stays halted (_reducing)."""
        state = await self._current()
        async with self._reducing(state):
            return await self._cancel_orders(state)

    async def _cancel_orders(self, state: TradingState) -> dict[str, Any]:
        canceled: list[Any] = []
        failed: dict[str, str] = {}
        for trade, _order in self.poller.snapshot.open_orders():
            trade_id = trade.get("trade_id")
            if not isinstance(trade_id, int) or trade_id in canceled:
                continue
            try:
                await self.client.delete(
                    f"/trades/{trade_id}/open-order",
                    endpoint="/trades/{id}/open-order",
                    timeout=COMMAND_TIMEOUT_SECONDS,
                    connect_for=COMMAND_TIMEOUT_SECONDS,
                )
            except FreqtradeRefused as exc:
                failed[str(trade_id)] = exc.reason
            else:
                canceled.append(trade_id)
        snap = await self.poller.poll()
        # freqtrade deletes a trade whose entry is canceled before any fill, and its DELETE then answers an error
        # ("no active trade") although the cancel was done: what counts is whether the order is still open.
        still_open = {t.get("trade_id") for t, _order in snap.open_orders()} if snap.up else None
        for trade_id in list(failed):
            if still_open is not None and int(trade_id) not in still_open:
                del failed[trade_id]
                canceled.append(int(trade_id))
        result: dict[str, Any] = {"state": state.value, "trades_canceled": canceled}
        if failed:
            result["failed"] = failed
        return result

    async def _reconcile_command(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._reconcile is None:
            raise CommandRefused(
                "reconcile",
                self._state(),
                f"{NO_VENUE}: nothing to compare with",
            )
        return await self._reconcile(args)

    def _unsupported(self, name: str) -> CommandHandler:
        async def handle(_args: dict[str, Any]) -> dict[str, Any]:
            raise CommandRefused(name, self._state(), UNSUPPORTED[name])

        return handle

    async def _status(self, _args: dict[str, Any]) -> dict[str, Any]:
        snap = await self.poller.poll()
        heartbeat_age = None if snap.heartbeat is None else max(0.0, time.time() - snap.heartbeat)
        return {
            "state": snap.state,
            "phase": self.poller.phase,
            "freqtrade_up": snap.up,
            "freqtrade_state": snap.freqtrade_state if snap.up else None,
            "freqtrade_version": snap.version,
            "freqtrade_error": snap.error or None,
            "heartbeat_age_seconds": heartbeat_age,
            "venue": snap.venue,
            "strategy": snap.strategy,
            "open_trades": [
                {"trade_id": t.get("trade_id"), "pair": t.get("pair"), "amount": t.get("amount")} for t in snap.trades
            ],
            "open_orders": len(snap.open_orders()),
            "commands": self.commands,
        }


def _without_exit(trades: Iterable[dict[str, Any]]) -> list[Any]:
    """The ids of open trades with no exit order on the venue, open or (partly) filled: those a flatten still has to
    send an exit for."""
    pending = []
    for trade in trades:
        exit_side = "buy" if trade.get("is_short") else "sell"
        exits = [o for o in trade.get("orders") or () if o.get("ft_order_side") == exit_side]
        if not any(o.get("is_open") or _filled(o) for o in exits):
            pending.append(trade.get("trade_id"))
    return pending


def _filled(order: dict[str, Any]) -> bool:
    try:
        return float(order.get("filled") or 0) > 0
    except (TypeError, ValueError):
        return True  # an amount we cannot read: assume it filled rather than sell twice


def _status_text(answer: Any) -> str:
    if isinstance(answer, dict):
        return str(answer.get("status") or answer.get("result") or answer)
    return str(answer)
