"""The library's control commands carried out on freqtrade through its REST API; what it cannot do answers 409."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from trading_ops.bot.broker import BrokerError
from trading_ops.bot.metrics import PREFIX
from trading_ops.bot.state import TradingState, TransitionRefused
from trading_ops.integrations.freqtrade.client import FreqtradeRefused, FreqtradeUnavailable
from trading_ops.integrations.freqtrade.poller import FreqtradePoller

log = logging.getLogger(__name__)

# A command may wait for freqtrade to place orders on the exchange (forceexit, cancel) behind its own trading loop's
# lock: longer than a poll may take.
COMMAND_TIMEOUT_SECONDS = 30.0
CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Why freqtrade cannot do these: the 409 answer says so.
UNSUPPORTED = {
    "reduce_only": "freqtrade has no reduce-only mode: use pause (no new entries, open trades are still managed) "
    "or flatten",
    "resubscribe": "freqtrade fetches its candles afresh on every iteration: there is no subscription to renew; "
    "use reconnect (reload_config) to rebuild its exchange connection",
}


class CommandRefused(TransitionRefused):
    """A command freqtrade cannot carry out now or at all; the control API answers 409 with `reason`."""

    def __init__(self, command: str, state: TradingState | None, reason: str) -> None:
        Exception.__init__(self, f"'{command}' refused: {reason}")
        self.command = command
        self.state = state or TradingState.PAUSED
        self.reason = reason


class ControlMetrics:
    """`tradingbot_control_commands_total` and `..._failures_total`, the library's names for the control API."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._commands = Counter(
            f"{PREFIX}_control_commands", "Control commands received.", ["command"], registry=registry
        )
        self._failures = Counter(
            f"{PREFIX}_control_command_failures",
            "Control commands that were not carried out, by reason.",
            ["command", "reason"],
            registry=registry,
        )

    def control_command(self, command: str) -> None:
        self._commands.labels(command).inc()

    def control_failure(self, command: str, reason: str) -> None:
        self._failures.labels(command, reason).inc()


class FreqtradeControl:
    """Maps pause, resume, halt, clear_halt, flatten, cancel_all, reconnect, reload, reconcile and status onto
    freqtrade's /pause, /start, /stop, /forceexit, DELETE /trades/{id}/open-order and /reload_config.

    Like the library's state machine, `resume` does not leave a halt (freqtrade `stopped`): `clear_halt` does, and
    lands in paused. Every command re-polls freqtrade after acting, so the next scrape shows its effect.
    """

    def __init__(
        self,
        poller: FreqtradePoller,
        reconcile: CommandHandler | None = None,
        heartbeat_timeout: float = 15.0,
    ) -> None:
        self.poller = poller
        self.client = poller.client
        self.heartbeat_timeout = heartbeat_timeout
        self._handlers: dict[str, CommandHandler] = {
            "pause": self._pause,
            "resume": self._resume,
            "halt": self._halt,
            "clear_halt": self._clear_halt,
            "flatten": self._flatten,
            "cancel_all": self._cancel_all,
            "reconnect": self._reload,
            "reload": self._reload,
            "status": self._status,
        }
        self._reconcile = reconcile
        self._handlers["reconcile"] = self._reconcile_command
        for name in UNSUPPORTED:
            self._handlers[name] = self._unsupported(name)

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    def has(self, name: str) -> bool:
        return name in self._handlers

    async def run(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out `name`. Raises CommandRefused (409) or BrokerError (503: freqtrade does not answer)."""
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
        """freqtrade's state now (a fresh poll), as the library's."""
        snap = await self.poller.poll()
        if not snap.up:
            raise FreqtradeUnavailable(snap.error)
        return TradingState(snap.state or "paused")

    async def _transition(self, command: str, endpoint: str) -> dict[str, Any]:
        before = await self._current()
        answer = await self.client.post(endpoint, timeout=COMMAND_TIMEOUT_SECONDS)
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

    async def _halt(self, _args: dict[str, Any]) -> dict[str, Any]:
        return await self._transition("halt", "/stop")

    async def _clear_halt(self, _args: dict[str, Any]) -> dict[str, Any]:
        state = await self._current()
        if state is not TradingState.HALTED:
            raise CommandRefused("clear_halt", state, f"freqtrade is not stopped (halted) but {state.value}")
        return await self._transition("clear_halt", "/pause")

    async def _reload(self, _args: dict[str, Any]) -> dict[str, Any]:
        """reload_config: freqtrade rebuilds its exchange connection, strategy and pairlists from its config file."""
        before = await self._current()
        answer = await self.client.post("/reload_config", timeout=COMMAND_TIMEOUT_SECONDS)
        return {"previous_state": before.value, "freqtrade": _status_text(answer)}

    # -- orders and positions --------------------------------------------------------------------------------
    async def _flatten(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Stop entries, then force-exit every open trade (freqtrade places the exit orders)."""
        state = await self._current()
        if state is TradingState.HALTED:
            raise CommandRefused(
                "flatten", state, "freqtrade is stopped (halted) and exits nothing; clear_halt, then flatten"
            )
        if state is TradingState.ACTIVE:
            await self.client.post("/pause", timeout=COMMAND_TIMEOUT_SECONDS)
        trades = [t.get("trade_id") for t in self.poller.snapshot.trades]
        answer = (
            await self.client.post("/forceexit", {"tradeid": "all"}, timeout=COMMAND_TIMEOUT_SECONDS)
            if trades
            else None
        )
        after = await self._current()
        return {
            "state": after.value,
            "previous_state": state.value,
            "trades_exited": trades,
            "freqtrade": _status_text(answer) if answer is not None else "no open trade",
        }

    async def _cancel_all(self, _args: dict[str, Any]) -> dict[str, Any]:
        state = await self._current()
        if state is TradingState.HALTED:
            raise CommandRefused("cancel_all", state, "freqtrade is stopped (halted) and cancels nothing")
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
                )
            except FreqtradeRefused as exc:
                failed[str(trade_id)] = exc.reason
            else:
                canceled.append(trade_id)
        await self.poller.poll()
        result: dict[str, Any] = {"state": state.value, "trades_canceled": canceled}
        if failed:
            result["failed"] = failed
        return result

    async def _reconcile_command(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._reconcile is None:
            raise CommandRefused(
                "reconcile",
                self._state(),
                "no venue is configured for this freqtrade (freqtrade.targets.<name>.venue): nothing to compare with",
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


def _status_text(answer: Any) -> str:
    if isinstance(answer, dict):
        return str(answer.get("status") or answer.get("result") or answer)
    return str(answer)
