"""The library's control commands carried out on a NautilusTrader node, on the node's own event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nautilus_trader.common.enums import ComponentState
from nautilus_trader.core.uuid import UUID4
from nautilus_trader.data.messages import (
    SubscribeQuoteTicks,
    SubscribeTradeTicks,
    UnsubscribeQuoteTicks,
    UnsubscribeTradeTicks,
)
from nautilus_trader.model.enums import OrderStatus, TradingState

from trading_ops.bot.broker import BrokerError
from trading_ops.bot.state import TradingState as OpsState
from trading_ops.bot.state import TransitionRefused
from trading_ops.integrations.halt_gate import HaltGate
from trading_ops.integrations.nautilus.exporter import NautilusExporter, ops_state

log = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Orders a flatten given while halted sends leave the RiskEngine (no longer INITIALIZED) within this, or it fails.
FLATTEN_RELEASE_SECONDS = 10.0
POLL_SECONDS = 0.02
# A reconnect waits this long for each client to disconnect, then to connect again.
RECONNECT_SECONDS = 15.0
# Nautilus's own execution reconciliation, as reconcile runs it.
RECONCILE_TIMEOUT_SECONDS = 10.0


class CommandRefused(TransitionRefused):
    """A command the node's state does not allow; the control API answers 409 with `reason`."""

    def __init__(self, command: str, state: OpsState, reason: str) -> None:
        Exception.__init__(self, f"'{command}' refused: {reason}")
        self.command = command
        self.state = state
        self.reason = reason


class NautilusControl:
    """pause/resume stop and start the node's strategies; reduce_only and halt set the RiskEngine's trading state
    (REDUCING, HALTED) and clear_halt sets ACTIVE with the strategies stopped (paused, as the library's kill switch
    lands); cancel_all cancels every open order through the strategy that owns it; flatten closes every open
    position with a reduce-only market order (while halted, the RiskEngine is REDUCING for as long as those orders
    take to pass it, then HALTED again: halted means no new risk, never "cannot reduce risk"); reconnect disconnects
    and connects the data and execution clients; resubscribe renews every quote and trade subscription of the data
    clients; reconcile runs the execution engine's reconciliation with the venues; status reads it all.

    Every handler runs on the node's event loop (the controller marshals each request there): it touches the engines
    as their own code does, from their thread."""

    def __init__(
        self,
        trader: Any,
        exporter: NautilusExporter,
        refresh: Callable[[], None],
        heartbeat_age: Callable[[], float | None],
        *,
        halts: HaltGate,
    ) -> None:
        self._trader = trader
        # Why the node is halted, and the signed decision a loss limit's halt needs to clear (HaltGate).
        self.halts = halts
        self._exporter = exporter
        self._refresh = refresh
        self._heartbeat_age = heartbeat_age
        self.flattening = False
        self._handlers: dict[str, CommandHandler] = {
            "pause": self._pause,
            "resume": self._resume,
            "reduce_only": self._reduce_only,
            "halt": self._halt,
            "clear_halt": self._clear_halt,
            "flatten": self._flatten,
            "cancel_all": self._cancel_all,
            "reconnect": self._reconnect,
            "resubscribe": self._resubscribe,
            "reconcile": self._reconcile,
            "status": self._status,
        }

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    def has(self, name: str) -> bool:
        return name in self._handlers

    async def run(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self._handlers[name](args)

    # -- the node's parts ------------------------------------------------------------------------------------------
    @property
    def risk_engine(self) -> Any:
        return self._trader._risk_engine

    @property
    def exec_engine(self) -> Any:
        return self._trader._exec_engine

    @property
    def data_engine(self) -> Any:
        return self._trader._data_engine

    def strategies(self) -> list[Any]:
        return list(self._trader.strategies())

    def running(self) -> bool:
        """The node trades: at least one strategy runs (a node without strategies counts as running)."""
        strategies = self.strategies()
        return not strategies or any(s.is_running for s in strategies)

    def state(self) -> OpsState:
        if self.flattening:
            return OpsState.FLATTENING
        return ops_state(self.risk_engine.trading_state, self.running())

    def _clients(self) -> dict[str, Any]:
        """The node's data and execution clients by `data:<id>`, `exec:<id>` (one adapter often gives both one id)."""
        return {
            **{f"data:{c.id.value}": c for c in self.data_engine._clients.values()},
            **{f"exec:{c.id.value}": c for c in self.exec_engine._clients.values()},
        }

    def _stop_strategies(self) -> list[str]:
        stopped = []
        for strategy in self.strategies():
            if strategy.is_running:
                self._trader.stop_strategy(strategy.id)
                stopped.append(strategy.id.value)
        return stopped

    def _set_trading_state(self, state: TradingState) -> None:
        if self.risk_engine.trading_state != state:
            self.risk_engine.set_trading_state(state)

    def _changed(self, before: OpsState, **extra: Any) -> dict[str, Any]:
        self._refresh()
        after = self.state()
        return {"state": after.value, "previous_state": before.value, "changed": before is not after, **extra}

    # -- state commands --------------------------------------------------------------------------------------------
    async def _pause(self, _args: dict[str, Any]) -> dict[str, Any]:
        before = self.state()
        if before is OpsState.HALTED:
            raise CommandRefused("pause", before, "the node is halted; clear the halt first with 'clear_halt'")
        stopped = self._stop_strategies()
        return self._changed(before, strategies_stopped=stopped)

    async def _resume(self, _args: dict[str, Any]) -> dict[str, Any]:
        before = self.state()
        if before is OpsState.HALTED:
            raise CommandRefused("resume", before, "the node is halted; clear the halt first with 'clear_halt'")
        self._set_trading_state(TradingState.ACTIVE)
        started = []
        for strategy in self.strategies():
            if strategy.is_running:
                continue
            if strategy.state == ComponentState.STOPPED:
                strategy.resume()  # a stopped component resumes (Nautilus's FSM has no STOPPED -> START)
            else:
                self._trader.start_strategy(strategy.id)
            started.append(strategy.id.value)
        return self._changed(before, strategies_started=started)

    async def _reduce_only(self, _args: dict[str, Any]) -> dict[str, Any]:
        before = self.state()
        if before is OpsState.HALTED:
            raise CommandRefused("reduce_only", before, "the node is halted; clear the halt first with 'clear_halt'")
        self._set_trading_state(TradingState.REDUCING)
        return self._changed(before)

    async def _halt(self, args: dict[str, Any]) -> dict[str, Any]:
        before = self.state()
        self._set_trading_state(TradingState.HALTED)
        self.halts.halted(str(args.get("reason") or ""), before is not OpsState.HALTED)
        return self._changed(before)

    async def _clear_halt(self, args: dict[str, Any]) -> dict[str, Any]:
        """Leave the kill switch, into paused. A halt whose reason names a loss limit (the controller's daily loss
        limit, or a `halt` that said so) leaves only on a clear_halt decision the reconciler signed for this bot
        ({"decision": SIGNED}), verified and spent once; 403 otherwise, the node left halted."""
        before = self.state()
        if before is not OpsState.HALTED:
            raise CommandRefused("clear_halt", before, f"the node is not halted but {before.value}")
        decision = self.halts.check_clear(args)
        self.halts.spend(decision)
        # Leaving the kill switch lands in paused, never straight in active: the strategies stop first.
        stopped = self._stop_strategies()
        self._set_trading_state(TradingState.ACTIVE)
        self.halts.cleared()
        extra = {"decision": decision.id} if decision is not None else {}
        return self._changed(before, strategies_stopped=stopped, **extra)

    # -- orders and positions --------------------------------------------------------------------------------------
    async def _cancel_all(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Every open order, through the strategy that owns it (Nautilus's CancelAllOrders per instrument)."""
        before = self.state()
        cache = self._trader._cache
        canceled: list[str] = []
        orphans: list[str] = []
        for strategy in self.strategies():
            orders = cache.orders_open(strategy_id=strategy.id)
            for instrument_id in sorted({o.instrument_id for o in orders}, key=str):
                strategy.cancel_all_orders(instrument_id)
            canceled.extend(o.client_order_id.value for o in orders)
        owned = {s.id for s in self.strategies()}
        orphans = [o.client_order_id.value for o in cache.orders_open() if o.strategy_id not in owned]
        result = self._changed(before, orders_canceled=sorted(canceled))
        if orphans:
            result["not_owned_by_a_strategy"] = orphans
        return result

    async def _flatten(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Close every open position with a reduce-only market order from the strategy that holds it. Running
        strategies are stopped first (paused), so none opens a new one meanwhile; a halted node stays halted."""
        before = self.state()
        cache = self._trader._cache
        halted = self.risk_engine.trading_state == TradingState.HALTED
        if not halted:
            self._stop_strategies()
        self.flattening = True
        closing: list[Any] = []
        try:
            if halted:
                # HALTED denies every order but cancels: REDUCING lets these (reduce-only) through, for as long as
                # they take to pass the RiskEngine.
                self.risk_engine.set_trading_state(TradingState.REDUCING)
            for strategy in self.strategies():
                for position in cache.positions_open(strategy_id=strategy.id):
                    known = {o.client_order_id for o in cache.orders(strategy_id=strategy.id)}
                    strategy.close_position(position)
                    closing.extend(o for o in cache.orders(strategy_id=strategy.id) if o.client_order_id not in known)
            deadline = time.monotonic() + FLATTEN_RELEASE_SECONDS
            while any(o.status == OrderStatus.INITIALIZED for o in closing) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
        finally:
            if halted:
                self.risk_engine.set_trading_state(TradingState.HALTED)
            self.flattening = False
        stuck = [o.client_order_id.value for o in closing if o.status == OrderStatus.INITIALIZED]
        if stuck:
            raise BrokerError(
                "unavailable",
                f"closing orders {stuck} did not leave the RiskEngine within {FLATTEN_RELEASE_SECONDS:g}s",
                outcome_unknown=False,
            )
        denied = [o.client_order_id.value for o in closing if o.status == OrderStatus.DENIED]
        result = self._changed(before, closing_orders=[o.client_order_id.value for o in closing])
        if denied:
            result["denied"] = denied
        return result

    # -- venue -----------------------------------------------------------------------------------------------------
    async def _reconnect(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Disconnect and connect every data and execution client (each client's own connect/disconnect)."""
        before = self.state()
        clients = self._clients()
        # A live client's disconnect runs as a task (not kept anywhere) that ends by canceling the client's pending
        # tasks: a connect begun before it is done would be canceled. The tasks the disconnects start are awaited.
        running = asyncio.all_tasks()
        for client in clients.values():
            client.disconnect()
        disconnecting = asyncio.all_tasks() - running
        if disconnecting:
            await asyncio.wait(disconnecting, timeout=RECONNECT_SECONDS)
        await self._until_connected(clients, False, "disconnect")
        for client in clients.values():
            client.connect()
        await self._until_connected(clients, True, "connect")
        return self._changed(before, clients=sorted(clients))

    async def _until_connected(self, clients: dict[str, Any], connected: bool, what: str) -> None:
        deadline = time.monotonic() + RECONNECT_SECONDS
        while any(bool(c.is_connected) is not connected for c in clients.values()):
            if time.monotonic() > deadline:
                late = sorted(name for name, c in clients.items() if bool(c.is_connected) is not connected)
                raise BrokerError(
                    "unavailable",
                    f"{', '.join(late)} did not {what} within {RECONNECT_SECONDS:g}s",
                    outcome_unknown=False,
                )
            await asyncio.sleep(POLL_SECONDS)

    async def _resubscribe(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Every quote and trade subscription of every data client, unsubscribed and subscribed again."""
        before = self.state()
        clock = self._trader._clock
        renewed: list[str] = []
        for client in self.data_engine._clients.values():
            kinds = (
                ("quote_ticks", client.subscribed_quote_ticks(), UnsubscribeQuoteTicks, SubscribeQuoteTicks),
                ("trade_ticks", client.subscribed_trade_ticks(), UnsubscribeTradeTicks, SubscribeTradeTicks),
            )
            for kind, instrument_ids, unsubscribe, subscribe in kinds:
                for instrument_id in list(instrument_ids):
                    ids = (instrument_id, client.id, client.venue)
                    getattr(client, f"unsubscribe_{kind}")(unsubscribe(*ids, UUID4(), clock.timestamp_ns()))
                    getattr(client, f"subscribe_{kind}")(subscribe(*ids, UUID4(), clock.timestamp_ns()))
                    renewed.append(f"{kind}:{instrument_id}")
        return self._changed(before, resubscribed=renewed)

    async def _reconcile(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Nautilus's execution reconciliation (the one a node runs at start) against every execution client."""
        before = self.state()
        started = time.monotonic()
        try:
            ok = await self.exec_engine.reconcile_execution_state(timeout_secs=RECONCILE_TIMEOUT_SECONDS)
        except Exception as exc:
            self._exporter.reconciliation.run("command", "failed", time.time())
            raise BrokerError("unavailable", f"reconciliation failed: {exc}", outcome_unknown=False) from exc
        result = "clean" if ok else "failed"
        self._exporter.reconciliation.run("command", result, time.time())
        if not ok:
            raise BrokerError(
                "unavailable", "Nautilus's execution reconciliation did not succeed", outcome_unknown=False
            )
        return self._changed(before, result=result, seconds=round(time.monotonic() - started, 3))

    async def _status(self, _args: dict[str, Any]) -> dict[str, Any]:
        self._refresh()
        cache = self._trader._cache
        return {
            "state": self.state().value,
            "phase": self._exporter.metrics.current_phase,
            "nautilus_trading_state": self.risk_engine.trading_state.name,
            "strategies": {s.id.value: s.state.name for s in self.strategies()},
            "heartbeat_age_seconds": self._heartbeat_age(),
            "open_orders": [o.client_order_id.value for o in cache.orders_open()],
            "open_positions": {p.instrument_id.value: float(p.signed_qty) for p in cache.positions_open()},
            "realized_pnl": self._exporter.realized,
            "unrealized_pnl": self._exporter.unrealized,
            "clients": {name: bool(c.is_connected) for name, c in self._clients().items()},
            "commands": self.commands,
        }
