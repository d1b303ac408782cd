"""What a bot uses to reach a real venue: the ccxt brokers (ccxt/) and the venue's call budget (call_counter)."""
