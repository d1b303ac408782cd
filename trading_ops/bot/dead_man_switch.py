"""The venue's dead man's switch kept armed from the trading loop: a dead host or a hung loop leaves no order resting.

Kraken's CancelAllOrdersAfter (ccxt's `cancelAllOrdersAfter`, `Broker.cancel_all_orders_after`) cancels every open
order of the account `timeout` seconds after the last call, unless called again before. The runtime arms it after
the startup reconciliation and pushes it back from the trading loop's step every `refresh_interval_seconds`, so the
venue stops hearing from the bot as soon as the loop stops (a SIGKILLed process group, a dead host, a hung loop) and
cancels what it left within the timeout. A graceful shutdown disarms it once its own cancel went through
(`bot.dead_man_switch.disarm_on_shutdown`).

The switch is the account's on Kraken: two bots sharing an account (several keys of one account) refresh one timer,
so it triggers only when neither refreshes it, and then cancels both bots' orders. Bots that must not protect or
cancel each other trade on accounts of their own (Kraken's subaccounts).

A venue with none (Binance spot: its countdown cancel is for futures; ccxt's binance has no `cancelAllOrdersAfter`)
is never sent a call: the switch is inactive, its `status` says `not applicable on this venue`, no metric is exported
and the readiness criterion `dead_man_switch` reads the same (trading_ops.readiness.criteria). What stands in for it
there is the reconciler's `venue` step (trading_ops.reconciler.actions.venue): on a host-down alert it cancels the
bot's orders with the reconciler's own key (docs/deployment.md, "On Binance: no dead man's switch").

Metrics (only where the venue has a switch and the configuration enables it): tradingbot_dead_man_switch_armed (1
while the last trigger time the venue confirmed lies ahead, read at scrape time, so a hung loop shows as 0 once the
timeout ran out), tradingbot_dead_man_switch_trigger_timestamp_seconds (the venue's trigger time, 0 when disarmed),
tradingbot_dead_man_switch_refreshes_total and tradingbot_dead_man_switch_refresh_failures_total.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from trading_ops.bot.broker import Broker
from trading_ops.bot.metrics import PREFIX
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.config import DeadMansSwitchConfig

log = logging.getLogger(__name__)

# The reason of the reduce_only state the switch puts the bot in when it cannot be armed; the switch lifts only that.
REASON = "dead man's switch not armed"
# What `status` says of the switch on a venue that has none.
NOT_APPLICABLE = "not applicable on this venue: the reconciler's venue step cancels a dead bot's orders"
# After a failed call, the next attempt comes this much later (the loop steps faster; a venue in trouble is not
# asked twice a second).
RETRY_SECONDS = 2.0


class DeadMansSwitch:
    """Arms, refreshes and disarms the venue's dead man's switch for the runtime (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        state: StateMachine,
        config: DeadMansSwitchConfig,
        *,
        venue: str,
        registry: CollectorRegistry | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.state = state
        self.config = config
        self.applicable = broker.has_dead_man_switch()
        self.active = config.enabled and self.applicable
        self._clock = clock
        self._wall = wall
        self._due = 0.0  # clock() of the next refresh
        self._expires = 0.0  # wall time by which the venue fires at the latest, by the last confirmed call
        self._stopped = False
        self.trigger: datetime | None = None  # the venue's trigger time, by its last answer
        self.failures = 0
        self.last_error = ""
        if not self.active:
            if config.enabled and not self.applicable:
                log.info(
                    "%s has no dead man's switch (not applicable on this venue): its orders rest until canceled; "
                    "the reconciler's venue step cancels them if this host dies",
                    venue,
                )
            return
        armed = Gauge(
            f"{PREFIX}_dead_man_switch_armed",
            "1 while the venue's dead man's switch is armed (its trigger time ahead), 0 when it is not.",
            ["venue"],
            registry=registry,
        )
        armed.labels(venue).set_function(self._armed_value)
        self._trigger_gauge = Gauge(
            f"{PREFIX}_dead_man_switch_trigger_timestamp_seconds",
            "When the venue's dead man's switch cancels every open order unless refreshed (0: disarmed).",
            ["venue"],
            registry=registry,
        ).labels(venue)
        self._refreshes = Counter(
            f"{PREFIX}_dead_man_switch_refreshes",
            "Calls that armed or pushed back the venue's dead man's switch.",
            ["venue"],
            registry=registry,
        ).labels(venue)
        self._refresh_failures = Counter(
            f"{PREFIX}_dead_man_switch_refresh_failures",
            "Calls to arm or push back the venue's dead man's switch that failed.",
            ["venue"],
            registry=registry,
        ).labels(venue)

    @property
    def armed(self) -> bool:
        return self.active and self._expires > self._wall()

    def _armed_value(self) -> float:
        return 1.0 if self.armed else 0.0

    async def arm(self) -> bool:
        """Arm it (after the startup reconciliation). False when the venue refused or could not be reached: logged,
        counted, and with `on_failure: reduce_only` the bot opens no position until a refresh arms it."""
        if not self.active:
            return False
        armed = await self._send()
        if armed:
            log.info(
                "dead man's switch armed: the venue cancels every open order %d s after the bot stops refreshing it",
                self.config.timeout_seconds,
            )
        return armed

    async def refresh(self) -> None:
        """From each step of the trading loop: push the trigger back when a refresh is due."""
        if self.active and not self._stopped and self._clock() >= self._due:
            await self._send()

    async def disarm(self) -> None:
        """Timeout 0: the venue forgets the trigger. Raises what the venue answered (a shutdown step)."""
        if not self.active:
            return
        self._stopped = True
        await self.broker.cancel_all_orders_after(0)
        self._expires = 0.0
        self.trigger = None
        self._trigger_gauge.set(0)
        log.info("dead man's switch disarmed")

    def stop(self) -> None:
        """No more refreshes (a shutdown that leaves it armed): the venue fires at the trigger."""
        self._stopped = True

    async def end(self, canceled: bool) -> None:
        """The shutdown's step: disarm it as `bot.dead_man_switch.disarm_on_shutdown` says, `after_cancel` only when
        this shutdown `canceled` the open orders (else the venue cancels what is left at the trigger); otherwise stop
        refreshing it and say when the venue fires. Raises what the venue answered."""
        if not self.active:
            return
        when = self.config.disarm_on_shutdown
        if when == "always" or (when == "after_cancel" and canceled):
            async with self.broker.patient(), self.broker.protective():  # within the venue steps' share
                await self.disarm()
            return
        self.stop()
        if self.armed:
            log.warning(
                "shutdown: the dead man's switch stays armed: the venue cancels every open order of the account at %s",
                self.trigger.isoformat() if self.trigger else "its trigger",
            )

    def left_to_it(self) -> str:
        """What an exit that left orders open says of the switch: when the venue cancels them (empty: not armed)."""
        if self.armed and self.trigger is not None:
            return f"; the venue's dead man's switch cancels them at {self.trigger.isoformat()}"
        return ""

    def status(self) -> dict[str, object]:
        """What the `status` command shows of it."""
        return {
            "active": self.active,
            "applicable": self.applicable,
            **({} if self.applicable else {"note": NOT_APPLICABLE}),
            "armed": self.armed,
            "trigger_time": None if self.trigger is None else self.trigger.isoformat(),
            "timeout_seconds": self.config.timeout_seconds,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    async def _send(self) -> bool:
        timeout = self.config.timeout_seconds
        sent = self._wall()
        try:
            _, trigger = await self.broker.cancel_all_orders_after(timeout)
        except Exception as exc:  # a venue error, or a broker bug: either way the switch was not pushed back
            self.failures += 1
            self.last_error = str(exc)[:200]
            self._refresh_failures.inc()
            self._due = self._clock() + RETRY_SECONDS
            lapsed = not self.armed
            log.warning(
                "dead man's switch: %s failed (%s)%s",
                "arming" if lapsed else "refreshing",
                self.last_error,
                "; it is not armed" if lapsed else f"; the venue fires in {self._expires - self._wall():.0f} s",
            )
            if lapsed:
                self._restrict()
            return False
        self._refreshes.inc()
        self._due = self._clock() + self.config.refresh_interval_seconds
        # The venue counts from when it took the call, at or after `sent`: the earliest it may fire.
        self._expires = sent + timeout
        self.trigger = trigger
        self._trigger_gauge.set(0 if trigger is None else trigger.timestamp())
        self._release()
        return True

    def _restrict(self) -> None:
        if self.config.on_failure != "reduce_only" or self.state.state is not TradingState.ACTIVE:
            return
        self.state.apply("reduce_only", reason=REASON)

    def _release(self) -> None:
        if self.state.state is TradingState.REDUCE_ONLY and self.state.reason == REASON:
            self.state.apply("resume", reason="dead man's switch armed")
