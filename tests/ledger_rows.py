"""Rows of the reconciler's ledger as the reconciler writes them, for tests that need one in a given state without
driving a whole episode there: an episode of a bot's alert waiting for a person's approval of its step."""

from __future__ import annotations

import json
from datetime import timedelta

from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models.ledger import Approval, Attempt, Episode
from trading_ops.db.states import OPEN_STATES


def ask_approval(url: str, instance: str, state: str = "waiting", fingerprint: str = "f" * 16) -> int:
    """What the reconciler writes when a step waits for a person (an exposure page's venue-direct flatten): an episode
    of the bot's alert and its pending approval, in the ledger's real tables; the approval's id. `state`: the episode's
    (a closed one: its alert resolved before anyone decided, the approval's row still `pending`)."""
    engine = make_engine(url)
    now = utcnow()
    labels = {"alertname": "TradingBotUnhandledExposure", "instance": instance, "severity": "critical"}
    try:
        with engine.begin() as conn:
            episode = conn.execute(
                Episode.__table__.insert()
                .values(
                    fingerprint=fingerprint,
                    starts_at=now,
                    alertname=labels["alertname"],
                    target=instance,
                    rule="flatten-at-the-venue",
                    labels=json.dumps(labels),
                    annotations="{}",
                    state=state,
                    detail="awaiting approval",
                    attempts=1,
                    received_at=now,
                    updated_at=now,
                    closed_at=None if state in OPEN_STATES else now,
                )
                .returning(Episode.__table__.c.id)
            ).scalar_one()
            attempt = conn.execute(
                Attempt.__table__.insert()
                .values(episode_id=episode, number=1, owner="reconciler-1", outcome="approval", started_at=now)
                .returning(Attempt.__table__.c.id)
            ).scalar_one()
            return int(
                conn.execute(
                    Approval.__table__.insert()
                    .values(
                        episode_id=episode,
                        attempt_id=attempt,
                        position=0,
                        action="venue",
                        step_name="flatten",
                        arguments="{}",
                        playbook_version="v1",
                        rule="flatten-at-the-venue",
                        target=instance,
                        status="pending",
                        on_timeout="escalate",
                        requested_by="reconciler",
                        requested_at=now,
                        deadline=now + timedelta(minutes=30),
                    )
                    .returning(Approval.__table__.c.id)
                ).scalar_one()
            )
    finally:
        engine.dispose()
