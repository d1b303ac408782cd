"""Broker implementations for real venues (ccxt) and the Kraken-compatible gateway that serves the paper venue."""
