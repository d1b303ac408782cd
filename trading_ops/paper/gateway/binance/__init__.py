"""The paper venue in Binance spot's dialect: REST `/api/v3`, its market streams and the WebSocket API's user data
stream, over the accounts of the Kraken-compatible gateway (trading_ops.paper.gateway.kraken.gateway); see
docs/gateway.md."""
