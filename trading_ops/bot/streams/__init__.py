"""A stream's parts that know no venue: its health (each channel's silence, a private channel's sequence, each book's
checksum), the metrics, the backoff, the fills' deduplication by execution id, the subscription. The brokers that
stream (the ccxt one in trading_ops.venues.ccxt, the paper one in trading_ops.paper) build on them."""
