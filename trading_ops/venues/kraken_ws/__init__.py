"""Kraken Spot WebSocket v2 served by the paper gateway: wire vocabulary, book checksum, public and private channels."""
