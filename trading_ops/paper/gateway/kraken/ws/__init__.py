"""Kraken Spot WebSocket v2 served by the paper gateway: wire vocabulary, public and private channels (the book
checksum both sides use: trading_ops.bot.streams.checksum)."""
