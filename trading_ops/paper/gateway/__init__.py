"""The paper venue behind a real venue's API, one dialect per folder (kraken/: REST and WebSocket v2), and its CLI."""
