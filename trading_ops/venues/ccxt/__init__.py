"""Any ccxt venue as a Broker: the REST broker (rest), the streaming broker over our Kraken WebSocket v2 client
(streaming, kraken_stream), the ccxt.pro brokers (pro, pro_broker, pro_fills), and what checks a stream's books."""
