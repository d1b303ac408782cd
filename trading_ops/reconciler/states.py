"""The states of an episode in the ledger: open while the reconciler works on it, closed once it has an outcome."""

OPEN_STATES = ("pending", "waiting", "running", "verifying", "interrupted")
RUNNABLE_STATES = ("pending", "waiting", "interrupted")
CLAIMED_STATES = ("running", "verifying")
ACTIVE_STATES = ("running", "verifying")
CLOSED_STATES = ("recovered", "failed", "escalated", "resolved", "skipped", "dry_run")
