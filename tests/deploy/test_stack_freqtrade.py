"""`trading-ops up --bot freqtrade` end to end, as a freqtrade user runs it: one command starts a real freqtrade (the
`freqtrade` extra) trading live on the paper gateway with the generated config.json (exchange.ccxt_config pointing
ccxt's kraken client at the gateway), its `trading-ops freqtrade` sidecar on the bot port, the reconciler with the
packaged playbook, Prometheus and Alertmanager. The fault the banner suggests (the venue drops freqtrade's connections)
fires TradingBotBrokerDisconnected for the sidecar's instance in the freqtrade job; the packaged broker-reconnect rule
asks the sidecar to reconnect (a session with the venue, then freqtrade's reload_config) and the episode ends
`recovered`, verified in Prometheus. Ctrl-C stops every child, freqtrade included.

Needs prometheus and prometheus-alertmanager (Debian packages) and the `freqtrade` extra; `up` starts them all once for
this module, fast profile, on free loopback ports.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from freqtrade_helpers import freqtrade_binary
from polling import until
from system_binaries import require_binary
from up_process import UpProcess, alive

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

DEADLINE_SECONDS = 120.0
CHILDREN = {"paper-gateway", "freqtrade", "freqtrade-sidecar", "reconciler", "alertmanager", "prometheus"}


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
        return json.loads(resp.read())


class Stack:
    def __init__(self, up: UpProcess) -> None:
        self.up = up
        self.read_token = (up.root / "secrets" / "reconciler-read-token").read_text().strip()
        self.instance = f"127.0.0.1:{up.ports.bot}"

    def banner_command(self, prefix: str) -> list[str]:
        """The command of the banner line starting with `prefix`, as a user would copy it (without its comment)."""
        line = self.up.wait_line(lambda text: text.startswith(prefix))
        return shlex.split(line.removeprefix(prefix).split("  (")[0])

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(
            get_json(self.up.url("prometheus", f"/api/v1/query?query={urllib.parse.quote(expr)}"))["data"]["result"]
        )

    def episodes(self, alertname: str) -> list[dict[str, Any]]:
        url = self.up.url("reconciler", "/api/v1/episodes?limit=100")
        found = get_json(url, {"Authorization": f"Bearer {self.read_token}"})["episodes"]
        return [e for e in found if e["alertname"] == alertname]

    def freqtrade(self, path: str) -> Any:
        """freqtrade's own REST API (as FreqUI or freqtrade-client would), with the generated password."""
        import base64

        password = (self.up.root / "var" / "secrets" / "freqtrade-api-password").read_text().strip()
        basic = base64.b64encode(f"freqtrader:{password}".encode()).decode()
        return get_json(self.up.url("freqtrade", f"/api/v1{path}"), {"Authorization": f"Basic {basic}"})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    freqtrade_binary()  # fails (never skips) without the extra
    # No random rejects or partial fills: freqtrade's trades open at once and stay whole.
    up = UpProcess(
        tmp_path_factory.mktemp("stack-freqtrade"),
        "--bot",
        "freqtrade",
        paper={"reject_probability": 0, "partial_fill_probability": 0},
    )
    try:
        started = time.monotonic()
        up.wait_up()
        print(f"up --bot freqtrade: banner after {time.monotonic() - started:.1f} s")
        yield Stack(up)
    finally:
        up.close()


def test_the_banner_names_freqtrade_its_sidecar_and_the_faults_to_try(stack: Stack) -> None:
    out = stack.up.output
    assert set(stack.up.pids()) == CHILDREN, out
    assert f"freqtrade     {stack.up.url('freqtrade')}" in out and f"sidecar       {stack.up.url('bot')}" in out
    assert stack.banner_command("inject a fault: ")[-2:] == ["gateway-chaos", "drop_connection"]
    for prefix in ("rate limited:   ", "freqtrade hung: ", "venue outage:   "):
        assert stack.banner_command(prefix), prefix
    # The `freqtrade hung` line's pid is what stackctl says freqtrade runs as.
    hung = stack.up.wait_line(lambda text: text.startswith("freqtrade hung: "))
    found = re.search(r"kill -STOP \$\((.+?)\)  \(", hung)
    assert found is not None, hung
    pid = subprocess.run(
        shlex.split(found.group(1)), capture_output=True, text=True, timeout=60, check=True, cwd=stack.up.root
    )
    assert int(pid.stdout) == stack.up.pids()["freqtrade"]
    # freqtrade's generated config: the gateway through exchange.ccxt_config, no secret in it.
    config = json.loads((stack.up.state_dir / "freqtrade" / "config.json").read_text())
    gateway = stack.up.url("gateway")
    assert config["exchange"]["ccxt_config"]["urls"] == {"api": {"public": gateway, "private": gateway}}
    assert config["exchange"]["ccxt_config"]["rateLimit"] == 50 and "key" not in config["exchange"]
    assert "password" not in config["api_server"]


def test_prometheus_scrapes_the_sidecar_in_the_freqtrade_job_and_nothing_is_missing(stack: Stack) -> None:
    until(
        "Prometheus sees freqtrade up through its sidecar",
        lambda: stack.query(f'tradingbot_freqtrade_up{{job="freqtrade",instance="{stack.instance}"}} == 1'),
        DEADLINE_SECONDS,
    )
    until("freqtrade holds trades", lambda: stack.freqtrade("/status"), DEADLINE_SECONDS)
    # A stack of freqtrade only: the tradingbot job has no target, and that is no TradingBotTargetsMissing (pending at
    # most for the seconds before the freqtrade job's first scrape; its fast-profile `for:` is 24 s).
    until("TradingBotTargetsMissing quiet", lambda: not stack.query('ALERTS{alertname="TradingBotTargetsMissing"}'))
    assert not stack.query('max_over_time(ALERTS{alertname="TradingBotTargetsMissing",alertstate="firing"}[10m])')


def test_the_banners_fault_is_healed_by_the_packaged_playbook(stack: Stack) -> None:
    until("Prometheus sees every channel connected", lambda: _connected(stack) == {"1"}, DEADLINE_SECONDS)
    started = stack.freqtrade("/health")["bot_startup_ts"]
    pid = stack.up.pids()["freqtrade"]
    known = {e["id"] for e in stack.episodes("TradingBotBrokerDisconnected")}
    command = stack.banner_command("inject a fault: ")
    injected = time.monotonic()
    done = subprocess.run(command, cwd=stack.up.root, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    def ended() -> list[dict[str, Any]]:
        new = [e for e in stack.episodes("TradingBotBrokerDisconnected") if e["id"] not in known]
        return new if new and all(e["state"] in ("recovered", "escalated", "failed", "resolved") for e in new) else []

    episodes = until("the TradingBotBrokerDisconnected episodes end", ended, DEADLINE_SECONDS)
    print(f"drop_connection -> every episode ended: {time.monotonic() - injected:.1f} s")
    recovered = [e for e in episodes if e["state"] == "recovered" and e["attempts"]]  # the one that acted
    assert recovered and not [e for e in episodes if e["state"] in ("escalated", "failed")], episodes
    episode = recovered[0]
    assert episode["labels"]["instance"] == stack.instance and episode["labels"]["job"] == "freqtrade"
    assert episode["attempts"][-1]["outcome"] == "success", episode
    # The reconnect rebuilt freqtrade's exchange connection in place (reload_config: a new start of the same process).
    assert stack.freqtrade("/health")["bot_startup_ts"] != started and stack.up.pids()["freqtrade"] == pid
    assert stack.freqtrade("/show_config")["state"] == "running"


def test_ctrl_c_stops_every_child_freqtrade_included(stack: Stack) -> None:
    pids = stack.up.pids()
    assert stack.up.stop(signal.SIGINT) == 0, stack.up.output
    assert not [name for name, pid in pids.items() if alive(pid)], stack.up.output
    assert "freqtrade (pid" in stack.up.output


def _connected(stack: Stack) -> set[str]:
    return {r["value"][1] for r in stack.query(f'tradingbot_broker_connected{{instance="{stack.instance}"}}')}
