"""The reconciler's full /metrics after a few episodes: a golden file of every sample (timings and timestamps
normalized), linted with `promtool check metrics` (needs promtool from Debian's prometheus package)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fake_bot import FakeBot, bot_targets
from prometheus_client import CollectorRegistry
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from webhook_payloads import alert, payload

from trading_ops.reconciler.app import create_app

GOLDEN = Path(__file__).parent / "golden" / "reconciler_metrics.txt"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})? (?P<value>\S+)$")
# Values that depend on the clock or on how fast this machine is: kept as a placeholder, their series checked.
TIMED = re.compile(r"(_timestamp_seconds|_seconds_bucket|_seconds_sum|_oldest_pending_seconds|_commit_wait_seconds)$")
VERSION = re.compile(r'version="[^"]*"')

RULES = [
    {
        "name": "reconnect",
        "match": ['alertname="TradingBotBrokerDisconnected"'],
        "verify": False,
        "cooldown": 0,
        "steps": [{"action": "bot", "command": "reconnect"}],
    },
    {
        "name": "resubscribe",
        "match": ['alertname="TradingBotMarketDataStale"'],
        "verify": False,
        "cooldown": 0,
        "max_attempts": 1,
        "steps": [{"action": "bot", "command": "resubscribe"}],
    },
]


def normalize(exposition: str) -> str:
    lines = []
    for line in exposition.splitlines():
        if line.startswith("#"):
            lines.append(line)
            continue
        m = SAMPLE.match(line)
        assert m, f"unparsable sample line: {line!r}"
        labels = VERSION.sub('version="<version>"', m.group("labels") or "")
        value = "<varies>" if TIMED.search(m.group("name")) else m.group("value")
        lines.append(f"{m.group('name')}{labels} {value}")
    return "\n".join(lines) + "\n"


async def closed(client: Any, count: int) -> list[dict[str, Any]]:
    end = time.monotonic() + 30
    while True:
        episodes = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        if len(episodes) >= count and all(e["state"] not in ("pending", "running", "verifying") for e in episodes):
            return episodes  # type: ignore[no-any-return]
        assert time.monotonic() < end, f"episodes did not settle: {episodes}"
        await asyncio.sleep(0.05)


async def test_full_metrics_match_golden_and_pass_promtool(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install Debian's 'prometheus' package (make test does)")
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, RULES)),
        targets=bot_targets(fake_bot, tmp_path),
        watchdog={"window_seconds": 600},
        # Alertmanager is down: the failed episode's page stays in the outbox, its apprise fallback due at once.
        escalation={"fallback_after_seconds": 0},
    )
    registry = CollectorRegistry()
    client = await aiohttp_client(create_app(config, registry=registry))
    fake_bot.status["resubscribe"] = 500

    async def send(body: dict[str, Any], headers: dict[str, str] = AUTH) -> None:
        await client.post("/api/v1/alertmanager", json=body, headers=headers)

    # A recovered episode, a resend of it, one that fails and whose page waits in the outbox (Alertmanager is down,
    # no apprise URLs), one resolved before any action, one no rule matches, a Watchdog, and three rejections.
    await send(payload(alert(fingerprint="a")))
    await closed(client, 1)
    await send(payload(alert(fingerprint="a")))
    await send(payload(alert("TradingBotMarketDataStale", fingerprint="b")))
    await closed(client, 2)
    await send(payload(alert(fingerprint="c", status="resolved")))
    await send(payload(alert("Unhandled", fingerprint="d"), alert("Watchdog", fingerprint="w")))
    await send(payload(alert()), headers={"Authorization": "Bearer wrong"})
    await client.post("/api/v1/alertmanager", data=b"{", headers=AUTH)
    await send({**payload(alert()), "version": "3"})
    episodes = await closed(client, 4)
    assert sorted(e["state"] for e in episodes) == ["escalating", "recovered", "resolved", "skipped"]
    # The engine's next poll refreshes the ledger snapshot; the outbox tries apprise. A deadline for a loaded machine,
    # not a measure: both take well under a second.
    end = time.monotonic() + 60
    failures = {"alertname": "TradingOpsRemediationFailed"}
    while (
        registry.get_sample_value("tradingops_open_episodes", {"state": "running"}) != 0
        # A run whose outcome is in the ledger may still be finishing its bookkeeping: in flight until its task ends.
        or registry.get_sample_value("tradingops_actions_in_flight") != 0
        or registry.get_sample_value("tradingops_escalation_failures_total", failures) != 1
    ):
        assert time.monotonic() < end
        await asyncio.sleep(0.05)

    text = await (await client.get("/metrics")).text()
    lint = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=text, capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr
    assert "_created" not in text
    current = normalize(text)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(current)
    assert GOLDEN.exists(), "no golden file yet: run with UPDATE_GOLDEN=1"
    assert current == GOLDEN.read_text(), "the /metrics output changed; review and regenerate with UPDATE_GOLDEN=1"
