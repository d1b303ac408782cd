"""`trading-ops freqtrade`: a sidecar that polls an unmodified freqtrade's REST API and serves the library's
`tradingbot_` metrics and `POST /control/{command}` for it, one listen port per watched freqtrade."""
