"""Verification takes its expression from the playbook or from Prometheus's own rules, never from the webhook; it
queries the raw series behind a recording rule, and times its queries after the target's scrapes.

Needs the `prometheus` binary: a Prometheus with alerting and recording rules of its own, scraping itself every
second, is started here."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from alertmanager_server import Alertmanager, start_alertmanager
from fake_bot import FakeBot, bot_targets
from ports import free_port
from prometheus_server import start_prometheus
from reconciler_server import AUTH, READ_AUTH, make_config, write_playbook
from server_process import stop, wait_http
from system_binaries import PROMETHEUS_BIN
from webhook_payloads import alert, payload

from trading_ops.clients.prometheus import (
    SCRAPE_COMMIT_MARGIN_SECONDS,
    PrometheusClient,
    ScrapeSchedule,
    inline_recording_rules,
)
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.verify import next_poll, verify

pytestmark = [pytest.mark.prometheus]

# What a sender with the webhook token put in generatorURL: an expression that is always empty, so any check run
# on it says "recovered".
ALWAYS_EMPTY = 'count({__name__=~".+"}) > 1e12'
HOSTILE_URL = "http://prometheus/graph?" + urllib.parse.urlencode({"g0.expr": ALWAYS_EMPTY, "g0.tab": "1"})
STILL_FAILING = 'label_replace(vector(1), "instance", "bot-1", "", "")'
RULES = {
    "groups": [
        {
            "name": "verify-test",
            "rules": [
                # The fault is still there for bot-1.
                {"alert": "TestStillFailing", "expr": STILL_FAILING, "labels": {"severity": "critical"}},
                # The condition is gone.
                {"alert": "TestCleared", "expr": "vector(1) < 0", "labels": {"severity": "critical"}},
                # Two tiers of one name: the alert's severity says which one it came from.
                {"alert": "TestTiered", "expr": "vector(1) < 0", "labels": {"severity": "warning"}},
                {"alert": "TestTiered", "expr": STILL_FAILING, "labels": {"severity": "critical"}},
                # The alert reads a recording rule: verification reads the rule's expression instead.
                {"record": "test:cleared:value", "expr": "vector(1) < 0"},
                {"alert": "TestRecorded", "expr": "test:cleared:value > 0", "labels": {"severity": "critical"}},
                # Its firing outlasts its condition on purpose.
                {
                    "alert": "TestKept",
                    "expr": "vector(1) < 0",
                    "keep_firing_for": "1m",
                    "labels": {"severity": "critical"},
                },
            ],
        }
    ]
}
# The other member of a pair, its evaluation behind: it still fires TestCleared for bot-1.
LAGGING_RULES = {
    "groups": [
        {
            "name": "verify-test",
            "rules": [{"alert": "TestCleared", "expr": STILL_FAILING, "labels": {"severity": "critical"}}],
        }
    ]
}


@contextlib.contextmanager
def rules_prometheus(tmp: Path, rules: dict[str, Any]) -> Iterator[str]:
    """A real Prometheus with `rules`, evaluating every second and scraping itself every second: its URL, stopped
    by its pid on leaving, whatever happened."""
    assert PROMETHEUS_BIN is not None, "prometheus is not installed (apt-get install prometheus)"
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    port = free_port()
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"evaluation_interval": "1s"},
                "rule_files": [str(tmp / "rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": "self",
                        "scrape_interval": "1s",
                        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                    }
                ],
            }
        )
    )
    proc = start_prometheus(tmp / "prometheus.yml", tmp / "data", port)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc, deadline=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus_with_rules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with rules_prometheus(tmp_path_factory.mktemp("prometheus-rules"), RULES) as url:
        yield url


@pytest.fixture(scope="module")
def lagging_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with rules_prometheus(tmp_path_factory.mktemp("prometheus-lagging"), LAGGING_RULES) as url:
        yield url


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    am = start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    try:
        yield am
    finally:
        stop(am.proc)


RULE = {
    "name": "fix",
    "match": ['alertname=~"Test.*"'],
    "cooldown": 0,
    "max_attempts": 1,
    "on_failure": "none",
    "verify": {"deadline": "1s", "interval": "200ms"},
    "steps": [{"action": "bot", "command": "reconnect"}],
}


async def run_one(
    aiohttp_client: Any,
    tmp_path: Path,
    db: str,
    bot: FakeBot,
    prometheus: str | list[str],
    body: dict[str, Any],
    alertmanager_url: str = "http://127.0.0.1:9",
    **rule: Any,
) -> dict[str, Any]:
    config = make_config(
        tmp_path,
        db,
        playbook=str(write_playbook(tmp_path, [{**RULE, **rule}])),
        targets=bot_targets(bot, tmp_path),
        prometheus_url=prometheus,
        alertmanager_url=alertmanager_url,
    )
    client = await aiohttp_client(create_app(config))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    end = time.monotonic() + 20
    while True:
        (episode,) = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        if episode["closed_at"]:
            return episode  # type: ignore[no-any-return]
        assert time.monotonic() < end, episode
        await asyncio.sleep(0.05)


async def test_an_expression_in_the_generator_url_never_verifies_a_recovery(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    body = payload(alert("TestStillFailing", severity="critical", generator_url=HOSTILE_URL))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == "failed", episode
    assert fake_bot.commands() == ["reconnect"]
    detail = episode["attempts"][0]["detail"]
    assert "1 series of this alert still match" in detail and STILL_FAILING in detail
    assert "[expression from prometheus_rules]" in detail and "1e12" not in detail


async def test_the_rules_expression_verifies_a_real_recovery(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    body = payload(alert("TestCleared", severity="critical", generator_url=HOSTILE_URL))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == "recovered", episode
    assert (
        episode["attempts"][0]["detail"]
        == "vector(1) < 0 returned nothing for this alert [expression from prometheus_rules]"
    )


@pytest.mark.parametrize(("severity", "state"), [("critical", "failed"), ("warning", "recovered")])
async def test_the_rule_of_the_alerts_own_tier_is_the_one_checked(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    prometheus_with_rules: str,
    severity: str,
    state: str,
) -> None:
    body = payload(alert("TestTiered", severity=severity))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == state, episode


async def test_no_expression_anywhere_fails_safe(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    # Prometheus has no rule of that name: the generatorURL's expression is not a fallback.
    body = payload(alert("TestUnknownToPrometheus", generator_url=HOSTILE_URL))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == "failed", episode
    assert (
        "cannot verify: no verify.expr, and Prometheus has no alerting rule TestUnknownToPrometheus"
        in (episode["detail"])
    )


async def test_prometheus_away_fails_safe(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot
) -> None:
    body = payload(alert("TestCleared", generator_url=HOSTILE_URL))
    episode = await run_one(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, f"http://127.0.0.1:{free_port()}", body
    )
    assert episode["state"] == "failed" and "alerting rules could not be read" in episode["detail"], episode


async def test_the_playbooks_expression_is_recorded_as_such(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    body = payload(alert("TestStillFailing", severity="critical", generator_url=HOSTILE_URL))
    verify = {"expr": 'vector(1) < 0 and on() absent(nothing{instance="${instance}"})', "deadline": "1s"}
    episode = await run_one(
        aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body, verify=verify
    )
    assert episode["state"] == "recovered", episode
    assert episode["attempts"][0]["detail"].endswith("[expression from playbook]")
    assert 'instance="bot-1"' in episode["attempts"][0]["detail"]


def fires(am: Alertmanager, labels: dict[str, str]) -> bool:
    """Whether Alertmanager holds an alert of exactly these labels that has not ended."""
    now = datetime.now(UTC)
    return any(
        held["labels"] == labels and datetime.fromisoformat(held["endsAt"].replace("Z", "+00:00")) > now
        for held in am.get("alerts")
    )


async def test_a_recovery_verified_on_the_alerts_own_rule_ends_an_alert_no_prometheus_fires(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    prometheus_with_rules: str,
    alertmanager: Alertmanager,
) -> None:
    """The member of the pair that fired the alert died before its evaluation sent the end (the other never fired
    it): Alertmanager would hold it firing for four resend delays, and page a healed fault at its group's flush. The
    reconciler ends it once its own rule's condition is verified clear, and the ledger says so."""
    dead = f"http://127.0.0.1:{free_port()}"
    labels = {"alertname": "TestCleared", "instance": "bot-1", "severity": "critical", "case": "dead-member"}
    held = alertmanager.fire(labels)  # as the member that died sent it
    body = payload(alert("TestCleared", starts_at=held["startsAt"], severity="critical", case="dead-member"))
    episode = await run_one(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [prometheus_with_rules, dead],
        body,
        alertmanager_url=alertmanager.url,
    )
    assert episode["state"] == "recovered", episode
    # The attempt is the verification's (its end not held by the members' answers); the episode's close says more.
    verdict = "vector(1) < 0 returned nothing for this alert [expression from prometheus_rules]"
    assert episode["attempts"][0]["detail"] == verdict
    assert episode["detail"] == (
        f"{verdict}; its alert ended in Alertmanager (no Prometheus that answers fires it, {dead} did not answer)"
    )
    assert not fires(alertmanager, labels)


async def test_an_alert_that_cannot_be_ended_in_alertmanager_leaves_the_recovery_recovered(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    """No Alertmanager takes the end: the recovery stands (the alert still ends by its validity), and the detail says
    the end could not be posted."""
    body = payload(alert("TestCleared", severity="critical", case="no-alertmanager"))
    episode = await run_one(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        [prometheus_with_rules, f"http://127.0.0.1:{free_port()}"],
        body,
        alertmanager_url=f"http://127.0.0.1:{free_port()}",
    )
    assert episode["state"] == "recovered", episode
    detail = episode["detail"]
    assert detail.startswith(
        "vector(1) < 0 returned nothing for this alert [expression from prometheus_rules]; its "
        "alert could not be ended in Alertmanager: POST http://127.0.0.1:"
    ), detail


@pytest.mark.parametrize("case", ["member-fires-it", "every-member-answers", "keep-firing-for", "playbook-check"])
async def test_an_alert_is_left_to_prometheus_while_a_member_fires_it_or_its_end_is_not_the_checks(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    prometheus_with_rules: str,
    lagging_prometheus: str,
    alertmanager: Alertmanager,
    case: str,
) -> None:
    """A member whose evaluation lags still fires it (an end posted now would be undone by its next resend, and it
    sends the end itself); every member answers (each sent the end of what it fired: the alert held here was posted
    by the test, not by a member); a rule whose firing outlasts its condition (keep_firing_for); a playbook's own
    check, which is not the alert's condition: Alertmanager keeps the alert as it was sent."""
    alertname = "TestKept" if case == "keep-firing-for" else "TestCleared"
    labels = {"alertname": alertname, "instance": "bot-1", "severity": "critical", "case": case}
    held = alertmanager.fire(labels)
    body = payload(alert(alertname, starts_at=held["startsAt"], severity="critical", case=case))
    # A dead member beside them each time (else the members that answer would have sent every end there is).
    dead = f"http://127.0.0.1:{free_port()}"
    members = {
        "member-fires-it": [prometheus_with_rules, lagging_prometheus, dead],
        "every-member-answers": [prometheus_with_rules],
    }.get(case, [prometheus_with_rules, dead])
    rule: dict[str, Any] = {"verify": {"expr": "vector(1) < 0", "deadline": "1s"}} if case == "playbook-check" else {}
    if case == "member-fires-it":
        async with aiohttp.ClientSession() as session:
            client = PrometheusClient(session, lagging_prometheus)
            end = time.monotonic() + 20
            while (await client.alert_states("TestCleared", labels))[lagging_prometheus] != "firing":
                assert time.monotonic() < end, "the lagging member never fired TestCleared"
                await asyncio.sleep(0.2)
    episode = await run_one(
        aiohttp_client,
        tmp_path,
        migrated_sqlite,
        fake_bot,
        members,
        body,
        alertmanager_url=alertmanager.url,
        **rule,
    )
    assert episode["state"] == "recovered", episode
    assert "ended in Alertmanager" not in episode["detail"], episode
    assert fires(alertmanager, labels)
    alertmanager.resolve(held)


async def test_every_query_is_bounded_by_prometheus_and_by_the_client(aiohttp_server: Any) -> None:
    import aiohttp
    from aiohttp import web

    from trading_ops.clients.prometheus import QUERY_TIMEOUT_SECONDS, TIMEOUT, PrometheusClient

    seen: list[dict[str, str]] = []

    async def query(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        assert await PrometheusClient(session, str(server.make_url(""))).query("up == 0") == []
    assert seen == [{"query": "up == 0", "timeout": f"{QUERY_TIMEOUT_SECONDS:g}s"}]
    assert TIMEOUT.total is not None and TIMEOUT.total > QUERY_TIMEOUT_SECONDS


def recording(name: str, query: str, **labels: str) -> dict[str, Any]:
    return {"type": "recording", "name": name, "query": query, "labels": labels}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("a:age:seconds > 10", "(time() - a_ts) > 10"),
        ("sum by (instance) (a:age:seconds) > 1", "sum by (instance) ((time() - a_ts)) > 1"),
        ("b:age:doubled > 20", "((time() - a_ts) * 2) > 20"),  # a rule recording a rule: followed
        # Not a plain selector: matchers, a range, offset, @ would need the expression rewritten.
        ('a:age:seconds{instance="x"} > 10', 'a:age:seconds{instance="x"} > 10'),
        ("rate(a:age:seconds[5m]) > 0", "rate(a:age:seconds[5m]) > 0"),
        ("a:age:seconds offset 1m > 10", "a:age:seconds offset 1m > 10"),
        ("a:age:seconds @ 100 > 10", "a:age:seconds @ 100 > 10"),
        # Text in a string is text; a rule with labels of its own, or recorded twice, stays as it is.
        ('label_replace(up, "a:age:seconds", "", "", "") > 0', 'label_replace(up, "a:age:seconds", "", "", "") > 0'),
        ("c:labelled:x > 0 and d:twice:x > 0", "c:labelled:x > 0 and d:twice:x > 0"),
        ("up == 0", "up == 0"),
    ],
)
def test_recording_rules_named_plainly_are_replaced_by_their_expression(expr: str, expected: str) -> None:
    rules = [
        recording("a:age:seconds", "time() - a_ts"),
        recording("b:age:doubled", "a:age:seconds * 2"),
        recording("c:labelled:x", "up", tier="1"),
        recording("d:twice:x", "up"),
        recording("d:twice:x", "up * 2"),
        {"type": "alerting", "name": "A", "query": "a:age:seconds > 10"},
    ]
    assert inline_recording_rules(expr, rules) == expected


async def test_an_alert_on_a_recording_rule_is_verified_on_the_raw_series(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, fake_bot: FakeBot, prometheus_with_rules: str
) -> None:
    body = payload(alert("TestRecorded", severity="critical"))
    episode = await run_one(aiohttp_client, tmp_path, migrated_sqlite, fake_bot, prometheus_with_rules, body)
    assert episode["state"] == "recovered", episode
    assert episode["attempts"][0]["detail"] == (
        "(vector(1) < 0) > 0 returned nothing for this alert [expression from prometheus_rules]"
    )


async def test_the_scrape_schedule_predicts_the_targets_next_scrapes(prometheus_with_rules: str) -> None:
    import aiohttp

    instance = prometheus_with_rules.removeprefix("http://")
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, prometheus_with_rules)
        assert await client.scrape_schedule({"job": "self"}) is None  # no instance: no single target
        assert await client.scrape_schedule({"job": "other", "instance": instance}) is None
        end = time.monotonic() + 20
        while (first := await client.scrape_schedule({"job": "self", "instance": instance})) is None:
            assert time.monotonic() < end, "Prometheus never scraped itself"
            await asyncio.sleep(0.2)
        assert first.interval == 1.0 and 0 <= first.duration < 1.0
        await asyncio.sleep(2.5)
        later = []
        for _ in range(4):
            await asyncio.sleep(1.0)
            schedule = await client.scrape_schedule({"job": "self", "instance": instance})
            assert schedule is not None
            later.append(schedule)
    # Prometheus keeps the target on its offset: the schedule read seconds earlier predicted each later scrape's
    # start. One tick can start late on a loaded machine (0.14 s in a CI run beside other tests), so each start is
    # within a third of the interval of the prediction and the best of four within 0.1 s; a target that lost its
    # offset would land anywhere in the interval.
    deviations = []
    for schedule in later:
        scrapes = round((schedule.last - first.last) / first.interval)
        assert scrapes >= 3, (first, schedule)
        deviations.append(abs(schedule.last - (first.last + scrapes * first.interval)))
    assert max(deviations) < first.interval / 3, (first, later)
    assert min(deviations) < 0.1, (first, later)


def test_polls_are_timed_after_the_targets_scrapes() -> None:
    scrapes = ScrapeSchedule(last=100.0, interval=1.0, duration=0.01)
    margin = 2 * 0.01 + SCRAPE_COMMIT_MARGIN_SECONDS
    # No schedule: every `most` seconds.
    assert next_poll(1.0, None, began=100.3, now=100.31, first=True) == 1.0
    # The first wait ends when the first scrape that began after the verification (at 101) can be queried.
    assert next_poll(1.0, scrapes, began=100.3, now=100.31, first=True) == pytest.approx(101 + margin - 100.31)
    # A scrape that began before the verification (at 100) cannot show the action's effect, even when it is later
    # queryable.
    assert next_poll(2.0, scrapes, began=100.001, now=100.002, first=True) == pytest.approx(101 + margin - 100.002)
    # Never longer than `most`, whatever the schedule.
    slow = ScrapeSchedule(last=100.0, interval=15.0, duration=0.01)
    assert next_poll(1.0, slow, began=100.3, now=100.31, first=True) == 1.0
    # Later polls: the last scrape within `most` (two are within 2.5 s: the later one), else `most`.
    assert next_poll(2.5, scrapes, began=100.3, now=101.2, first=False) == pytest.approx(103 + margin - 101.2)
    assert next_poll(1.0, slow, began=100.3, now=101.2, first=False) == 1.0


async def always_resolved() -> bool:
    return True


@pytest.mark.parametrize("clears", [True, False])
async def test_an_alert_resolved_before_the_first_scrape_after_the_action_waits_for_that_scrape(
    prometheus_with_rules: str, clears: bool
) -> None:
    """A restart takes the target down: its series go stale and Alertmanager may send the resolved notification while
    the action still runs. The query right after the action sees the old process; the one after the first scrape of
    the new one says whether it recovered (CI saw a real restart closed as merely "resolved")."""
    import aiohttp

    began = time.time()
    scrapes = ScrapeSchedule(last=began - 0.1, interval=1.0, duration=0.0)
    fresh_at = scrapes.first_done(began, began)
    # Still failing right after the action; cleared (or not) by the first scrape that began after it.
    expr = f"vector(time()) < {began + 0.5:.3f}" if clears else "vector(1)"
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, prometheus_with_rules)
        verdict = await verify(client, expr, 60, 10, always_resolved, scrapes=scrapes)
    done = time.time()
    assert fresh_at <= done < began + 30, (began, fresh_at, done)  # waited for that scrape, not for the deadline
    if clears:
        assert (verdict.outcome, verdict.detail) == (
            "clear",
            f"{expr} returned nothing for this alert; the alert resolved too",
        )
    else:
        assert (verdict.outcome, verdict.detail) == (
            "resolved",
            "alert resolved during verification (1 series of this alert still match)",
        )


async def test_an_alert_resolved_without_a_scrape_schedule_ends_the_verification_at_once(
    prometheus_with_rules: str,
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, prometheus_with_rules)
        began = time.monotonic()
        verdict = await verify(client, "vector(1)", 60, 10, always_resolved)
    assert verdict.outcome == "resolved" and time.monotonic() - began < 10, verdict


@pytest.mark.parametrize(
    "target",
    [
        {"lastScrape": "0001-01-01T00:00:00Z", "scrapeInterval": "1s", "lastScrapeDuration": 0},  # never scraped
        {"lastScrape": "2026-11-23T10:44:56.520946674Z", "scrapeInterval": "soon"},
        {"lastScrape": "2026-11-23T10:44:56Z", "scrapeInterval": "1s", "lastScrapeDuration": 5},
        {"scrapeInterval": "1s"},
    ],
)
def test_a_target_without_a_usable_schedule_has_none(target: dict[str, Any]) -> None:
    assert ScrapeSchedule.of(target) is None


def test_a_real_targets_schedule_is_read() -> None:
    target = {"lastScrape": "2026-11-23T10:44:56.520946674Z", "scrapeInterval": "1m30s", "lastScrapeDuration": 0.0037}
    schedule = ScrapeSchedule.of(target)
    assert schedule is not None
    assert (schedule.interval, schedule.duration) == (90.0, 0.0037)
    assert schedule.last == pytest.approx(1795430696.520946)
