"""Run the trading-ops command line as `python -m trading_ops`."""

from trading_ops.cli import main

raise SystemExit(main())
