"""The local stack: `trading-ops up` runs the paper bot, the reconciler, Prometheus and Alertmanager together."""
