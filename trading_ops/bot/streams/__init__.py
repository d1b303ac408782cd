"""A stream's parts that know no venue: each channel's silence and a private channel's sequence, the metrics, the
backoff, the fills' deduplication by execution id, the subscription. The brokers that stream (the ccxt one in
trading_ops.venues.ccxt, the paper one in trading_ops.paper) build on them."""
