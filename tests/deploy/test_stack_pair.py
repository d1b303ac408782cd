"""A clustered Alertmanager pair in the local stack: `trading-ops up --alertmanagers 2` runs two prometheus-alertmanager
children gossiping with each other, as production's HA pair; Prometheus's Watchdog reaches both; a member killed with
SIGKILL is restarted by `up` as its unit would be and rejoins the cluster; one in a crash loop gives up at its start
limit while the stack runs on the other member (the status line reading from it) until `stackctl` brings it back; and
the stack stops cleanly.

Needs the real servers prometheus and prometheus-alertmanager (Debian packages `prometheus`,
`prometheus-alertmanager`); `trading-ops up` starts them with the paper bot and the reconciler on free loopback ports,
fast profile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from polling import until
from system_binaries import require_binary
from up_process import CHILDREN, STARTED_RE, UpProcess, alive

from trading_ops.config import load_config
from trading_ops.stack.status import Snapshot, fetch

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

MEMBERS = ("alertmanager", "alertmanager-2")
UNITS = {"alertmanager": "prometheus-alertmanager.service", "alertmanager-2": "prometheus-alertmanager-2.service"}
# The cluster forms, and re-forms after a member's restart, within seconds (the dead member is found dead by the
# gossip's probes, then the restarted one settles): far less than this.
CLUSTER_SECONDS = 60.0


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def cluster(url: str) -> tuple[str, dict[str, str]]:
    """A member's view of the cluster: its status (settling, ready) and the peers it sees (name -> gossip address)."""
    status = get_json(f"{url}/api/v2/status")["cluster"]
    return status["status"], {peer["name"]: peer["address"] for peer in status.get("peers") or []}


def formed(urls: list[str], gossip: set[str]) -> dict[str, str] | None:
    """The pair's members (name -> gossip address) once every member is ready and sees exactly the two."""
    views = [cluster(url) for url in urls]
    if all(status == "ready" and set(peers.values()) == gossip and len(peers) == 2 for status, peers in views):
        first = views[0][1]
        return first if all(peers == first for _, peers in views) else None
    return None


def watchdog_in(url: str) -> bool:
    alerts = get_json(f"{url}/api/v2/alerts?filter=alertname%3D%22Watchdog%22")
    return any(a["labels"].get("alertname") == "Watchdog" for a in alerts)


async def status_from(alertmanagers: list[str]) -> Snapshot:
    async with aiohttp.ClientSession() as session:
        return await fetch(session, alertmanagers, None, None)


def stackctl(up: UpProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trading_ops", "stackctl", "--state-dir", str(up.state_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def next_start(up: UpProcess, name: str, killed: set[int]) -> int | None:
    """The pid of `name`'s next start (one not killed yet), or None once its unit gave up (its start limit hit)."""

    def started_or_failed(text: str) -> bool:
        match = STARTED_RE.match(text)
        if match is not None:
            return match["name"] == name and int(match["pid"]) not in killed
        return f"{UNITS[name]}: start request repeated too quickly" in text

    match = STARTED_RE.match(up.wait_line(started_or_failed))
    return int(match["pid"]) if match is not None else None


def test_a_member_killed_with_sigkill_is_restarted_and_rejoins_the_pair(tmp_path: Path) -> None:
    require_binary("prometheus")
    up = UpProcess(tmp_path, "--alertmanagers", "2")
    try:
        up.wait_up()
        pids = up.pids()
        assert set(pids) == {*CHILDREN, "alertmanager-2"}
        urls = [up.url("alertmanager"), up.url("alertmanager_2")]
        gossip = {f"127.0.0.1:{up.ports.alertmanager_gossip}", f"127.0.0.1:{up.ports.alertmanager_2_gossip}"}
        # The banner lists both members, each with its gossip address.
        for i, (name, url, port) in enumerate(
            zip(MEMBERS, urls, (up.ports.alertmanager_gossip, up.ports.alertmanager_2_gossip), strict=True), 1
        ):
            row = rf"  {name} +{url}  \(cluster member {i} of 2, gossip 127\.0\.0\.1:{port}\)"
            up.wait_line(lambda text, row=row: re.fullmatch(row, text) is not None)
        # The reconciler posts to both (its configuration, as `up` generated it).
        reconciler = load_config(up.state_dir / "trading-ops.yaml").reconciler
        assert reconciler.alertmanager_urls == urls

        before = until("both members ready, seeing each other", lambda: formed(urls, gossip), CLUSTER_SECONDS)
        for url in urls:  # Prometheus sends every alert to both
            until(f"the Watchdog in {url}", lambda url=url: watchdog_in(url))

        def each_alert_once() -> bool:  # the status line reads both members: an alert in both is one alert
            both, one = asyncio.run(status_from(urls)), asyncio.run(status_from(urls[1:]))
            assert both.alerts is not None and one.alerts is not None
            return both.alerts_from == ", ".join(urls) and both.watchdog is True and both.alerts == one.alerts

        until("the status line's alerts from both members, each once", each_alert_once)

        # One kill: `up` restarts the member as Debian's unit would, and it rejoins (a new name at the same gossip
        # address, beside the member that stayed).
        killed = {pids["alertmanager"]}
        os.kill(pids["alertmanager"], signal.SIGKILL)
        new = next_start(up, "alertmanager", killed)
        assert new is not None and alive(new) and not alive(pids["alertmanager"])
        after = until(
            "the restarted member back in the pair",
            lambda: (peers := formed(urls, gossip)) and peers != before and peers,
            CLUSTER_SECONDS,
        )
        assert len(set(before) & set(after)) == 1
        until("the Watchdog in the restarted member", lambda: watchdog_in(urls[0]))
        assert up.proc.poll() is None and "stopping the stack" not in up.output

        # A crash loop: the member gives up at its start limit, and the stack runs on the other member; the status
        # line says it is down and reads the alerts from the member that answers.
        pid: int | None = new
        while pid is not None:
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
            pid = next_start(up, "alertmanager", killed)
        up.wait_line(lambda text: "!!! the rest keeps running: watch alerts go through alertmanager-2" in text)
        up.wait_line(lambda text: "watchdog: ok" in text and text.endswith("| DOWN: alertmanager"))
        snap = asyncio.run(status_from(urls))
        assert (snap.alerts_from, snap.watchdog) == (urls[1], True)
        assert up.proc.poll() is None and "stopping the stack" not in up.output
        # The member's unit is a unit stackctl knows, as production names it: a human brings it back.
        for verb in ("reset-failed", "start"):
            done = stackctl(up, verb, "prometheus-alertmanager")
            assert done.returncode == 0, done.stderr
        shown = stackctl(up, "status", "prometheus-alertmanager-2")
        assert shown.returncode == 0, shown.stderr
        assert re.match(rf"^prometheus-alertmanager-2\.service +active +pid {pids['alertmanager-2']},", shown.stdout)
        until("the member back in the pair", lambda: formed(urls, gossip), CLUSTER_SECONDS)

        assert up.stop(signal.SIGINT) == 0, up.output
        for name, pid in up.pids().items():
            assert not alive(pid), f"{name} (pid {pid}) survived Ctrl-C"
        for name in MEMBERS:
            assert re.search(rf"^  {name} \(pid \d+\) exited with status 0$", up.output, re.MULTILINE), up.output
    finally:
        up.close()
