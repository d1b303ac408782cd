"""The README's five-minute tour, followed as a new user follows it, twice on one stack: a checkout as `make run`
leaves it (the example configuration copied as it is, the tokens `make run` writes, `up` from the checkout with its
default state directory; only the ports are the test's), then each fault the README's tour names, in its order, with
the commands it prints, and each promise the README makes of it checked: the action it says heals the fault, no page
where it says none, and the time it states (the README's figure x 2: the pipeline's own time, from the fault injected
to the episode closed in the reconciler's ledger).

The loss limit is a limit for the day: the first round breaches it (the bot halts, the reconciler cancels and
flattens, a human is paged); the second round runs every other fault on the bot that stays halted for the rest of
the day, as the README promises ("nothing automatic lifts a breached loss limit"), and its loss step checks that:
the operator's `clear_halt` and `resume` do not let the bot add risk while the day's loss is past the limit.

Needs the real servers prometheus and prometheus-alertmanager (Debian packages `prometheus`,
`prometheus-alertmanager`).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from decision_helpers import clear_halt, signer_of
from make_run_checkout import make_checkout
from polling import until
from system_binaries import REPO_ROOT, require_binary
from up_process import UpProcess, alive
from up_stack import (
    PaperStack,
    approve_token_file,
    back_to_normal,
    bot_pid,
    fired,
    heal_by_the_bots_own_stream,
    new_episodes,
    pages,
    settled,
)

# A round runs every fault of the tour and waits for each to heal, the loss limit for its approval too: more than the
# default 300 s of one test on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager, pytest.mark.timeout(900)]

README = " ".join((REPO_ROOT / "README.md").read_text(encoding="utf-8").split())  # its lines joined
# What the README promises of each fault of its tour, quoted: the test fails when the README stops saying it (then
# this test and the README are brought back in line), so the two cannot drift apart.
PROMISES = {
    "drop_connection": "About ten seconds later the status line shows the alert and the reconciler's verified action",
    "stale_market_data": (
        "`chaos stale_market_data symbol=ETH-USD` (the bot's stream finds the pair's ticker silent and subscribes "
        "again by itself within seconds, before any alert)"
    ),
    "crash": "`chaos crash` (the service manager restarts the bot; the reconciler has nothing to do)",
    "fill_disk": "`chaos fill_disk` (the playbook runs `trading-ops upkeep cleanup`)",
    "loss_spike": (
        "`chaos loss_spike` (the bot halts itself, the reconciler asks for approval, then cancels its orders and "
        "flattens it, and a human is paged: nothing automatic lifts a breached loss limit)"
    ),
}
# The README's figure for the drop ("about ten seconds": the fast profile's 6 s `for:` on a disconnect), x 2.
DROP_SECONDS = 2 * 10.0
# The critical resource alerts wait `for: 1m` in the fast profile after the fault crosses the budget.
DISK_DEADLINE_SECONDS = 180.0


class Tour(PaperStack):
    """The stack the tour runs on, driven with the README's own commands (`trading-ops --config
    var/stack/trading-ops.yaml chaos ...`, `reconciler history`) from the checkout."""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "trading_ops", "--config", "var/stack/trading-ops.yaml", *args]
        return subprocess.run(argv, cwd=self.up.root, capture_output=True, text=True, timeout=120, check=False)

    def chaos(self, fault: str, *params: str) -> dict[str, Any]:
        done = self.cli("chaos", fault, *params, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    def known(self) -> set[int]:
        return {e["id"] for e in self.episodes()}


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tour]:
    require_binary("prometheus")
    root = make_checkout(tmp_path_factory.mktemp("tour"))
    up = UpProcess(root, checkout=True)
    try:
        up.wait_up()
        tour = Tour(up, "paper")
        until("Watchdog in Alertmanager", lambda: tour.alertmanager_alerts("Watchdog"))
        yield tour
        pids = up.pids()
        assert up.stop(signal.SIGINT) == 0, up.output
        assert not any(alive(pid) for pid in pids.values())
    finally:
        up.close()


def closed_episodes(tour: Tour, known: set[int], alertname: str, deadline: float) -> list[dict[str, Any]]:
    """`settled`, and when the episodes do not close in time, what they are doing instead."""
    try:
        return settled(tour, known, alertname, deadline=deadline)
    except AssertionError as exc:
        shown = [
            (e["id"], e["state"], e.get("rule"), e.get("detail"), [steps_of(e)])
            for e in new_episodes(tour, known, alertname)
        ]
        raise AssertionError(f"{exc}: {shown}") from None


def seconds_to_close(episode: dict[str, Any], injected: float) -> float:
    return datetime.fromisoformat(episode["closed_at"]).timestamp() - injected


def steps_of(episode: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["description"].split(" description=")[0], s["outcome"]) for a in episode["attempts"] for s in a["steps"]]


def test_the_readme_still_makes_the_promises_this_test_checks() -> None:
    for fault, promise in PROMISES.items():
        assert promise in README, f"the README no longer says, of {fault}: {promise}"
    assert "chaos drop_connection" in README


def drop_connection(tour: Tour, halted: bool) -> None:
    known = tour.known()
    injected = time.time()
    tour.chaos("drop_connection")
    until("TradingBotBrokerDisconnected fired", lambda: fired(tour, "TradingBotBrokerDisconnected"), deadline=60)
    episodes = closed_episodes(tour, known, "TradingBotBrokerDisconnected", 60)
    recovered = [e for e in episodes if e["state"] == "recovered"]
    assert recovered, episodes
    assert all(e["rule"] == "broker-reconnect" for e in recovered), episodes
    # The episode that acted; another channel's, healed by that reconnect before it acted, is recovered with none.
    acted = [e for e in recovered if e["attempts"]]
    assert [steps_of(e) for e in acted] == [[("bot command=reconnect", "success")]], episodes
    took = max(seconds_to_close(e, injected) for e in recovered)
    assert took <= DROP_SECONDS, f"the drop took {took:.1f} s to a verified reconnect (README: about 10 s)"
    # The status line shows the verified action, as the README's step 4 shows it.
    tour.up.wait_line(lambda line: "last action: bot command=reconnect -> success" in line, timeout=30)
    history = tour.cli("reconciler", "history")
    assert history.returncode == 0 and "recovered" in history.stdout, history.stdout + history.stderr
    one = tour.cli("reconciler", "history", str(recovered[0]["id"]))
    assert one.returncode == 0 and "reconnect" in one.stdout, one.stdout + one.stderr
    back_to_normal_in(tour, halted)


def stale_market_data(tour: Tour, halted: bool) -> None:
    heal_by_the_bots_own_stream(tour, tour.known(), ("ticker",))
    back_to_normal_in(tour, halted)


def crash(tour: Tour, halted: bool) -> None:
    known = tour.known()
    before = bot_pid(tour)
    tour.chaos("crash")
    until("a new bot process", lambda: tour.up.healthy("paper-bot") and bot_pid(tour) != before, deadline=120)
    back_to_normal_in(tour, halted)
    # The reconciler had nothing to do: a TradingBotDown that fired while the bot restarted (the fast profile's
    # `for:` is 2 s) was resolved by the restart, with no step run and nothing escalated.
    down = new_episodes(tour, known, "TradingBotDown")
    assert all(not any(a["steps"] for a in e["attempts"]) for e in down), down
    assert not pages(tour, "TradingOpsRemediationFailed", "TradingBotDown")


def fill_disk(tour: Tour, halted: bool) -> None:
    known = tour.known()
    answer = tour.chaos("fill_disk")
    scratch = Path(answer["path"])
    (episode,) = closed_episodes(tour, known, "TradingBotDiskAlmostFull", DISK_DEADLINE_SECONDS)
    assert episode["state"] == "recovered" and episode["rule"] == "disk-cleanup", episode
    ((description, outcome),) = steps_of(episode)
    assert description.startswith("exec") and "upkeep" in description and outcome == "success", episode
    assert scratch.is_dir() and list(scratch.iterdir()) == []
    tour.chaos("clear_chaos")
    back_to_normal_in(tour, halted)


def loss_spike(tour: Tour) -> None:
    known = tour.known()

    def spike_taken() -> subprocess.CompletedProcess[str] | None:
        """The spike, or None while the bot refuses it as a person would read (its book cannot yet lose enough in one
        gap to pass the limit clearly: it grows as the demo strategy trades), and tries again."""
        answer = tour.cli("chaos", "loss_spike", "--json")
        if answer.returncode == 2 and "not enough to pass the daily loss limit" in answer.stderr:
            return None
        return answer

    spike = until("a book big enough to pass the daily loss limit in one gap", spike_taken, 90, interval=2)
    assert spike.returncode == 0, spike.stdout + spike.stderr
    until("halted by its risk limit", lambda: tour.control("status")["state"] == "halted", deadline=30)
    # The demo's playbook asks before the protective steps, one decision for both: the person approves it.
    approval = until("the loss limit's approval", lambda: pending_approval(tour, 1), deadline=120)
    token = approve_token_file(tour.up.root / "var/stack/trading-ops.yaml")
    decision = ("--reason", "the tour's operator", "--as", "tour", "--token-file", token)
    approved = tour.cli("reconciler", "approve", str(approval), *decision)
    assert approved.returncode == 0, approved.stderr
    (episode,) = closed_episodes(tour, known, "TradingBotDailyLossBreached", 180)
    assert episode["state"] == "recovered" and episode["rule"] == "loss-limit-flatten", episode
    assert [d for d, _ in steps_of(episode)] == [
        "bot command=cancel_all",
        "bot command=flatten",
        "escalate alertname=TradingOpsBotFlattened",
    ], episode
    status = tour.control("status")
    assert status["state"] == "halted", status
    assert all(Decimal(q) == 0 for q in status["positions"].values()) and status["open_orders"] == 0, status
    (page,) = until("the page", lambda: pages(tour, "TradingOpsBotFlattened", "TradingBotDailyLossBreached"))
    assert page["labels"]["severity"] == "critical"


def pending_approval(tour: Tour, step: int) -> int | None:
    """The id of the pending approval of the loss limit's step `step`, as `reconciler approvals` lists it."""
    listed = tour.cli("reconciler", "approvals", "--status", "pending", "--json")
    assert listed.returncode == 0, listed.stderr
    found = [a for a in json.loads(listed.stdout)["approvals"] if a["rule"] == "loss-limit-flatten"]
    return next((int(a["id"]) for a in found if a["step"] == step), None)


def loss_limit_still_holds(tour: Tour) -> None:
    """The second round, the same day: the operators lift the halt (`clear_halt` on a signed decision, `resume`), and
    the bot, whose day's loss is still past the limit, adds no risk: for 20 loop iterations it sends no order (or,
    trying one, is refused and halts again), and its book stays flat. `chaos loss_spike` has nothing to lose on (one
    line, exit 2: the bot refused it)."""
    submitted = sum(tour.bot_metric("tradingbot_orders_submitted_total").values())
    # A loss limit's halt clears only on a decision the reconciler signed (another person approved): the control token
    # alone is refused; the decision signed with the stack's key (var/secrets, as `make run` leaves it) clears it.
    assert tour.try_control("clear_halt") is None
    key = signer_of(tour.up.root / "var" / "secrets" / "reconciler-decision-key")
    tour.control("clear_halt", clear_halt("paper-1", signer=key))
    tour.control("resume")
    time.sleep(20 * 0.5)  # 20 iterations of the demo strategy's loop (paper.loop_interval_seconds: 0.5)
    status = tour.control("status")
    if status["state"] == "halted":
        assert status["state_reason"].startswith("risk limit daily_loss"), status
    else:
        assert sum(tour.bot_metric("tradingbot_orders_submitted_total").values()) == submitted, status
    assert all(Decimal(q) == 0 for q in status["positions"].values()), status
    refused = tour.cli("chaos", "loss_spike")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "no position" in refused.stderr, refused.stderr
    tour.control("halt", {"reason": "the tour's operator: the day's loss is past its limit"})


def back_to_normal_in(tour: Tour, halted: bool) -> None:
    if halted:  # the second round: the bot stays halted for the day, healthy and quiet
        until("the bot healthy", lambda: tour.up.healthy("paper-bot"), deadline=120)
        assert tour.control("status")["state"] == "halted"
    else:
        back_to_normal(tour)


@pytest.mark.parametrize("round_", [1, 2])
def test_the_readme_tour_holds_each_promise(tour: Tour, round_: int) -> None:
    halted = round_ == 2
    status = tour.control("status")  # the tour's step 2
    assert status["state"] == ("halted" if halted else "active"), status
    drop_connection(tour, halted)
    stale_market_data(tour, halted)
    crash(tour, halted)
    fill_disk(tour, halted)
    if halted:
        loss_limit_still_holds(tour)
    else:
        loss_spike(tour)
    # The reconciler's budget holds the whole tour, twice: nothing was refused for a spent budget.
    assert not re.search(r"budget .* spent", tour.up.output), tour.up.output[-3000:]
