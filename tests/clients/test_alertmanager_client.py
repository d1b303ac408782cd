"""The reconciler's Alertmanager client with the first member of a pair dead (its address blackholed: a connect that
is never answered, as a dead host's): reads stay with the member that answered, a page returns once the live member
took it, and nothing waits for the dead member more than its bounded connect timeout, once. Needs the
`prometheus-alertmanager` binary (a real Alertmanager as the live member, started here)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from alertmanager_server import start_alertmanager
from blackhole import Blackhole
from server_process import stop

from trading_ops.clients.alertmanager import CONNECT_TIMEOUT_SECONDS, AlertmanagerClient
from trading_ops.reconciler.actions.escalate import FAILED, escalate

pytestmark = [pytest.mark.alertmanager]


async def test_a_dead_first_member_costs_an_action_one_connect_timeout_at_most(tmp_path: Path) -> None:
    live = start_alertmanager(tmp_path / "alertmanager")
    dead = Blackhole()
    took: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as session:
            client = AlertmanagerClient(session, [dead.url, live.url])
            # The first read asks the dead member first, passes it over after the connect timeout, and remembers the
            # member that answered.
            started = time.monotonic()
            assert await client.silences() == []
            took["first read"] = time.monotonic() - started
            assert client.member == live.url
            # From then on the live member is asked first: the dead one is not tried again while it answers.
            started = time.monotonic()
            assert await client.alerts() == []
            took["second read"] = time.monotonic() - started
            assert client.member == live.url
            # A page goes to every member, and returns once one took it: the dead member's post is still under way
            # (its connect not yet timed out), the live member holds the page.
            started = time.monotonic()
            await escalate(client, FAILED, {"alertname": "TradingBotDown", "instance": "bot-1"}, "bot-1", "test")
            took["escalation"] = time.monotonic() - started
            assert len(client._posting) == 1, "the post to the dead member is not waited for"
            held = live.get("alerts")
            assert [a["labels"]["original_alertname"] for a in held if a["labels"]["alertname"] == FAILED] == [
                "TradingBotDown"
            ]
            # The background post ends by its connect timeout, logged, and is dropped.
            while client._posting:
                await asyncio.sleep(0.05)
    finally:
        dead.close()
        stop(live.proc)
    print(json.dumps({"connect_timeout_seconds": CONNECT_TIMEOUT_SECONDS, "seconds": took}))
