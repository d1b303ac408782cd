"""trading-ops: operations for automated trading bots, built the Prometheus way."""

__version__ = "0.1.0"
