"""The control commands every bot on the runtime answers, implemented once over the Broker interface."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from trading_ops.bot.broker import Broker, BrokerError, Channel
from trading_ops.bot.control import CommandError, ControlPlane
from trading_ops.bot.kill_switch import STEP_WAIT_SECONDS
from trading_ops.bot.reconciliation import Result, Trigger
from trading_ops.bot.state import TradingState

log = logging.getLogger(__name__)

# Commands after which fewer orders may go out than before: they wait for the strategy step in progress.
RESTRICTING_COMMANDS = ("pause", "reduce_only", "flatten", "halt")


class CommandRuntime(Protocol):
    """What the commands need from the bot's runtime (trading_ops.bot.runtime.BotRuntime), and nothing more."""

    @property
    def symbols(self) -> Sequence[str]:
        """The symbols the bot trades."""

    @property
    def stopping(self) -> bool:
        """The bot is shutting down."""

    @property
    def trading_allowed(self) -> bool:
        """The safe-start gate is open (a startup reconciliation passed)."""

    async def cancel_all(self) -> int:
        """Cancel every working order; how many."""

    async def reconcile(self, trigger: Trigger) -> dict[str, Any]:
        """One reconciliation with trading held; its summary."""

    def request_reconciliation(self, trigger: Trigger) -> None:
        """Ask for a reconciliation soon (the schedule runs it)."""

    def hold_trading(self, timeout: float) -> AbstractAsyncContextManager[bool]:
        """Hold trading: no strategy step or reconciliation runs meanwhile; False when `timeout` passed first."""

    async def sweep_for_halt(self, step_finished: bool) -> int:
        """The kill switch's sweep after a `halt`; again after the step in progress when it had not finished."""

    def status(self) -> dict[str, Any]:
        """What `status` answers beyond the trading state."""


def register_commands(control: ControlPlane, broker: Broker, runtime: CommandRuntime) -> None:
    """cancel_all, reconnect, resubscribe and reconcile, what the state commands do beyond the state (pause,
    resume, reduce_only, flatten, halt, clear_halt are built into the control plane) and the status fields."""
    wait = STEP_WAIT_SECONDS

    async def cancel_all(_args: dict[str, Any]) -> dict[str, Any]:
        return {"canceled": await runtime.cancel_all()}

    async def reconnect(_args: dict[str, Any]) -> dict[str, Any]:
        await broker.reconnect()
        return {"connected": {ch.value: broker.is_connected(ch) for ch in Channel}}

    async def resubscribe(args: dict[str, Any]) -> dict[str, Any]:
        symbol = args.get("symbol")
        if symbol is not None and (not isinstance(symbol, str) or symbol not in runtime.symbols):
            raise CommandError(f"unknown symbol {str(symbol)[:32]!r}")
        await broker.resubscribe([symbol] if symbol else None)
        return {"resubscribed": [symbol] if symbol else list(runtime.symbols)}

    async def reconcile(args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise CommandError(f"reconcile takes no arguments, got {', '.join(sorted(map(str, args)))[:64]}")
        if runtime.stopping:
            raise CommandError("the bot is shutting down: it reconciles at its next start")
        summary = await runtime.reconcile(Trigger.COMMAND)
        if summary["result"] == Result.FAILED and not broker.is_connected(Channel.ORDERS):
            detail = {"run_id": summary["run_id"], "result": summary["result"]}
            raise BrokerError("network", summary["error"] or "orders channel down", detail=detail)
        return summary

    async def on_transition(command: str, before: TradingState, after: TradingState) -> None:
        if command in RESTRICTING_COMMANDS:
            # The state is set: the order gate refuses from now on. Wait for the step in progress (it may be sending
            # an order right now) so that, once the command answers, nothing it forbids is still on its way; a
            # halt then cancels with trading held.
            async with runtime.hold_trading(wait) as held:
                if not held:
                    log.warning("%s: the step in progress did not finish within %g s", command, wait)
                if command == "halt":
                    canceled = await runtime.sweep_for_halt(step_finished=held)
                    log.warning("kill switch engaged: %d open orders canceled", canceled)
        elif command == "clear_halt" and not runtime.trading_allowed:
            runtime.request_reconciliation(Trigger.STARTUP)  # the startup run may pass now

    control.register("cancel_all", cancel_all)
    control.register("reconnect", reconnect)
    control.register("resubscribe", resubscribe)
    control.register("reconcile", reconcile)
    control.on_transition(on_transition)
    control.add_status(runtime.status)
