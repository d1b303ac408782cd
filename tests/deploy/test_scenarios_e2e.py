"""Every fault scenario of the paper bot, end to end through the local stack: a fault injected through the bot's
control API fires its alert in Prometheus, Alertmanager routes it, and the episode ends in a verified recovery (by
the unit's own restart, as systemd does it, or by the packaged playbook) or in exactly the page the playbook
prescribes. Each test leaves the stack clean for the next (faults cleared, alerts resolved, the bot active); the
reject storm runs next to last (its page and its 5-minute ratio linger in Alertmanager), the loss limit last, as it
halts (and flattens) the bot for the day.

Needs the real servers prometheus and prometheus-alertmanager (Debian packages `prometheus`,
`prometheus-alertmanager`); `trading-ops up` starts them with the paper bot and the reconciler, once for this module,
on free loopback ports, fast profile.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from polling import until
from system_binaries import require_binary
from up_process import UpProcess, alive
from up_stack import PaperStack, approve, back_to_normal, bot_pid, fired, get_json, new_episodes, pages, settled

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

# The critical resource alerts wait `for: 5m` (1 minute in the fast profile) after the fault crosses the budget.
RESOURCE_DEADLINE_SECONDS = 180.0
# leak_memory and fill_disk at this rate instead of their defaults (10 and 20 MiB/s): the budget is crossed within
# seconds, and the alert's `for:` is what the test waits for, not the fault's growth. Each test still asserts that the
# default size crosses the budget.
FAST_MIB_PER_SECOND = 100
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaperStack]:
    require_binary("prometheus")
    up = UpProcess(tmp_path_factory.mktemp("scenarios"))
    try:
        up.wait_up()
        stack = PaperStack(up, "paper")
        until("Watchdog in Alertmanager", lambda: stack.alertmanager_alerts("Watchdog"))
        yield stack
        pids = up.pids()
        assert up.stop(signal.SIGINT) == 0, up.output
        assert not any(alive(pid) for pid in pids.values())
    finally:
        up.close()


@pytest.fixture(autouse=True)
def stack_output(stack: PaperStack) -> Iterator[None]:
    """What the stack printed during the test: pytest shows it only when the test fails, which is when it tells
    what the units did (restarts, kills, start timeouts) and the assertion cannot."""
    start = len(stack.up.lines)
    yield
    print("\n".join(stack.up.lines[start:][-120:]))


def stack_episode(stack: PaperStack, episode_id: int) -> dict[str, Any]:
    return next(e for e in stack.episodes() if e["id"] == episode_id)


def stackctl(stack: PaperStack, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trading_ops", "stackctl", "--state-dir", str(stack.up.state_dir), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def unit_state(stack: PaperStack) -> dict[str, str]:
    shown = stackctl(stack, "--timestamp=unix", "show", "trading-ops-paper-bot.service")
    assert shown.returncode == 0, shown.stderr
    return dict(line.split("=", 1) for line in shown.stdout.splitlines())


def test_a_start_fires_no_spurious_bot_down(stack: PaperStack) -> None:
    # Prometheus starts last, once the bot is healthy: it never scraped a bot that was not up yet.
    assert not fired(stack, "TradingBotDown")
    assert stack.query('up{job="tradingbot"} == 1')


def test_a_crashed_bot_is_restarted_as_systemd_would_and_nothing_pages(stack: PaperStack) -> None:
    known = {e["id"] for e in stack.episodes()}
    before = bot_pid(stack)
    stack.control("crash")
    until("a new bot process", lambda: stack.up.healthy("paper-bot") and bot_pid(stack) != before, deadline=120)
    # /healthz answers from the moment the bot's HTTP server is up; the unit turns active only at READY=1, after the
    # startup reconciliation (as systemd's Type=notify): the bot may be healthy and its unit still activating.
    until("the unit active", lambda: unit_state(stack)["ActiveState"] == "active", deadline=120)
    assert re.search(r"trading-ops-paper-bot.service: paper-bot \(pid \d+\) killed by SIGKILL", stack.up.output)
    back_to_normal(stack)
    for episode in new_episodes(stack, known, "TradingBotDown"):  # if it fired at all while the bot restarted
        until(f"episode {episode['id']} closed", lambda e=episode: stack_episode(stack, e["id"])["closed_at"])
        assert stack_episode(stack, episode["id"])["state"] in ("resolved", "recovered")
    assert not pages(stack, "TradingOpsRemediationFailed", "TradingBotDown")


def test_a_hung_loop_is_restarted_and_verified(stack: PaperStack) -> None:
    known = {e["id"] for e in stack.episodes()}
    before = bot_pid(stack)
    stack.control("hang_loop", {"seconds": 600})
    until("TradingBotHeartbeatStale fired", lambda: fired(stack, "TradingBotHeartbeatStale", instance=stack.instance))
    until("a new bot process", lambda: stack.up.healthy("paper-bot") and bot_pid(stack) != before, deadline=120)
    episodes = settled(stack, known, "TradingBotHeartbeatStale")
    # The unit's watchdog (SIGABRT once the pings stop) or the playbook's bot-loop-restart: either way one restart,
    # verified by Prometheus seeing the heartbeat fresh again, and no page.
    assert {e["state"] for e in episodes} <= {"resolved", "recovered"}, episodes
    back_to_normal(stack)
    assert not pages(stack, "TradingOpsRemediationFailed", "TradingBotHeartbeatStale")


def test_a_stopped_bot_is_restarted_by_the_playbook_even_with_the_reconciler_killed_mid_step(
    stack: PaperStack,
) -> None:
    """Nothing restarts a unit someone stopped: TradingBotDown fires and the packaged bot-restart rule's systemd step
    restarts it through `trading-ops stackctl`, as it restarts the unit through systemctl in production. The
    reconciler is killed (-9) while that step runs: `up` restarts the reconciler as systemd would, the interrupted
    episode runs again, finds the unit already restarting or restarted after the alert began, leaves it, and verifies
    (or, when the bot was back and the alert resolved before the replacement took the episode up, is closed resolved
    without acting). The bot was restarted once, and nothing acknowledged was lost."""
    known = {e["id"] for e in stack.episodes()}
    asked = "--- stackctl restart trading-ops-paper-bot.service"
    restarts = stack.up.lines.count(asked)
    assert stackctl(stack, "stop", "trading-ops-paper-bot.service").returncode == 0
    assert unit_state(stack)["ActiveState"] == "inactive"
    stack.up.wait_line(lambda line: line == asked and stack.up.lines.count(asked) > restarts, timeout=120)
    os.kill(stack.up.pids()["reconciler"], signal.SIGKILL)
    stack.up.wait_line(lambda line: "trading-ops-reconciler.service: restarted" in line, timeout=60)
    # One episode, or more if the alert flapped while the bot came back: none escalated, and the one the kill
    # interrupted ran again and ended recovered, or was over before it could.
    episodes = settled(stack, known, "TradingBotDown")
    assert {e["state"] for e in episodes} <= {"recovered", "resolved"}, episodes
    # The one whose run the kill interrupted. Its step was running when the reconciler died (its outcome unknown:
    # the rule's on_unknown retries it, the systemd step leaving a unit restarted after the alert began), or had
    # just ended (its success recorded: the next run verifies only, in the same attempt).
    (episode,) = [e for e in episodes if any(a["steps"] for a in e["attempts"])]
    shown = (
        episode["state"],
        episode["detail"],
        [(a["outcome"], a["detail"], a["started_at"], a["finished_at"]) for a in episode["attempts"]],
    )
    assert episode["rule"] == "bot-restart", shown
    if episode["state"] == "resolved":
        # The restart the killed run asked for went on without it: the bot came back and the alert resolved before
        # the replacement reconciler took the episode up (a slow machine), which closes it without acting again.
        # ("resolved; pending work cancelled" by the intake, "resolved before the run" by the engine; never a
        # verification that said resolved while Prometheus still saw it failing)
        assert episode["detail"].startswith("resolved"), shown
        # The killed run's attempt (its step unknown, or a success) and at most the one that found the alert
        # resolved before running anything: no step ran twice.
        assert episode["attempts"][0]["outcome"] in ("unknown", "success", "resolved"), shown
        assert all(not a["steps"] for a in episode["attempts"][1:]) and len(episode["attempts"]) <= 2, shown
    else:
        assert episode["state"] == "recovered", shown
        final = episode["attempts"][-1]["steps"]
        assert [(s["action"], s["outcome"]) for s in final] == [("systemd", "success")], final
    assert stack.up.lines.count(asked) == restarts + 1  # the bot was restarted once
    back_to_normal(stack)


def test_position_drift_is_found_and_adopted_by_the_scheduled_reconciliation(stack: PaperStack) -> None:
    found = sum(stack.bot_metric("tradingbot_reconciliation_discrepancies_total").values())
    drift = stack.control("position_drift", {"symbol": "SOL-USD", "quantity": 0.5})
    assert drift["heal"] == "the bot's own reconciliation"  # not the reconciler's `reconcile`: no alert is needed
    until(
        "the drift adopted",
        lambda: sum(stack.bot_metric("tradingbot_reconciliation_discrepancies_total").values()) > found,
        deadline=60,
    )
    missing = {
        k: v
        for k, v in stack.bot_metric("tradingbot_reconciliation_discrepancies_total").items()
        if "missing_fill" in k
    }
    assert missing and sum(missing.values()) >= 1
    last = stack.control("reconcile")  # the venue and the journal agree now
    assert last["clean"] is True, last
    assert not fired(stack, "TradingBotPositionMismatch", instance=stack.instance)
    back_to_normal(stack)


def test_a_journal_stall_is_restarted_and_verified(stack: PaperStack) -> None:
    known = {e["id"] for e in stack.episodes()}
    before = bot_pid(stack)
    stack.control("stall_journal", {"seconds": 600})
    until("TradingBotHeartbeatStale fired", lambda: fired(stack, "TradingBotHeartbeatStale", instance=stack.instance))
    until("a new bot process", lambda: stack.up.healthy("paper-bot") and bot_pid(stack) != before, deadline=120)
    episodes = settled(stack, known, "TradingBotHeartbeatStale")
    assert {e["state"] for e in episodes} <= {"resolved", "recovered"}, episodes
    back_to_normal(stack)


def test_fill_disk_past_the_data_dir_budget_is_healed_by_a_verified_cleanup(stack: PaperStack) -> None:
    """fill_disk with its default size, written faster than its default rate (FAST_MIB_PER_SECOND), takes the data
    directory past the budget `up` gives it (the filesystem has room to spare); TradingBotDiskAlmostFull pages, the
    playbook's disk-cleanup rule runs `trading-ops upkeep cleanup`, which empties the scratch directory, and the
    episode ends `recovered`, verified by the alert's own expression."""
    known = {e["id"] for e in stack.episodes()}
    (budget,) = stack.metric("tradingbot_data_dir_budget_bytes").values()
    freed_before = stack.metric("tradingops_cleanup_deleted_bytes_total", "reconciler").get('{directory="scratch"}', 0)
    answer = stack.control("fill_disk", {"mib_per_second": FAST_MIB_PER_SECOND})  # the default size
    scratch = Path(answer["path"])
    assert answer["max_mib"] * MIB > budget
    recovered = until(
        "an episode of TradingBotDiskAlmostFull recovered",
        lambda: [e for e in new_episodes(stack, known, "TradingBotDiskAlmostFull") if e["state"] == "recovered"],
        RESOURCE_DEADLINE_SECONDS,
    )[0]
    assert recovered["labels"]["severity"] == "critical" and recovered["rule"] == "disk-cleanup"
    (step,) = [s for a in recovered["attempts"] for s in a["steps"]]
    assert step["action"] == "exec" and "upkeep" in step["description"] and step["outcome"] == "success"
    # It fired on the budget: the data directory passed 95 % of it while its filesystem had room to spare.
    selector = f'{{instance="{stack.instance}"}}'
    assert stack.value(f"max_over_time(tradingbot_data_dir_bytes{selector}[5m])") > 0.95 * budget
    assert stack.value(f"min_over_time(tradingbot_disk_free_bytes{selector}[5m])") > 2 * answer["max_mib"] * MIB
    # The cleanup emptied the scratch directory (never the bot's other files), and counted what it freed.
    assert scratch.is_dir() and list(scratch.iterdir()) == []
    freed = stack.metric("tradingops_cleanup_deleted_bytes_total", "reconciler")['{directory="scratch"}']
    assert freed - freed_before >= answer["max_mib"] * MIB
    stack.control("clear_chaos")
    back_to_normal(stack)


def test_a_memory_leak_past_the_budget_is_restarted_and_verified(stack: PaperStack) -> None:
    """leak_memory with its default size, leaked faster than its default rate (FAST_MIB_PER_SECOND), takes the bot
    past 80 % of the memory budget `up` gives it, far below the machine's memory: TradingBotMemoryFillingUp fires at
    its critical tier, the playbook's memory-leak-restart rule sets the bot reduce_only and restarts its unit (through
    stackctl, as through systemctl in production), and the restarted bot's memory is back: verified, recovered."""
    known = {e["id"] for e in stack.episodes()}
    (budget,) = stack.metric("tradingbot_memory_budget_bytes").values()
    before = bot_pid(stack)
    answer = stack.control("leak_memory", {"mib_per_second": FAST_MIB_PER_SECOND})  # the default size
    assert answer["max_mib"] * MIB > budget
    (episode,) = settled(stack, known, "TradingBotMemoryFillingUp", RESOURCE_DEADLINE_SECONDS + 120)
    assert episode["state"] == "recovered" and episode["rule"] == "memory-leak-restart", episode
    assert episode["labels"]["severity"] == "critical"
    steps = [(s["action"], s["outcome"]) for a in episode["attempts"] for s in a["steps"]]
    assert steps == [("bot", "success"), ("silence", "success"), ("systemd", "success")], steps
    assert bot_pid(stack) != before
    # The restart's own down does not page: the reconciler silenced this bot's TradingBotDown before restarting it.
    silences = get_json(stack.up.url("alertmanager", "/api/v2/silences"))
    ours = [
        x
        for x in silences
        if x["createdBy"] == "trading-ops-reconciler"
        and {m["name"]: m["value"] for m in x["matchers"]}
        == {"alertname": "TradingBotDown", "instance": stack.instance}
    ]
    assert ours and "memory-leak-restart" in ours[-1]["comment"], silences
    # On the budget: more than 80 % of it, less than half of the machine (or cgroup) limit.
    selector = f'{{job="tradingbot", instance="{stack.instance}"}}'
    assert stack.value(f"max_over_time(process_resident_memory_bytes{selector}[10m])") > 0.8 * budget
    back_to_normal(stack)


def test_a_reject_storm_pauses_the_bot_and_tells_people(stack: PaperStack) -> None:
    known = {e["id"] for e in stack.episodes()}
    stack.control("reject_storm", {"seconds": 600})
    (episode,) = settled(stack, known, "TradingBotOrderRejectRatioHigh")
    assert episode["state"] == "recovered" and episode["rule"] == "reject-storm-pause", episode
    assert stack.control("status")["state"] == "paused"
    (page,) = until(
        "TradingOpsBotPaused", lambda: pages(stack, "TradingOpsBotPaused", "TradingBotOrderRejectRatioHigh")
    )
    assert page["labels"]["severity"] == "warning"
    stack.control("clear_chaos")
    stack.control("resume")  # a human's decision, never the reconciler's
    # The page stays in Alertmanager until its resolve_timeout (posted once), the ratio until its window moves on.
    back_to_normal(stack, "TradingBotOrderRejectRatioHigh", "TradingOpsBotPaused")
    # The ratio's window still holds the storm: the rule's cooldown keeps it from pausing the resumed bot again.
    assert len(new_episodes(stack, known, "TradingBotOrderRejectRatioHigh")) == 1


def test_a_breached_loss_limit_halts_flattens_verifies_flat_and_pages_what_was_done(stack: PaperStack) -> None:
    """Last: the day's loss stays past the limit (`chaos loss_spike` with its default amount). The bot halts itself at
    once (in-process risk limit); the alert fires; the playbook's loss-limit-flatten cancels its orders and flattens
    it (a halted bot accepts both: halted means no new risk), Prometheus verifies it flat, and the page Alertmanager
    receives says what was done. The bot stays halted: nothing resumes it."""
    known = {e["id"] for e in stack.episodes()}
    spike = until("a loss spike the book can take", lambda: stack.try_control("loss_spike"), deadline=60)
    assert float(spike["expected_loss"]) >= 2500
    until("halted by its risk limit", lambda: stack.control("status")["state"] == "halted", deadline=30)
    # The demo's playbook (the fast profile's) asks before the protective steps: one decision covers both.
    approve(stack, "loss-limit-flatten", "scenarios")
    (episode,) = settled(stack, known, "TradingBotDailyLossBreached")
    assert episode["state"] == "recovered" and episode["rule"] == "loss-limit-flatten", episode
    steps = [(s["description"], s["outcome"]) for a in episode["attempts"] for s in a["steps"]]
    assert [d.split(" description=")[0] for d, _ in steps] == [
        "bot command=cancel_all",
        "bot command=flatten",
        "escalate alertname=TradingOpsBotFlattened",
    ], steps
    assert all(outcome == "success" for _, outcome in steps), steps
    # The book is flat, on the bot and in Prometheus, no order works, and the halt stays.
    status = stack.control("status")
    assert status["state"] == "halted" and status["state_reason"].startswith("risk limit daily_loss"), status
    assert all(Decimal(q) == 0 for q in status["positions"].values()) and status["open_orders"] == 0, status
    assert stack.value(f'sum(abs(tradingbot_position_quantity{{instance="{stack.instance}"}}))') == 0
    # The page as Alertmanager received it: what happened, on which bot; no failure page.
    (page,) = until("the page", lambda: pages(stack, "TradingOpsBotFlattened", "TradingBotDailyLossBreached"))
    assert page["labels"]["severity"] == "critical"
    assert page["annotations"]["description"].startswith(
        f"Loss limit breached on {stack.instance}: halted, orders cancelled, flattened (verified: no position"
    ), page
    assert not pages(stack, "TradingOpsRemediationFailed", "TradingBotDailyLossBreached")
