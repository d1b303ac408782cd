"""The loop's families of BotMetrics: the trading loop's heartbeat and iterations, the runtime's phase, its crashes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from trading_ops.bot.metrics_base import PREFIX, MetricsBase

# One trading-loop iteration: a fast loop is a millisecond, a slow strategy a second or two.
LOOP_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The runtime's lifecycle phases (tradingbot_phase): safe start, the trading loop running, the shutdown.
PHASES = ("starting", "trading", "stopping")


class LoopMetrics(MetricsBase):
    """Whether the bot is alive and where in its life it is: the trading loop's heartbeat, iterations and their
    duration, the runtime's phase (starting, trading, stopping), and the crashes its journal counts. A part of
    BotMetrics (see MetricsBase)."""

    if not TYPE_CHECKING:  # mypy would hold the part to an empty __slots__; BotMetrics holds its attributes
        __slots__ = ()

    _heartbeat: Callable[[float], None]
    _iterations: Callable[[], None]
    _phase: Gauge
    _loop_duration: Callable[[float], None]
    # Crashes of this bot over its life, as the journal counts them (None until the bot has read it).
    _crashes: int | None
    current_phase: str | None
    last_heartbeat_monotonic: float | None

    def _loop_metrics(self) -> None:
        self.last_heartbeat_monotonic = None
        self._crashes = None
        self._heartbeat = Gauge(
            f"{PREFIX}_heartbeat_timestamp_seconds",
            "Unix time at which the trading loop last completed an iteration (or, while it waits for a reconciliation "
            "that holds trading, that run last completed a step).",
            registry=self.registry,
        ).set
        self._iterations = Counter(
            f"{PREFIX}_loop_iterations", "Trading-loop iterations completed.", registry=self.registry
        ).inc
        # The runtime's lifecycle (one-hot; no sample until a runtime sets one, so a bot built on the library alone
        # exports none): a bot `starting` (safe start: crash check, startup reconciliation; its loop not yet running)
        # is not down nor hung, and no alert pages nor playbook acts on it for that (prometheus/rules).
        self._phase = Gauge(
            f"{PREFIX}_phase",
            "Lifecycle phase of the bot runtime, one-hot: starting, trading or stopping.",
            ["phase"],
            registry=self.registry,
        )
        self.current_phase = None
        self._loop_duration = Histogram(
            f"{PREFIX}_loop_duration_seconds",
            "Duration of one trading-loop iteration.",
            buckets=LOOP_DURATION_BUCKETS,
            registry=self.registry,
        ).observe

    def crashes(self, count: int) -> None:
        """How many times this bot crashed over its life (runs that ended without the clean-shutdown marker), as its
        journal counts them: set once at start, before the first scrape that should show it."""
        self._crashes = int(count)

    # -- trading loop -------------------------------------------------------------------------------------
    def loop_iteration(self, duration_seconds: float) -> None:
        """Call once per completed trading-loop iteration: it is the bot's heartbeat."""
        self._iterations()
        self._loop_duration(duration_seconds)
        self._heartbeat(self._clock())
        self.last_heartbeat_monotonic = self._monotonic()

    def loop_held(self, progress: float) -> None:
        """The trading loop waits for the trade lock a reconciliation holds, and that run completed a step at
        `progress` (time.monotonic()) after the wait began: the heartbeat reads that step, never later, so the gauge
        and the age (/healthz, the watchdog) agree. Never moves the heartbeat back; counts no iteration."""
        if self.last_heartbeat_monotonic is not None and progress <= self.last_heartbeat_monotonic:
            return
        self.last_heartbeat_monotonic = progress
        self._heartbeat(self._clock() - (self._monotonic() - progress))

    def phase(self, phase: str) -> None:
        """The runtime entered `phase` (one of PHASES)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (one of {', '.join(PHASES)})")
        for each in PHASES:
            self._phase.labels(each).set(1 if each == phase else 0)
        self.current_phase = phase

    def loop_started(self) -> None:
        """The trading loop starts: until its first iteration completes, the heartbeat reads the loop's start. The
        gauge reads 0 (1970) before: a scrape between the start and the first iteration, right after a restart, showed
        a heartbeat decades stale, and a verification of that restart saw the loop still hung."""
        if self.last_heartbeat_monotonic is None:
            self._heartbeat(self._clock())

    def heartbeat_age(self) -> float | None:
        """Seconds since the last loop iteration (monotonic), or None before the first one."""
        if self.last_heartbeat_monotonic is None:
            return None
        return self._monotonic() - self.last_heartbeat_monotonic


class CrashCollector(Collector):
    """The crashes the journal counts, once the bot has read them."""

    def __init__(self, metrics: LoopMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        m = self._metrics
        # Carried over restarts (the journal's count), so its increase over a window is the crashes in it; absent
        # until the bot has read it, so that a start never shows a jump from 0.
        crashes = CounterMetricFamily(
            f"{PREFIX}_crashes",
            "Runs of this bot that ended without a clean shutdown (a crash, a kill -9, a host that died), over the "
            "bot's life as its journal counts them; a deliberate restart is not one.",
            labels=["venue"],
        )
        if m._crashes is not None:
            crashes.add_metric([m.venue], m._crashes)
        yield crashes
