"""Any ccxt venue as a Broker: the REST broker (rest), the streaming broker over our Kraken WebSocket v2 client
(streaming, kraken_stream), the ccxt.pro brokers (pro, pro_broker, pro_fills), ccxt's errors and symbols as ours
(errors, symbols), and the factory that picks one of them from the configuration (factory)."""
