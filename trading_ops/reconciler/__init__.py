"""The reconciler: Alertmanager webhooks in, durable ledger, playbooks, verified and escalated actions out."""
