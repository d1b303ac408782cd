"""The Kraken dialect of the gateway: Kraken's REST API (gateway, market, account, auth, faults, api) and its
WebSocket v2 (ws/), served over the paper venue."""
