"""One object a bot creates at start: its metrics, state machine, collectors, health and HTTP server."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trading_ops.bot.collectors import EventLoopLagMonitor, ResourceCollector, register_process_collectors
from trading_ops.bot.control import ControlPlane, control_sources
from trading_ops.bot.data_dir_size import DataDirSize
from trading_ops.bot.metrics import PREFIX, BotMetrics
from trading_ops.bot.server import BEARER_ROUTES, create_app
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.scopes import TokenSet
from trading_ops.webconfig import WebConfig, app_ssl_context, describe, secure_app

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_SECONDS = 0.0005
ReadinessCheck = Callable[[], tuple[bool, str]]


class Instrumentation:
    """Everything the trading_ops library does inside a bot.

    >>> inst = Instrumentation(venue="binance", token=token, data_dir="./var")
    >>> await inst.start("127.0.0.1", 9101)
    >>> inst.metrics.order_submitted("BTC-USDT", "buy", "limit", client_order_id="c-1")

    The library changes nothing process-wide unless asked; a bot that owns its process may opt in to:

    - `tune_switch_interval=True`: while the server runs, lower the interpreter's GIL switch interval
      (`sys.setswitchinterval`) from Python's default 5 ms to 0.5 ms. /metrics renders on a worker thread,
      and with the default interval that thread can hold the event loop (and the trading loop on it) for
      5 ms per wake-up; 0.5 ms bounds what a scrape costs it. `stop()` restores the previous interval.
    - `disable_created_series=True`: prometheus_client's `disable_created_metrics()`, for every registry in
      the process (see BotMetrics).

    `data_dir`: the bot's data directory. Its filesystem is exported, and its size is measured from `start()` in a
    worker thread (at most once a second, under 5 % of the time) for the disk alerts and `data_dir_budget`.
    Without it, the working directory's filesystem is exported and nothing is walked.

    `token`: the control API's bearer token (every right), or a `trading_ops.scopes.TokenSet` of named tokens with
    scopes (a bot on the runtime: `trading_ops.bot.runtime.control_tokens(config)`).
    """

    def __init__(
        self,
        *,
        venue: str,
        token: str | TokenSet,
        strategy: str = "default",
        registry: CollectorRegistry | None = None,
        data_dir: str | Path | None = None,
        cardinality_limit: int = 200,
        heartbeat_timeout: float = 15.0,
        memory_limit: int = 0,
        memory_budget: int = 0,
        data_dir_budget: int = 0,
        data_dir_exclude: Sequence[str | Path] = (),
        lag_interval: float = 0.25,
        daily_loss_limit: float | None = None,
        initial_state: TradingState = TradingState.ACTIVE,
        tune_switch_interval: bool = False,
        disable_created_series: bool = False,
    ) -> None:
        if not token:
            raise ValueError("the control API needs a bearer token")
        # The tokens the control API accepts (trading_ops.scopes); a bare string is one token with every right.
        self.tokens = TokenSet.single(token) if isinstance(token, str) else token
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = BotMetrics(
            venue=venue,
            strategy=strategy,
            registry=self.registry,
            cardinality_limit=cardinality_limit,
            daily_loss_limit=daily_loss_limit,
            disable_created_series=disable_created_series,
        )
        self._tune_switch_interval = tune_switch_interval
        self._previous_switch_interval: float | None = None
        self.state = StateMachine(self.registry, initial_state)
        self.control = ControlPlane(self.state, self.metrics, control_sources(self.tokens))
        self.heartbeat_timeout = heartbeat_timeout
        self.lag = EventLoopLagMonitor(lag_interval)
        # Walked in a worker thread at a bounded rate from start(); a scrape only reads the latest size. Only a data
        # directory the bot names is walked (never a working directory that happens to be the default).
        self.data_dir_size = DataDirSize(data_dir, data_dir_exclude) if data_dir is not None else None
        self._readiness: dict[str, ReadinessCheck] = {}
        self._liveness: dict[str, ReadinessCheck] = {}
        self._started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        register_process_collectors(self.registry)
        self.registry.register(
            ResourceCollector(
                data_dir if data_dir is not None else ".",
                self.metrics.collector_errors,
                self.lag,
                memory_limit,
                data_dir_size=self.data_dir_size,
                memory_budget=memory_budget,
                data_dir_budget=data_dir_budget,
            )
        )
        self.registry.register(_ReadyCollector(self))

    # -- health ---------------------------------------------------------------------------------------
    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """`check()` returns (ok, detail); /readyz is 200 only when every check is ok."""
        self._readiness[name] = check

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        results: dict[str, dict[str, Any]] = {}
        for name, check in self._readiness.items():
            try:
                ok, detail = check()
            except Exception as exc:
                log.exception("readiness check %s failed", name)
                ok, detail = False, f"check raised {exc!r}"
            results[name] = {"ok": ok, "detail": detail}
        return all(r["ok"] for r in results.values()), results

    def add_health_check(self, name: str, check: ReadinessCheck) -> None:
        """`check()` returns (ok, detail); /healthz is 200 only when the loop makes progress and every check is ok."""
        self._liveness[name] = check

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the trading loop completing iterations within the heartbeat timeout, and every health check ok."""
        healthy, detail = self.loop_health()
        for name, check in self._liveness.items():
            try:
                ok, why = check()
            except Exception as exc:
                log.exception("health check %s failed", name)
                ok, why = False, f"check raised {exc!r}"
            detail[name] = {"ok": ok, "detail": why}
            if not ok:
                healthy = False
                if detail["status"] == "ok":
                    detail["status"] = f"{name}: {why}"
        return healthy, detail

    def loop_starting(self) -> None:
        """The trading loop starts now: its first iteration has a heartbeat timeout from here (a start that waited for
        a crashed run's heartbeat to age, or reconciled for long, is not a stalled loop), and the heartbeat reads this
        start until then."""
        self._started = time.monotonic()
        self.metrics.loop_started()

    def loop_health(self) -> tuple[bool, dict[str, Any]]:
        """The trading loop completing iterations within the heartbeat timeout (or the bot just started)."""
        age = self.metrics.heartbeat_age()
        detail: dict[str, Any] = {
            "heartbeat_age_seconds": age,
            "timeout_seconds": self.heartbeat_timeout,
            "state": self.state.state.value,
        }
        if age is None:
            starting = time.monotonic() - self._started < self.heartbeat_timeout
            detail["status"] = "starting" if starting else "no loop iteration yet"
            return starting, detail
        healthy = age <= self.heartbeat_timeout
        detail["status"] = "ok" if healthy else "trading loop stalled"
        return healthy, detail

    # -- server ---------------------------------------------------------------------------------------
    def create_app(self) -> web.Application:
        return create_app(self)

    async def start(self, host: str = "127.0.0.1", port: int = 9101, web_config: WebConfig | None = None) -> int:
        """Start the event-loop lag monitor, the data directory's measurement and the HTTP server (loopback by
        default; TLS and basic auth per `web_config`, a loaded web_config_file); returns the bound port."""
        if self._tune_switch_interval and sys.getswitchinterval() > GIL_SWITCH_INTERVAL_SECONDS:
            # Opted in (see the class docstring): bound how long the /metrics thread holds the event loop.
            self._previous_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
        self.lag.start()
        if self.data_dir_size is not None:
            self.data_dir_size.start()
        app = self.create_app()
        secure_app(app, web_config, BEARER_ROUTES)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=app_ssl_context(app))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info(
            "bot HTTP server on %s://%s:%s (/metrics, /healthz, /readyz, /control; %s)",
            web_config.scheme if web_config is not None else "http",
            host,
            self.port,
            describe(web_config),
        )
        return int(self.port)

    async def stop(self) -> None:
        await self.lag.stop()
        if self.data_dir_size is not None:
            await self.data_dir_size.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._previous_switch_interval is not None:
            sys.setswitchinterval(self._previous_switch_interval)
            self._previous_switch_interval = None


class _ReadyCollector(Collector):
    def __init__(self, inst: Instrumentation) -> None:
        self._inst = inst

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready, _ = self._inst.readiness()
        yield GaugeMetricFamily(
            f"{PREFIX}_ready",
            "1 when the bot is ready to trade: every /readyz check passes (a bot on the runtime: broker connected, "
            "market data fresh, reconciliation passed, journal writable).",
            1 if ready else 0,
        )
