"""Sidecars that give bots we don't write (freqtrade) the library's metrics and control API."""
