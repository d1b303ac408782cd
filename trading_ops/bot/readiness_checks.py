"""The /readyz and /healthz checks of a bot on the runtime, each over the one part it reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trading_ops.bot.broker import Broker, Channel
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.instance_lock import InstanceLock
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.journal import Journal
from trading_ops.bot.reconciliation import Reconciler, Result


def register_checks(
    inst: Instrumentation,
    *,
    broker: Broker,
    symbols: Sequence[str],
    market_data_stale: Callable[[str], bool],
    reconciler: Reconciler,
    gate: OrderGate,
    journal: Journal,
    journal_failure_timeout: float,
    instance_lock: InstanceLock,
) -> None:
    """/readyz: the broker connected, market data fresh, a reconciliation passed, the journal writable, the
    single-instance lock held; /healthz beyond the loop's progress: the journal not failing for longer than
    `journal_failure_timeout`."""

    def broker_check() -> tuple[bool, str]:
        down = [ch.value for ch in Channel if not broker.is_connected(ch)]
        return (not down, "connected" if not down else "down: " + ", ".join(down))

    def market_data() -> tuple[bool, str]:
        stale_symbols = [s for s in symbols if market_data_stale(s)]
        return (not stale_symbols, "fresh" if not stale_symbols else "stale: " + ", ".join(stale_symbols))

    def reconciliation() -> tuple[bool, str]:
        last = reconciler.last
        if last is None:
            return False, "not run yet"
        if not gate.trading_allowed:
            return False, f"startup reconciliation not passed: {last['result']}"
        if gate.reconnect_pending:
            return False, f"no reconciliation passed since the orders channel reconnected (last: {last['result']})"
        if last["result"] in (Result.FAILED, Result.HALTED, Result.UNKNOWN):
            why = f": {last['error']}" if last["result"] == Result.UNKNOWN else ""
            return False, f"last run {last['run_id']} {last['result']}{why}"
        return True, f"run {last['run_id']} {last['result']} at {last['finished_at']}"

    def journal_check() -> tuple[bool, str]:
        health = journal.health
        if health.failing:
            return False, f"cannot be written for {health.failing_for():.1f} s ({health.reason}): {health.error}"
        if gate.journal_reconcile_pending:
            return False, "written again; no reconciliation passed since"
        return True, "writable"

    def journal_alive() -> tuple[bool, str]:
        health, timeout = journal.health, journal_failure_timeout
        if health.failing_for() > timeout:
            return False, (
                f"journal failing, or not reconciled since, for {health.failing_for():.1f} s (over {timeout:g} s)"
            )
        return True, "writable" if not health.failing else f"failing for {health.failing_for():.1f} s"

    def instance_lock_check() -> tuple[bool, str]:
        problem = instance_lock.problem()
        return problem is None, problem or "held"

    inst.add_readiness_check("broker", broker_check)
    inst.add_readiness_check("market_data", market_data)
    inst.add_readiness_check("reconciliation", reconciliation)
    inst.add_readiness_check("journal", journal_check)
    inst.add_readiness_check("instance_lock", instance_lock_check)
    inst.add_health_check("journal", journal_alive)
