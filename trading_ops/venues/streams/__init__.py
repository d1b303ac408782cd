"""Streams from a venue, as parts: the checks our code makes that ccxt does not (health), their metrics, the resync
policy, and a Kraken WebSocket v2 connection that replays its subscriptions (client)."""
