"""`run`: a bot's whole program in one call, for a script of its own (`sys.exit(run(...))`)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from trading_ops import logsetup
from trading_ops.bot.broker import Broker, BrokerError
from trading_ops.bot.instance_lock import AnotherInstanceRunning
from trading_ops.bot.risk import RiskLimits
from trading_ops.bot.runtime import BotRuntime
from trading_ops.bot.shutdown import OrdersLeftOpen
from trading_ops.bot.strategy import Strategy
from trading_ops.config import Config, ConfigError, load_config

DEFAULT_CONFIG = "trading-ops.yaml"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def run(
    strategy: Strategy,
    broker: Broker | Callable[[Config], Broker],
    config: Config | str | os.PathLike[str] = DEFAULT_CONFIG,
    *,
    symbols: Sequence[str] | None = None,
    quote_asset: str | None = None,
    venue_task: Callable[[], Coroutine[Any, Any, None]] | None = None,
    limits: RiskLimits | None = None,
    loop_interval: float | None = None,
) -> int:
    """Run `strategy` on `broker` as a whole process until SIGTERM or SIGINT, then stop gracefully; returns the exit
    status: 0 after a clean stop, 2 for a configuration problem (a database not migrated included: one line on
    stderr saying to run `trading-ops db upgrade`), 1 for a failure (another instance of the bot running, the venue
    refusing the keys, a file that cannot be written, a shutdown that could not confirm the cancel of its open
    orders); a shutdown past its deadline ends the process with 1.

    `broker`: a Broker, or a function of the configuration that makes one (`broker_from_config`, the ccxt broker of
    the `ccxt:` section). `config`: the configuration or the path of its YAML file. `symbols`: what the bot trades,
    `BASE-QUOTE` (default: the broker's own `symbols`, which CcxtBroker and PaperVenue have). `quote_asset`: the
    asset its P&L, balances and notional risk limits are counted in, the QUOTE every symbol shares (default: the
    first symbol's). `venue_task`: a coroutine function that runs beside the bot (a simulated venue's clock,
    `PaperVenue.run`; a real venue needs none). `limits`: the risk limits (default: `bot.risk`'s). `loop_interval`:
    seconds between steps (default: `bot.loop_interval_seconds`).

    The bot owns its process (BotRuntime's `own_process`: the library may tune process-wide settings) and a stuck
    shutdown ends the process (BotRuntime.run's `force_exit`). Logging is set up from the `logging:` section unless
    the program set it up before.
    """
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "bot"
    try:
        loaded = config if isinstance(config, Config) else load_config(os.fspath(config))
        venue = broker if isinstance(broker, Broker) else broker(loaded)
        traded = list(symbols if symbols is not None else getattr(venue, "symbols", []))
        if not traded:
            raise ConfigError("symbols", "give run() the symbols the bot trades (this broker does not say)")
        quote = quote_asset if quote_asset is not None else traded[0].partition("-")[2]
        if not quote:
            raise ConfigError("symbols", f"expected BASE-QUOTE symbols such as BTC-USD, got {traded[0]!r}")
        bot = BotRuntime(
            loaded,
            venue,
            strategy,
            symbols=traded,
            quote_asset=quote,
            venue_task=venue_task,
            limits=limits,
            loop_interval=loop_interval,
            own_process=True,
        )
        asyncio.run(bot.run(force_exit=True))
    except ConfigError as exc:
        logsetup.report(f"{prog}: config: {exc}")
        return EXIT_CONFIG
    except (AnotherInstanceRunning, BrokerError, OSError, OrdersLeftOpen) as exc:
        logsetup.report(f"{prog}: {exc}")
        return EXIT_FAILURE
    return EXIT_OK
