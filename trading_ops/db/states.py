"""The states of an episode in the ledger: open while the reconciler works on it, closed once it has an outcome."""

# escalating: the run gave up and its page is in the outbox, not yet delivered anywhere (then `escalated`).
OPEN_STATES = ("pending", "waiting", "running", "verifying", "interrupted", "escalating")
RUNNABLE_STATES = ("pending", "waiting", "interrupted")
CLAIMED_STATES = ("running", "verifying")
ACTIVE_STATES = ("running", "verifying")
CLOSED_STATES = ("recovered", "failed", "escalated", "resolved", "skipped", "dry_run")
# An approval (trading_ops.reconciler.approvals): waiting, decided, expired, used by its step, or superseded (the
# playbook changed since it was asked).
APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired", "executed", "superseded")
