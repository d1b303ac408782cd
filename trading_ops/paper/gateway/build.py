"""The paper gateway its configuration asks for: the Kraken-compatible gateway over the paper venue, and the Binance
spot dialect on the same accounts when `gateway.binance` has keys (each dialect knows the gateway, never the other
way round)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trading_ops.paper.gateway.kraken.gateway import KrakenGateway
from trading_ops.paper.gateway.kraken.gateway import gateway_from_config as kraken_gateway_from_config

if TYPE_CHECKING:
    from trading_ops.config import Config


def gateway_from_config(config: Config) -> KrakenGateway:
    """The gateway of `config` with every dialect it configures (ConfigError, one line, for a bad section)."""
    gateway = kraken_gateway_from_config(config)
    if config.gateway.binance.keys:  # the same accounts in Binance spot's dialect too
        from trading_ops.paper.gateway.binance.dialect import dialect_from_config

        gateway.dialects.append(dialect_from_config(config, gateway))
    return gateway
