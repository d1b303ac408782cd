"""systemd and docker steps on a bot's own host (bots[].host), refused before anything is done there: a host whose SSH
key is not the known one (OpenSSH's real sshd on a host of its own, tests/ssh_host.py), a host that cannot be reached
(a test host whose link is down, tests/netns_hosts.py). Each is one line, escalated through a real Alertmanager, and a
resent notification does nothing twice. Real systemctl (`--host`) and ssh. Needs root, `ip`, sshd and
`prometheus-alertmanager`. The restart that works, into a booted machine, is tests/deploy/test_remote_hosts_real.py."""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager
from engine_runs import engine_settled
from netns_hosts import host_network
from polling import until_async
from reconciler_server import AUTH, READ_AUTH, write_one_rule_config
from ssh_host import ssh_host
from webhook_payloads import alert, payload

from trading_ops.config import load_config
from trading_ops.reconciler.actions.escalate import FAILED
from trading_ops.reconciler.app import create_app

pytestmark = [pytest.mark.alertmanager]

INSTANCE = "10.0.9.9:9101"
HUNG = "TradingBotHeartbeatStale"
STEPS = {
    "systemd": {"action": "systemd", "timeout": "30s"},
    "docker": {"action": "docker", "timeout": "30s"},
}


def write_config(tmp_path: Path, db: str, am_url: str, step: dict[str, Any], host: dict[str, Any]) -> Path:
    bot = {
        "name": "remote-1",
        "instance": INSTANCE,
        "url": f"http://{INSTANCE}",
        "token_file": "bot-token",
        "unit": "trading-ops-bot@remote-1.service",
        "container": "trading-ops-remote-1",
        "host": host,
    }
    return write_one_rule_config(tmp_path, db, HUNG, step, bot, alertmanager_url=am_url, lease_seconds=3)


async def escalated_once(client: Any, am: Alertmanager) -> dict[str, Any]:
    """Fire the alert, wait for its episode to end escalated with a page, resend it: nothing more happens. The one
    step's row."""
    labels = {"alertname": HUNG, "instance": INSTANCE, "run": uuid.uuid4().hex[:8]}
    held = am.fire(labels)
    body = payload(alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **labels))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

    async def ended() -> dict[str, Any] | None:
        found = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        if len(found) == 1 and found[0]["state"] == "escalated":
            return dict(await (await client.get(f"/api/v1/episodes/{found[0]['id']}", headers=READ_AUTH)).json())
        return None

    episode = await until_async("the episode escalated", ended, deadline=60)
    (step,) = episode["attempts"][0]["steps"]

    def paged() -> list[dict[str, Any]]:
        return [
            a for a in am.get("alerts") if a["labels"]["alertname"] == FAILED and a["labels"]["instance"] == INSTANCE
        ]

    page = await until_async("the page", paged, deadline=30, in_thread=True)
    # The page carries the step's line (its first 200 characters, as every step's in "Tried: ...").
    assert step["output"][:150] in page[0]["annotations"]["description"]
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    await engine_settled(client.app)
    found = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
    assert len(found) == 1 and len(episode["attempts"]) == 1
    return dict(step)


@pytest.mark.parametrize("kind", ["systemd", "docker"])
async def test_a_host_whose_key_changed_is_refused_in_one_line(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager, kind: str
) -> None:
    with ssh_host(tmp_path / "host") as ssh:
        # The key on record is another host's: the one this address had before, say.
        other = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
        known = tmp_path / "known_hosts"
        known.write_text(f"[{ssh.host}]:{ssh.port} {other.with_suffix('.pub').read_text().strip()}\n")
        host = {
            "address": ssh.host,
            "ssh_port": ssh.port,
            "ssh_user": ssh.user,
            "identity_file": str(ssh.identity_file),
            "known_hosts_file": str(known),
        }
        if kind == "docker":
            host["docker_url"] = f"ssh://{ssh.user}@{ssh.host}:{ssh.port}"
        config = write_config(tmp_path, migrated_sqlite, alertmanager.url, STEPS[kind], host)
        client = await aiohttp_client(create_app(load_config(config)))
        step = await escalated_once(client, alertmanager)
    assert step["outcome"] == "failure"
    expected = (
        f"host {ssh.host}: its SSH host key does not match {known}; refused "
        "(a changed key is checked by a person, never accepted by the reconciler)"
    )
    assert step["output"].removeprefix("docker restart trading-ops-remote-1: ") == expected


async def test_a_host_that_cannot_be_reached_fails_in_one_line(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager
) -> None:
    (tmp_path / "known_hosts").write_text("")
    with host_network() as network:
        gone = network.add_host("bot")
        gone.link_down()  # the host is cut off: nothing answers at its address
        host = {"address": gone.address, "known_hosts_file": "known_hosts", "connect_timeout_seconds": 2}
        config = write_config(tmp_path, migrated_sqlite, alertmanager.url, STEPS["systemd"], host)
        client = await aiohttp_client(create_app(load_config(config)))
        step = await escalated_once(client, alertmanager)
    assert step["outcome"] == "failure"
    # ssh's own words: the address answers no ARP (no route), or nothing answers in time.
    head = f"host {gone.address} unreachable: ssh: connect to host {gone.address} port 22: "
    assert step["output"] in (head + "No route to host", head + "Connection timed out")


async def test_a_step_keeps_its_timeout_end_to_end_and_says_the_host_is_unreachable(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, alertmanager: Alertmanager
) -> None:
    """A 3 s step at the host's default connect timeout (10 s), the host silent (its link up, every packet to port 22
    dropped: nothing says "no route"): the `show` before the restart and the restart share the step's one deadline,
    ssh gives up connecting within it, and the step says the host is unreachable (issue 47: each got the whole
    timeout, ssh was killed before it could say why, and the step ended in "killed after 3s" after 6 s)."""
    (tmp_path / "known_hosts").write_text("")
    with host_network() as network:
        gone = network.add_host("bot")
        gone.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP", check=True)
        host = {"address": gone.address, "known_hosts_file": "known_hosts"}
        step = {"action": "systemd", "timeout": "3s"}
        config = write_config(tmp_path, migrated_sqlite, alertmanager.url, step, host)
        client = await aiohttp_client(create_app(load_config(config)))
        ran = await escalated_once(client, alertmanager)
    head = f"host {gone.address} unreachable: ssh: connect to host {gone.address} port 22: "
    assert ran["outcome"] == "failure", ran
    assert ran["output"] == head + "Connection timed out", ran["output"]
    took = datetime.fromisoformat(ran["finished_at"]) - datetime.fromisoformat(ran["started_at"])
    print({"step_timeout_seconds": 3, "step_seconds": round(took.total_seconds(), 2)})
