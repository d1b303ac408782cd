"""Bots we don't write, given the library's metrics and control API: the freqtrade sidecar, the NautilusTrader
controller."""
