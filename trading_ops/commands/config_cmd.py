"""`trading-ops config check`: validate the configuration file and its secrets alone."""

from __future__ import annotations

import argparse
from typing import Any

from trading_ops.config import Config, ConfigError, resolve_secret


def register(sub: Any) -> None:
    parser = sub.add_parser("config", help="configuration tools")
    inner = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = inner.add_parser("check", help="validate the configuration file and exit (0 ok, 2 invalid)")
    check.add_argument("--no-secrets", action="store_true", help="do not check that secrets can be read")
    check.set_defaults(handler=check_config)


def check_config(args: argparse.Namespace, config: Config) -> int:
    config.database_url()
    if not args.no_secrets:
        token = resolve_secret(config, config.bot, "control_token", "bot.control_token")
        if not token:
            raise ConfigError(
                "bot.control_token",
                "no token: set control_token_file or the environment "
                "variable named by control_token_env (default TRADING_OPS_CONTROL_TOKEN)",
            )
    print(f"configuration ok ({args.config or 'defaults'})")
    return 0
