"""Alertmanager's webhook bodies as the reconciler receives them: alerts, and the notification that carries them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# When the test alerts started: a minute before the session, as Alertmanager would send it (an alert that started
# longer ago than the ledger's retention is not acted on). Later startsAt of the same alert: `starts(seconds)`.
STARTS_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def starts(seconds: float = 0.0) -> str:
    """STARTS_AT plus `seconds`, as the webhook writes it."""
    return (STARTS_AT + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def alert(
    alertname: str = "TradingBotBrokerDisconnected",
    status: str = "firing",
    fingerprint: str = "f1",
    starts_at: str = starts(),
    generator_url: str = "",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": alertname, "instance": "bot-1", **labels},
        "annotations": {"summary": "test alert."},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": generator_url,
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    status = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "reconciler",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }
