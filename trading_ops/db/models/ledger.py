"""The reconciler's ledger: acknowledged notifications, episodes, attempts, steps, target claims, settings, console
sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trading_ops.db.base import Base, utcnow


class Notification(Base):
    """One webhook notification exactly as Alertmanager sent it, stored before the 200 goes out."""

    __tablename__ = "reconciler_notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    receiver: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    group_key: Mapped[str] = mapped_column(Text)
    alert_count: Mapped[int] = mapped_column()
    payload: Mapped[str] = mapped_column(Text)


class Episode(Base):
    """One alert episode, (fingerprint, startsAt): the unit that gets at most one remediation run."""

    __tablename__ = "reconciler_episodes"
    __table_args__ = (
        UniqueConstraint("fingerprint", "starts_at"),
        Index("ix_reconciler_episodes_state_next_run_at", "state", "next_run_at"),
        Index("ix_reconciler_episodes_rule_target", "rule", "target"),
        # Retention prunes closed episodes by age.
        Index("ix_reconciler_episodes_closed_at", "closed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column()
    alertname: Mapped[str] = mapped_column(String(255))
    target: Mapped[str] = mapped_column(String(255))
    rule: Mapped[str | None] = mapped_column(String(128))
    labels: Mapped[str] = mapped_column(Text)
    annotations: Mapped[str] = mapped_column(Text)
    generator_url: Mapped[str] = mapped_column(Text, default="")
    # open: pending, waiting, running, verifying, interrupted;
    # closed: recovered, failed, escalated, resolved, skipped, dry_run
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(default=0)
    next_run_at: Mapped[datetime | None] = mapped_column()
    owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    first_action_at: Mapped[datetime | None] = mapped_column()
    resolved_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()


class Attempt(Base):
    """One run of a rule's steps (and verification) for an episode."""

    __tablename__ = "reconciler_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("reconciler_episodes.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column()
    owner: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    # running, success, failure, interrupted, unknown (a step was running when its run died), skipped, dry_run,
    # resolved
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class Step(Base):
    """One action of an attempt, with its (truncated) output and timing."""

    __tablename__ = "reconciler_steps"
    __table_args__ = (
        Index("ix_reconciler_steps_target_started_at", "target", "started_at"),
        Index("ix_reconciler_steps_fenced_until", "fenced_until"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("reconciler_attempts.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column()
    action: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text)
    risk: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(255))
    # Whether the step counts against the target's and the global action budgets.
    budgeted: Mapped[bool] = mapped_column(default=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    # running, success, failure, timeout, refused, dry_run, unknown (running when its run died; earlier: interrupted)
    outcome: Mapped[str] = mapped_column(String(16))
    output: Mapped[str] = mapped_column(Text, default="")
    # The process group the step started (exec, systemd), as host.pid.start-time (trading_ops.reconciler.processes):
    # after a crash of the reconciler, a group still running is killed before the step is retried.
    process: Mapped[str | None] = mapped_column(String(96))
    # Set when the step's run died while that process group may still run: until then (or until a reconciler on
    # the process's host killed it and cleared this), no run of the step's target may start anywhere.
    fenced_until: Mapped[datetime | None] = mapped_column()


class Target(Base):
    """A remediation target: its claim (one action at a time) and its circuit breaker."""

    __tablename__ = "reconciler_targets"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column()
    circuit_open_until: Mapped[datetime | None] = mapped_column()
    # When an operator last reset the circuit (`trading-ops reconciler circuits reset`): the action budget counts
    # only the actions taken since, so the next alert does not open it again at once.
    budget_reset_at: Mapped[datetime | None] = mapped_column()


class AuditEntry(Base):
    """An operator's action on the reconciler's state (a circuit reset): what, on which target, by whom, when."""

    __tablename__ = "reconciler_audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(Text, default="")


class Escalation(Base):
    """A page the reconciler owes (the outbox): written before it is sent, posted to Alertmanager until a member
    takes it; sent through the apprise notifications too when that takes too long."""

    __tablename__ = "reconciler_escalations"
    __table_args__ = (Index("ix_reconciler_escalations_posted_at_next_attempt_at", "posted_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("reconciler_episodes.id", ondelete="CASCADE"), index=True)
    # The posted alert, fixed when the page was owed: every resend has the same labels and startsAt, so
    # Alertmanager keeps one alert (one page) however often it is posted.
    alertname: Mapped[str] = mapped_column(String(255))
    labels: Mapped[str] = mapped_column(Text)
    annotations: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    # Held by a replica while it sends the row (a lease, as the episodes' claims).
    owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column()
    # When Alertmanager took it (the row is done), when the apprise fallback delivered it, when that first failed.
    posted_at: Mapped[datetime | None] = mapped_column()
    notified_at: Mapped[datetime | None] = mapped_column()
    fallback_failed_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str] = mapped_column(Text, default="")


class Setting(Base):
    """Operator switches shared by every replica (the reconciler's own pause)."""

    __tablename__ = "reconciler_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Approval(Base):
    """A human decision a playbook step waits for (`approval: required`): bound to the episode, the step, its exact
    arguments and the playbook's version; decided once (approved, rejected) or expired, and used at most once."""

    __tablename__ = "reconciler_approvals"
    __table_args__ = (Index("ix_reconciler_approvals_status_deadline", "status", "deadline"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("reconciler_episodes.id", ondelete="CASCADE"), index=True)
    # The attempt that asked (a later attempt reaching the step asks again: an approval is used once).
    attempt_id: Mapped[int] = mapped_column()
    # The step: its position in the rule's steps, its action and name, its parameters as JSON (sorted keys) and what
    # it does with this alert's labels filled in, and the version (hash) of the playbook that holds it.
    position: Mapped[int] = mapped_column()
    action: Mapped[str] = mapped_column(String(32))
    step_name: Mapped[str] = mapped_column(Text)
    arguments: Mapped[str] = mapped_column(Text)
    playbook_version: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(255))
    # pending, approved, rejected, expired, executed (approved and used), superseded (the playbook changed).
    status: Mapped[str] = mapped_column(String(16))
    on_timeout: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(128))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline: Mapped[datetime] = mapped_column()
    # Who decided, as they named themselves (free text), and the name of the API token they decided with (the
    # console's and the API's; none from the CLI, which writes with the database's own access): kept apart, so a
    # typed name cannot read like another token's attribution.
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_token: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None] = mapped_column()
    reason: Mapped[str] = mapped_column(Text, default="")
    executed_at: Mapped[datetime | None] = mapped_column()
    # Four eyes: what kind of decision it is (ramp_promotion, live_start, clear_halt; step: any other step, a
    # venue-direct flatten), the principal that asked (an authenticated person's request, or the reconciler: NULL),
    # and how many people other than it must approve (0 only when the configuration says so for a one-person team).
    kind: Mapped[str] = mapped_column(String(32), default="step", server_default="step")
    required: Mapped[int] = mapped_column(default=1, server_default="1")
    requester: Mapped[str | None] = mapped_column(String(255))
    # The authenticated request it answers (reconciler_requests.id), when a person asked through the reconciler.
    request_id: Mapped[int | None] = mapped_column()


class ApprovalDecision(Base):
    """One approver's decision on an approval (four eyes: several may be needed): who (the authenticated principal),
    when, from where, what they typed beside it (comment) and why. One per principal and approval."""

    __tablename__ = "reconciler_approval_decisions"
    __table_args__ = (UniqueConstraint("approval_id", "principal"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    approval_id: Mapped[int] = mapped_column(ForeignKey("reconciler_approvals.id", ondelete="CASCADE"))
    principal: Mapped[str] = mapped_column(String(255))
    # approve or reject
    decision: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(255), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class Request(Base):
    """A person's authenticated request for a decision that widens risk (a ramp promotion, a live start, clearing a
    loss-limit halt): who asked (the principal
    of the token or console session), from where, and until when it stands. The approval it leads to knows its
    requester from here, never from a label typed into an alert."""

    __tablename__ = "reconciler_requests"
    __table_args__ = (Index("ix_reconciler_requests_bot_stage", "bot", "stage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    bot: Mapped[str] = mapped_column(String(128))
    instance: Mapped[str] = mapped_column(String(255))
    stage: Mapped[str] = mapped_column(String(64))
    principal: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(255))
    comment: Mapped[str] = mapped_column(Text, default="")
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    # What the request was asked on, as JSON (a live start: the bot's readiness verdict then, which the record that
    # answers it keeps).
    detail: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")


class ConsoleSession(Base):
    """A login to the operator console (/ui/), shared by every replica on the ledger's database. The browser holds
    the opaque session id; this row holds only its SHA-256, so what the database shows cannot be used as a cookie."""

    __tablename__ = "reconciler_console_sessions"

    # SHA-256 (hex) of the session id in the cookie.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The token logged in with: its name and scope, and a SHA-256 (hex) of its digest, so a session ends when the
    # configuration no longer has that token (removed, given another value or scope).
    token_name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    # The CSRF token every POST of the session carries.
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Absolute: a session lasts from its login until then (trading_ops.reconciler.console.SESSION_SECONDS).
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # [[done|problem, message], ...] of the last POSTs (JSON), shown once by the next page, whichever replica serves it.
    flash: Mapped[str] = mapped_column(Text, default="[]")
