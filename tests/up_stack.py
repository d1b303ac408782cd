"""A stack `trading-ops up` runs, as an end-to-end test talks to it: faults injected with the command its banner
prints, the alerts Prometheus and Alertmanager hold, the episodes in the reconciler's ledger; and the paper bot's stack
with its control API, and the waits of its fault scenarios (every episode closed, the bot back to normal)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from polling import until
from up_process import UpProcess

CHAOS_SECONDS = 60.0


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


class Stack:
    def __init__(self, up: UpProcess, kind: str) -> None:
        self.up = up
        self.kind = kind
        self.token = (up.secrets / "control-token").read_text().strip()
        self.read_token = (up.secrets / "reconciler-read-token").read_text().strip()
        self.instance = f"127.0.0.1:{up.ports.bot}"

    def inject(self, fault: str, **params: str) -> dict[str, Any]:
        """Inject a fault with the command `up`'s banner prints, as a user would: the paper bot's `chaos`, or the
        gateway's `gateway-chaos` for the ccxt bot, whose faults are the venue's."""
        line = self.up.wait_line(lambda text: text.startswith("inject a fault: "))
        command = shlex.split(line.removeprefix("inject a fault: ").split("  (see")[0])[:-1]
        assert command[-1] == ("gateway-chaos" if self.kind == "ccxt-gateway" else "chaos"), line
        args = [*command, fault, *(f"{k}={v}" for k, v in params.items()), "--json"]
        done = subprocess.run(
            args, cwd=self.up.root, capture_output=True, text=True, timeout=CHAOS_SECONDS, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.up.url("prometheus", f"/api/v1/query?query={urllib.parse.quote(expr)}")
        return list(get_json(url)["data"]["result"])

    def prometheus_alerts(self, alertname: str) -> list[dict[str, Any]]:
        alerts = get_json(self.up.url("prometheus", "/api/v1/alerts"))["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname]

    def alertmanager_alerts(self, alertname: str) -> list[dict[str, Any]]:
        alerts = get_json(self.up.url("alertmanager", "/api/v2/alerts?active=true"))
        return [a for a in alerts if a["labels"]["alertname"] == alertname]

    def episodes(self) -> list[dict[str, Any]]:
        req = urllib.request.Request(
            self.up.url("reconciler", "/api/v1/episodes?limit=100"),
            headers={"Authorization": f"Bearer {self.read_token}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return list(json.loads(resp.read())["episodes"])

    def bot_metric(self, name: str) -> dict[str, float]:
        """Samples of one metric family on the bot's own /metrics: labels text -> value."""
        with urllib.request.urlopen(self.up.url("bot", "/metrics"), timeout=5) as resp:
            text = resp.read().decode()
        found = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
        return {labels: float(value) for labels, value in found}


def new_episodes(stack: Stack, known: set[int], alertname: str) -> list[dict[str, Any]]:
    return [e for e in stack.episodes() if e["id"] not in known and e["alertname"] == alertname]


def fired(stack: Stack, alertname: str, **labels: str) -> bool:
    """Prometheus's own record (the ALERTS series) that the alert was firing in the last two minutes."""
    matchers = ",".join([f'alertname="{alertname}"', 'alertstate="firing"'] + [f'{k}="{v}"' for k, v in labels.items()])
    return bool(stack.query(f"max_over_time(ALERTS{{{matchers}}}[2m])"))


def heal_by_the_bots_own_stream(stack: Stack, known: set[int], channels: tuple[str, ...]) -> None:
    """A bot that streams its market data (the paper bot its tickers, `paper.stream`; the ccxt bot its books,
    `ccxt.stream`; both on by default): `stale_market_data` silences the pair's `channel` at the venue, the bot's
    stream client finds it past its silence timeout (3 s) and subscribes again, which ends the fault at the venue,
    well before TradingBotMarketDataStale's `for:`: the reconciler has nothing to do. The fault silences every public
    channel of the pair and any of them subscribed again ends it: with several (the ccxt bot's `ticker` and `book`),
    whichever's timeout comes first is the one found silent."""
    silent = [f'{{channel="{channel}",reason="silent"}}' for channel in channels]

    def resyncs() -> float:
        found = stack.bot_metric("tradingbot_stream_resyncs_total")
        return sum(found.get(labels, 0.0) for labels in silent)

    def quiet() -> bool:
        # A market data alert of an earlier fault (a dropped connection's) may still bring a resubscribe of every
        # symbol from the reconciler, which would end this fault before the bot notices it: wait until none is left.
        ended = ("recovered", "escalated", "failed", "resolved", "skipped")
        return not stack.prometheus_alerts("TradingBotMarketDataStale") and all(
            e["state"] in ended for e in stack.episodes() if e["alertname"] == "TradingBotMarketDataStale"
        )

    until("no market data alert or episode left from before", quiet)
    known |= {e["id"] for e in stack.episodes()}
    before = resyncs()
    what = f"the bot's {' or '.join(channels)} stream found the pair silent and subscribed again"
    # A resubscribe that an earlier fault's episode sent as it ended lands its new subscriptions a moment later, and a
    # new subscription to the pair ends the fault at the venue before the bot can find the pair silent (seen: the
    # fault injected 0.6 s after the reconciler's resubscribe, ended 34 ms later by its subscriptions). So the fault
    # is injected again while no silent resync has come within a few silence timeouts of it: the bot's finding it is
    # what is tested, not which subscription came first.
    for attempt in range(1, 4):
        assert stack.inject("stale_market_data", symbol="ETH-USD")["symbol"] == "ETH-USD"
        try:
            until(f"{what} (injection {attempt})", lambda: resyncs() > before, deadline=30)
            break
        except AssertionError:
            if attempt == 3:
                raise
    query = f'instance_venue_symbol:tradingbot_market_data_last_update:age_seconds{{instance="{stack.instance}"}}'
    until(
        "every symbol's quotes fresh again",
        lambda: (
            {a["metric"]["symbol"] for a in stack.query(query) if float(a["value"][1]) < 10}
            == {"BTC-USD", "ETH-USD", "SOL-USD"}
        ),
    )
    assert new_episodes(stack, known, "TradingBotMarketDataStale") == []


class PaperStack(Stack):
    """The paper bot's stack, with its control API at hand."""

    def control(self, command: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            self.up.url("bot", f"/control/{command}"),
            data=json.dumps(body or {}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def try_control(self, command: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """A command's answer, or None when the bot refuses it (4xx)."""
        try:
            return self.control(command, body)
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500:
                return None
            raise

    def metric(self, name: str, role: str = "bot") -> dict[str, float]:
        """Samples of one metric family on the bot's own /metrics (or the reconciler's): labels text -> value."""
        with urllib.request.urlopen(self.up.url(role, "/metrics"), timeout=5) as resp:
            text = resp.read().decode()
        found = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
        return {labels: float(value) for labels, value in found}

    def value(self, expr: str) -> float:
        """The single value of an instant query (it must return exactly one series)."""
        (series,) = self.query(expr)
        return float(series["value"][1])

    def alertmanager_alerts_all(self) -> list[dict[str, Any]]:
        return list(get_json(self.up.url("alertmanager", "/api/v2/alerts?active=true&silenced=false")))


def bot_pid(stack: PaperStack) -> int:
    return int(stack.control("status")["pid"])


def pages(stack: PaperStack, alertname: str, original: str) -> list[dict[str, Any]]:
    """What the reconciler posted to Alertmanager about `original` on this bot."""
    return [
        a
        for a in stack.alertmanager_alerts(alertname)
        if a["labels"].get("original_alertname") == original and a["labels"].get("instance") == stack.instance
    ]


def approve_token_file(config: Path) -> str:
    """The person's own token a stack's `reconciler approve` decides with: the generated configuration's token of
    the approve scope (reconciler.api_tokens; `make run` writes it)."""
    import yaml

    data = yaml.safe_load(config.read_text())
    tokens = data["reconciler"]["api_tokens"]
    return str(next(t["token_file"] for t in tokens if t.get("scope") == "approve"))


def approve(stack: Stack, rule: str, who: str) -> int:
    """A person approves the pending approval of `rule` (`reconciler approvals`, then `reconciler approve`, as the
    demo's banner says): its id, once one waits and the decision is taken."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "trading_ops", "--config", str(stack.up.state_dir / "trading-ops.yaml"), *args]
        return subprocess.run(argv, cwd=stack.up.root, capture_output=True, text=True, timeout=120, check=False)

    def waiting() -> int | None:
        listed = cli("reconciler", "approvals", "--status", "pending", "--json")
        assert listed.returncode == 0, listed.stderr
        return next((int(a["id"]) for a in json.loads(listed.stdout)["approvals"] if a["rule"] == rule), None)

    approval = until(f"an approval of {rule} waiting", waiting, deadline=120)
    token = approve_token_file(stack.up.state_dir / "trading-ops.yaml")
    approved = cli(
        "reconciler", "approve", str(approval), "--reason", "the test's operator", "--as", who, "--token-file", token
    )
    assert approved.returncode == 0, approved.stderr
    return approval


def settled(stack: PaperStack, known: set[int], alertname: str, deadline: float = 180) -> list[dict[str, Any]]:
    """The new episodes of `alertname` once every one of them is closed."""

    def closed() -> list[dict[str, Any]] | None:
        try:
            episodes = new_episodes(stack, known, alertname)
        except OSError:  # the reconciler restarting (a scenario kills it): ask again
            return None
        return episodes if episodes and all(e["closed_at"] for e in episodes) else None

    return until(f"every {alertname} episode closed", closed, deadline=deadline)


def back_to_normal(stack: PaperStack, *lingering: str) -> None:
    """The bot answers, trades (state active), and nothing about it fires any more (but the `lingering` alerts,
    whose windows still hold the fault: a 5-minute ratio stays high for minutes after its cause is gone)."""
    until("the bot healthy", lambda: stack.up.healthy("paper-bot"), deadline=120)
    until("the bot active", lambda: stack.control("status")["state"] == "active", deadline=60)
    firing: list[str] = []

    def quiet() -> bool:
        firing[:] = [
            a["labels"]["alertname"]
            for a in stack.alertmanager_alerts_all()
            if a["labels"].get("instance") == stack.instance and a["labels"]["alertname"] not in lingering
        ]
        return not firing

    try:
        until("no bot alert firing", quiet, deadline=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still firing: {firing}") from None
