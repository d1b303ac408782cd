"""NautilusTrader in-process: `TradingOpsController`, a node's `Controller` that exports the library's `tradingbot_`
metrics from the node's events and cache and serves its control API mapped onto the node (needs the `nautilus`
extra). Add it with `TradingNodeConfig(controller=controller_config(port=..., token_file=...))`."""

from trading_ops.integrations.nautilus.controller import (
    TradingOpsController,
    TradingOpsControllerConfig,
    controller_config,
)

__all__ = ["TradingOpsController", "TradingOpsControllerConfig", "controller_config"]
