"""The webhook's body limit fits what Alertmanager sends with the shipped max_alerts (Alertmanager does not resend
after a 4xx: a notification over the limit is lost). Needs prometheus-alertmanager: a real one sends the group."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import start_alertmanager
from reconciler_server import ThreadedServer, make_config, write_playbook
from server_process import stop
from sqlalchemy import func, select

from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import make_engine
from trading_ops.db.models import Episode

REPO = Path(__file__).resolve().parents[2]
# The largest shipped alert, with this much room for more or longer labels and annotations than ours.
MARGIN = 3


def shipped_max_alerts() -> int:
    config = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "reconciler"]
    (hook,) = receiver["webhook_configs"]
    return int(hook["max_alerts"])


def shipped_alerts() -> list[dict[str, Any]]:
    """One alert per shipped alerting rule, as Alertmanager posts it to a webhook: the rule's labels and
    annotations (templates left in: as long as what they render to), a bot's target labels, the generatorURL."""
    alerts = []
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                labels = {
                    "alertname": rule["alert"],
                    **{k: str(v) for k, v in (rule.get("labels") or {}).items()},
                    "instance": "paper-bot:9101",
                    "job": "tradingbot",
                    "bot": "paper-1",
                    "venue": "paper",
                    "symbol": "BTC-USD",
                }
                query = urllib.parse.urlencode({"g0.expr": rule["expr"], "g0.tab": "1"})
                alerts.append(
                    {
                        "status": "firing",
                        "labels": labels,
                        "annotations": {k: str(v) for k, v in (rule.get("annotations") or {}).items()},
                        "startsAt": "2026-11-23T01:16:36.123456789Z",
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": f"http://prometheus:9090/graph?{query}",
                        "fingerprint": "0123456789abcdef",
                    }
                )
    return alerts


def test_the_default_limit_fits_the_shipped_max_alerts_of_the_largest_shipped_alert() -> None:
    max_alerts = shipped_max_alerts()
    assert 0 < max_alerts <= 10_000  # 0 would be unlimited: no body limit fits that
    largest = max(len(json.dumps(a)) for a in shipped_alerts())
    assert ReconcilerConfig().max_body_bytes >= max_alerts * largest * MARGIN


@pytest.mark.alertmanager
def test_a_full_group_from_alertmanager_is_stored_and_what_it_left_out_is_counted(
    tmp_path: Path, migrated_sqlite: str
) -> None:
    max_alerts = shipped_max_alerts()
    idle = [
        {
            "name": "idle",
            "match": ['alertname=~".+"'],
            "wait_for": "3650d",
            "steps": [{"action": "bot", "command": "pause"}],
        }
    ]
    config = make_config(tmp_path, migrated_sqlite, playbook=str(write_playbook(tmp_path, idle)))  # default limit
    server = ThreadedServer(config)
    am = start_alertmanager(tmp_path / "am", f"{server.url}/api/v1/alertmanager", max_alerts=max_alerts)
    engine = make_engine(migrated_sqlite)
    try:
        largest = max(shipped_alerts(), key=lambda a: len(json.dumps(a)))
        extra = 25
        # One group (same alertname and instance), one alert per symbol: more than max_alerts of them.
        am.post_alerts(
            [
                {
                    "labels": {**largest["labels"], "symbol": f"SYM{i:05d}-USD"},
                    "annotations": largest["annotations"],
                    "generatorURL": largest["generatorURL"],
                }
                for i in range(max_alerts + extra)
            ]
        )
        end = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                stored = conn.execute(select(func.count()).select_from(Episode)).scalar_one()
            # The handler counts what was left out once the writer has committed the rest: rows first, then the count.
            text = metrics(server)
            truncated = [line for line in text.splitlines() if line.startswith("tradingops_alerts_truncated_total ")]
            if stored >= max_alerts and truncated and float(truncated[0].split()[1]) >= extra:
                break
            assert time.monotonic() < end, f"{stored} episodes stored; reconciler metrics:\n{text}"
            time.sleep(0.2)
        assert stored == max_alerts
        assert 'tradingops_notifications_rejected_total{reason="too_large"} 0.0' in text
    finally:
        engine.dispose()
        stop(am.proc)
        server.stop()


def metrics(server: ThreadedServer) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())
