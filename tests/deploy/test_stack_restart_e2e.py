"""At 3 a.m., as the issue ran it: the whole local stack (`trading-ops up` in a checkout as `make run` leaves it, with
its own Prometheus and Alertmanager), a loss spike, the flatten approved through the reconciler's approvals API,
`clear_halt` and `resume` (what docs/reconciler.md says a person does), then the whole stack stopped (`kill -INT` of
`up`) and started again on the same ports, twice. Before each stop a position comes back (a fill at the venue nobody
asked for, which the bot's reconciliation adopts), so each restarted stack inherits a position nobody handles while the
day's loss is past its limit.

After each restart the test counts, from the bot's journal, the orders that added risk (goal 0: the order gate knows
the day's loss before the first step), and waits for a person to be asked to flatten the inherited position (by
TradingBotUnhandledExposure, or the loss alert's recovered episode reopened), within the alert's time. It prints the
timings.

Needs the real servers prometheus and prometheus-alertmanager (Debian packages `prometheus`,
`prometheus-alertmanager`); `up` starts them with the paper bot and the reconciler, on free loopback ports, fast
profile.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from decision_helpers import clear_halt, signer_of
from make_run_checkout import make_checkout
from polling import until
from system_binaries import require_binary
from up_process import UpProcess, alive
from up_stack import PaperStack, settled

from trading_ops.stack.layout import Ports

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager, pytest.mark.timeout(1200)]

# Trading steps a restarted bot runs before its orders are counted (paper.loop_interval_seconds: 0.5 in the stack).
STEPS = 20
# The rules whose approval flattens the inherited position: the exposure alert's, or the loss alert's reopened.
FLATTENS = ("unhandled-exposure-flatten", "loss-limit-flatten")
# TradingBotUnhandledExposure's `for: 2m` in the fast profile (the repo's / 5: 24 s), and what comes after it:
# Prometheus's evaluation, Alertmanager's group_wait, the reconciler's intake and claim. A deadline, not a goal.
ALERT_FOR_SECONDS = 24.0
ASK_DEADLINE_SECONDS = ALERT_FOR_SECONDS + 150.0
DRIFT = {"symbol": "ETH-USD", "quantity": 0.4065}


class Night(PaperStack):
    """The stack, driven as its banner says: the bot's control API, the reconciler's approvals API."""

    def api(self, path: str, token_file: str, body: dict[str, Any] | None = None) -> Any:
        token = (self.up.secrets / token_file).read_text().strip()
        req = urllib.request.Request(
            self.up.url("reconciler", path),
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def pending(self) -> list[dict[str, Any]]:
        listed = self.api("/api/v1/approvals?status=pending", "reconciler-read-token")["approvals"]
        return [a for a in listed if a["rule"] in FLATTENS]

    def approve(self, approval: dict[str, Any]) -> None:
        decided = self.api(
            f"/api/v1/approvals/{approval['id']}",
            "reconciler-approve-token",
            {"decision": "approve", "reason": "the night's operator", "by": "night"},
        )
        assert decided["status"] == "approved", decided

    def flat(self) -> bool:
        return all(Decimal(q) == 0 for q in self.control("status")["positions"].values())

    def diagnosis(self) -> str:
        exprs = (
            'ALERTS{alertname=~"TradingBotUnhandledExposure|TradingBotDailyLossBreached"}',
            "tradingbot_position_quantity != 0",
            'tradingbot_state{state="halted"}',
            "tradingops_target_open_episodes",
        )
        seen = {e: [(r["metric"], r["value"][1]) for r in self.query(e)] for e in exprs}
        episodes = [(e["id"], e["alertname"], e["state"], e.get("detail")) for e in self.episodes()[:6]]
        log = (self.up.state_dir / "logs" / "reconciler.log").read_text(errors="replace").splitlines()
        runs = [line for line in log if "episode" in line or "approval" in line][-15:]
        return f"prometheus: {seen}; episodes: {episodes}; reconciler: {runs}; stack: {self.up.output[-1500:]}"


def journal(root: Path) -> Path:
    """The paper bot's journal (SQLite, in its data dir under the checkout's var/)."""
    found = [p for p in (root / "var").rglob("*.db") if _has_orders(p)]
    assert len(found) == 1, found
    return found[0]


def _has_orders(path: Path) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return bool(db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='orders'").fetchone())


def risk_adding_orders(db_path: Path, since: datetime) -> list[tuple[str, str, str, str]]:
    """The journal's orders created since `since` that added risk: any order but one that only reduces the position
    of its symbol (the opposite side, at most the position's size) as the fills journaled before it left it."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        orders = db.execute(
            "SELECT client_order_id, symbol, side, quantity, created_at FROM orders WHERE created_at >= ? "
            "ORDER BY created_at",
            (since.replace(tzinfo=None).isoformat(sep=" "),),
        ).fetchall()
        added = []
        for client_order_id, symbol, side, quantity, created_at in orders:
            fills = db.execute(
                "SELECT side, quantity FROM fills WHERE symbol = ? AND executed_at < ?", (symbol, created_at)
            ).fetchall()
            position = sum((Decimal(str(q)) if s == "buy" else -Decimal(str(q)) for s, q in fills), Decimal(0))
            signed = Decimal(str(quantity)) if side == "buy" else -Decimal(str(quantity))
            reduces = position * signed < 0 and abs(signed) <= abs(position)
            if not reduces:
                added.append((client_order_id, symbol, side, str(quantity)))
    return added


def start(root: Path, ports: Ports | None, stacks: list[UpProcess]) -> Night:
    up = UpProcess(root, checkout=True, ports=ports)
    stacks.append(up)
    up.wait_up()
    night = Night(up, "paper")
    until("Watchdog in Alertmanager", lambda: night.alertmanager_alerts("Watchdog"))
    return night


def stop(night: Night) -> None:
    pids = night.up.pids()
    assert night.up.stop(signal.SIGINT) == 0, night.up.output[-3000:]
    assert not any(alive(pid) for pid in pids.values()), pids


def position_comes_back(night: Night) -> None:
    """A fill at the venue nobody asked for, adopted by the bot's reconciliation."""
    drift = night.control("position_drift", DRIFT)
    adopted = night.control("reconcile")
    assert any(d["key"] == drift["trade_id"] for d in adopted["discrepancies"]), adopted
    assert not night.flat()


def verified(night: Night, episode_id: int) -> dict[str, Any]:
    """The episode an approval let go, once it is closed: its flatten verified (or its alert resolved by it)."""

    def closed() -> dict[str, Any] | None:
        found = next((e for e in night.episodes() if e["id"] == episode_id), None)
        return found if found is not None and found["closed_at"] else None

    episode = until(f"episode {episode_id} closed", closed, deadline=180)
    assert episode["state"] in ("recovered", "resolved"), (episode["state"], episode.get("detail"))
    return episode


def after_restart(night: Night, ready: float, since: datetime, db_path: Path) -> dict[str, Any]:
    """The restarted bot starts halted by the day's loss; over STEPS trading steps it adds no risk; the position it
    inherited is asked about (a flatten waiting for a person), approved through the API, flattened and verified."""
    until("the bot healthy", lambda: night.up.healthy("paper-bot"), deadline=120)
    status = night.control("status")
    assert status["state"] == "halted" and status["state_reason"].startswith("risk limit daily_loss"), status
    assert not night.flat(), status  # the position it inherited
    until(
        f"{STEPS} trading steps",
        lambda: sum(night.metric("tradingbot_loop_iterations_total").values()) >= STEPS,
        deadline=120,
    )
    before_flatten = risk_adding_orders(db_path, since)
    try:
        # Within the alert's time of the stack's being up again (the steps counted above are part of it).
        left = max(1.0, ASK_DEADLINE_SECONDS - (time.monotonic() - ready))
        (asked, *_) = until("a flatten asked about", night.pending, deadline=left)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {night.diagnosis()}") from None
    asked_seconds = time.monotonic() - ready
    night.approve(asked)
    until("flat", night.flat, deadline=120)
    flattened_seconds = time.monotonic() - ready
    episode = verified(night, asked["episode_id"])
    added = risk_adding_orders(db_path, since)
    assert added == before_flatten, (before_flatten, added)  # the approved flatten only reduced
    status = night.control("status")
    assert status["state"] == "halted", status
    return {
        "risk_adding_orders": len(added),
        "risk_adding_order_ids": [a[0] for a in added],
        "asked_rule": asked["rule"],
        "asked_episode_detail": str(episode.get("detail", ""))[:60],
        "up_ready_to_asked_seconds": round(asked_seconds, 1),
        "up_ready_to_flat_seconds": round(flattened_seconds, 1),
    }


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binary("prometheus")
    return make_checkout(tmp_path_factory.mktemp("night"))


@pytest.fixture(scope="module")
def stacks() -> Iterator[list[UpProcess]]:
    """Every `up` the test started, killed with what is left of it at the end, even after a failure."""
    started: list[UpProcess] = []
    try:
        yield started
    finally:
        for up in started:
            up.close()


def test_a_breached_loss_limit_holds_across_stack_restarts_and_the_position_is_asked_about(
    checkout: Path, stacks: list[UpProcess]
) -> None:
    night = start(checkout, None, stacks)
    ports = night.up.ports
    known = {e["id"] for e in night.episodes()}
    until("a loss spike the book can take", lambda: night.try_control("loss_spike"), deadline=90)
    until("halted by its risk limit", lambda: night.control("status")["state"] == "halted", deadline=30)
    (asked, *_) = until("the loss limit's flatten asked about", night.pending, deadline=120)
    assert asked["rule"] == "loss-limit-flatten", asked
    night.approve(asked)
    (episode,) = settled(night, known, "TradingBotDailyLossBreached")
    assert episode["id"] == asked["episode_id"]
    assert episode["state"] == "recovered", episode
    # A loss limit's halt clears on a decision the stack's reconciler key signed (another person approved).
    night.control(
        "clear_halt",
        clear_halt("paper-1", signer=signer_of(night.up.root / "var" / "secrets" / "reconciler-decision-key")),
    )
    night.control("resume")
    db_path = journal(checkout)

    timings: dict[str, Any] = {}
    for restart in ("first restart", "second restart"):
        position_comes_back(night)
        stop(night)
        since = datetime.now(UTC)
        restarted = time.monotonic()
        night = start(checkout, ports, stacks)
        ready = time.monotonic()
        timings[restart] = {"up_ready_seconds": round(ready - restarted, 1)}
        timings[restart].update(after_restart(night, ready, since, db_path))
    print(json.dumps({"stack_restarts": timings, "loss_episode": episode["id"]}))
    assert [t["risk_adding_orders"] for t in timings.values()] == [0, 0], timings
    stop(night)
