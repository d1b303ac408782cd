"""The freqtrade of `trading-ops up --bot freqtrade`: its generated config.json, its command line and environment.

freqtrade trades live (dry_run false) on the paper gateway through ccxt's kraken client, pointed there by
`exchange.ccxt_config.urls`; its secrets (the gateway key, its API password, JWT secret and websocket token) come from
files under var/secrets as freqtrade's FREQTRADE__* environment variables, so config.json holds none. It runs the
packaged demo strategy (trading_ops/integrations/freqtrade/strategies/trading_ops_demo.py), its database and log file
in STATE_DIR/freqtrade/.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from trading_ops.config import Config
from trading_ops.stack.app_config import FREQTRADE_TARGET, FREQTRADE_USERNAME, AppConfig
from trading_ops.stack.layout import HOST, Layout, Ports
from trading_ops.stack.profiles import Profile

PACKAGE = Path(__file__).resolve().parent.parent
STRATEGY_DIR = PACKAGE / "integrations" / "freqtrade" / "strategies"
STRATEGY = "TradingOpsDemo"
INSTALL_HINT = "freqtrade is not installed: pip install 'trading-ops[freqtrade]' (in a checkout: make setup)"
# The systemd unit freqtrade runs under in production (freqtrade's docs ship freqtrade.service): the name the packaged
# playbook's freqtrade-restart and freqtrade-loop-restart rules restart, which `stackctl` answers to in the stack.
FREQTRADE_UNIT = "freqtrade.service"
# ccxt's rate limiter: ccxt spaces every call of a kraken client by its rateLimit (1,000 ms in ccxt 4.5; Kraken's own
# REST limit is a counter that decays, which ccxt approximates by spacing calls). freqtrade's reload_config (the
# sidecar's `reconnect`) loads the markets and the balances again, a dozen calls: spaced 1 s apart, a reconnect that
# takes about 1.5 s on loopback took 8-16 s, and every one of those seconds is TradingBotBrokerDisconnected firing on.
# The paper gateway limits orders itself (gateway.orders_per_second) and answers the rest as fast as it can, so
# freqtrade keeps ccxt's limiter on (a client that bursts is still spaced) at 20 calls a second. On Kraken itself,
# leave ccxt's default (no rateLimit key): Kraken bans keys that exceed its counter.
GATEWAY_RATE_LIMIT_MS = 50
# Long enough to see and act on: a trade stays open this long before the demo strategy exits it (then enters again).
HOLD_SECONDS = 120.0
STAKE_AMOUNT = 100.0  # in the quote asset; the paper venue starts with paper.starting_balance (100,000 by default)
# freqtrade's loop: one iteration every PROCESS_THROTTLE_SECONDS in the fast profile (its heartbeat moves that often),
# freqtrade's default (5 s) otherwise.
FAST_PROCESS_THROTTLE_SECONDS = 1
DEFAULT_PROCESS_THROTTLE_SECONDS = 5
# SIGTERM to exit: freqtrade stops its loop, its API and its exchange clients, a few seconds.
STOP_SECONDS = 30.0


class FreqtradeMissing(Exception):
    """The freqtrade console script is not installed in this environment."""


def freqtrade_binary() -> str:
    """The freqtrade console script beside this interpreter, else on PATH; FreqtradeMissing when neither."""
    beside = Path(sys.executable).parent / "freqtrade"
    if beside.exists():
        return str(beside)
    found = shutil.which("freqtrade")
    if found is None:
        raise FreqtradeMissing(INSTALL_HINT)
    return found


def config_path(layout: Layout) -> Path:
    return layout.freqtrade_dir / "config.json"


def database_url(layout: Layout) -> str:
    return f"sqlite:///{layout.freqtrade_dir / 'tradesv3.sqlite'}"


def pairs(config: Config) -> list[str]:
    """freqtrade's pairs (BTC/USD): the paper venue's symbols (BTC-USD)."""
    return [symbol.replace("-", "/") for symbol in config.paper.symbols]


def trading_settings() -> dict[str, Any]:
    """How freqtrade trades on the paper gateway (the stack's freqtrade and the tests' own): live (dry_run false) on
    the spot market from the start, market orders throughout, and a forced entry allowed (POST /forceenter), whose
    limit order may rest on the gateway a minute before freqtrade cancels it itself."""
    return {
        "tradable_balance_ratio": 0.99,
        "dry_run": False,
        "trading_mode": "spot",
        "initial_state": "running",
        "timeframe": "1m",
        "cancel_open_orders_on_exit": False,
        "unfilledtimeout": {"entry": 60, "exit": 60, "unit": "seconds"},
        "force_entry_enable": True,
        "entry_pricing": {"price_side": "other", "use_order_book": False, "price_last_balance": 0.0},
        "exit_pricing": {"price_side": "other", "use_order_book": False},
        "order_types": {
            "entry": "market",
            "exit": "market",
            "emergency_exit": "market",
            "force_exit": "market",
            "force_entry": "market",
            "stoploss": "market",
            "stoploss_on_exchange": False,
        },
    }


def freqtrade_config(config: Config, layout: Layout, ports: Ports, profile: Profile) -> dict[str, Any]:
    """freqtrade's config.json for the stack: live on the paper gateway, its API on the freqtrade port. The keys a
    freqtrade user copies for their own bot are `exchange.ccxt_config` (where the venue is, how fast to call it) and
    `api_server` (what the sidecar polls)."""
    gateway = ports.url("gateway")
    throttle = FAST_PROCESS_THROTTLE_SECONDS if profile.shorten_for else DEFAULT_PROCESS_THROTTLE_SECONDS
    return {
        "bot_name": FREQTRADE_TARGET,
        "max_open_trades": len(config.paper.symbols),
        "stake_currency": config.paper.quote_asset,
        "stake_amount": STAKE_AMOUNT,
        **trading_settings(),
        "exchange": {
            "name": "kraken",
            # key and secret: FREQTRADE__EXCHANGE__KEY and __SECRET (the gateway's main key).
            "ccxt_config": {
                "urls": {"api": {"public": gateway, "private": gateway}},
                "enableRateLimit": True,
                "rateLimit": GATEWAY_RATE_LIMIT_MS,
            },
            "pair_whitelist": pairs(config),
            "pair_blacklist": [],
        },
        "pairlists": [{"method": "StaticPairList"}],
        "api_server": {
            "enabled": True,
            "listen_ip_address": HOST,
            "listen_port": ports.freqtrade,
            "verbosity": "error",
            "username": FREQTRADE_USERNAME,
            # password, jwt_secret_key, ws_token: FREQTRADE__API_SERVER__* (files under var/secrets).
            "CORS_origins": [],
        },
        "internals": {"process_throttle_secs": throttle, "heartbeat_interval": 0},
        "user_data_dir": str(layout.freqtrade_dir / "user_data"),
        "trading_ops_hold_seconds": HOLD_SECONDS,
    }


def write_config(config: Config, layout: Layout, ports: Ports, profile: Profile) -> Path:
    path = config_path(layout)
    (layout.freqtrade_dir / "user_data").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(freqtrade_config(config, layout, ports, profile), indent=2) + "\n", encoding="utf-8")
    return path


def command(layout: Layout) -> list[str]:
    """The command line that runs (and restarts) the stack's freqtrade. Raises FreqtradeMissing."""
    return [
        freqtrade_binary(),
        "trade",
        "--config",
        str(config_path(layout)),
        "--strategy",
        STRATEGY,
        "--strategy-path",
        str(STRATEGY_DIR),
        "--db-url",
        database_url(layout),
        "--logfile",
        str(layout.freqtrade_log),
    ]


def environment(app: AppConfig, base: dict[str, str]) -> dict[str, str]:
    """`base` with freqtrade's secrets as its FREQTRADE__* variables, read from their files."""
    env = dict(base)
    for name, path in app.freqtrade_secrets:
        env[name] = path.read_text(encoding="utf-8").strip()
    return env


def health_url(ports: Ports) -> str:
    """freqtrade's /ping: answers once its API server runs (no login)."""
    return f"{ports.url('freqtrade')}/api/v1/ping"
