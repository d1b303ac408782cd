"""HTTP clients of the services trading-ops talks to: Alertmanager, Prometheus, notification services."""
