"""A small client of Prometheus's HTTP API: instant queries, the expression behind an alert, and when a target is
scraped; asked of any member of an HA pair (or more) that answers."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import aiohttp

from trading_ops.durations import parse_duration

# Every query is bounded twice: Prometheus stops evaluating it after QUERY_TIMEOUT (its `timeout` parameter), and
# the client stops waiting a little later, whatever the server does.
QUERY_TIMEOUT_SECONDS = 10.0
# A member that does not even accept the connection this quickly is passed over for the next one.
CONNECT_TIMEOUT_SECONDS = 1.0
TIMEOUT = aiohttp.ClientTimeout(total=QUERY_TIMEOUT_SECONDS + 2.0, sock_connect=CONNECT_TIMEOUT_SECONDS)


class PrometheusError(Exception):
    """Prometheus answered with an error or could not be reached."""


class PrometheusClient:
    """Prometheus's HTTP API, asked of the members of an HA pair in turn (`base_urls`: one URL or every member's).

    Every request goes first to the member that answered last, and when it fails (unreachable, an error, a timeout),
    to the next: a request fails only when every member failed it. Staying with one member while it answers keeps
    successive queries of one verification on one server's scrapes (the members scrape the same targets at their own
    moments, so their answers may differ by a scrape); `member` says which one answered last."""

    def __init__(self, session: aiohttp.ClientSession, base_urls: str | Sequence[str]) -> None:
        self.session = session
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("no Prometheus URL")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.member = self.base_urls[0]

    @property
    def base_url(self) -> str:
        """The member that answered last (the first member before any did)."""
        return self.member

    async def _get(self, path: str, params: dict[str, str], what: str) -> dict[str, Any]:
        """GET an API path of the first member that answers: its `data` object, or PrometheusError naming `what`
        failed on every member and why."""
        start = self.base_urls.index(self.member)
        order = self.base_urls[start:] + self.base_urls[:start]
        problems: list[str] = []
        for url in order:
            try:
                data = await self._get_one(url, path, params)
            except PrometheusError as exc:
                problems.append(f"{url}: {exc}" if len(order) > 1 else str(exc))
                continue
            self.member = url
            return data
        raise PrometheusError(f"{what}: {'; '.join(problems)}")

    async def _get_one(self, url: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            async with self.session.get(f"{url}{path}", params=params, timeout=TIMEOUT) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(str(exc) or type(exc).__name__) from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusError(str(error))
        data = body.get("data")
        return data if isinstance(data, dict) else {}

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """GET /api/v1/query: the instant vector (or scalar as a one-element list) for `expr`, evaluated at `at` (Unix
        seconds), or at Prometheus's own now."""
        params = {"query": expr, "timeout": f"{QUERY_TIMEOUT_SECONDS:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = await self._get("/api/v1/query", params, f"query {expr!r}")
        result = data.get("result")
        if data.get("resultType") in ("scalar", "string"):
            return [{"value": result}]
        return list(result or [])

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """GET /api/v1/query_range: the matrix for `expr` from `start` to `end` (Unix seconds) every `step` seconds:
        each series with its `values` ([time, "value"] pairs)."""
        params = {
            "query": expr,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
            "timeout": f"{QUERY_TIMEOUT_SECONDS:g}s",
        }
        data = await self._get("/api/v1/query_range", params, f"query_range {expr!r}")
        return list(data.get("result") or [])

    async def retention_seconds(self) -> float | None:
        """GET /api/v1/status/runtimeinfo: how long the member keeps samples (its time retention), or None when it
        keeps them by size only."""
        info = await self._get("/api/v1/status/runtimeinfo", {}, "runtime information")
        for part in str(info.get("storageRetention") or "").split(" or "):
            try:
                return parse_duration(part.strip())
            except ValueError:
                continue
        return None

    async def rules(self) -> list[dict[str, Any]]:
        """GET /api/v1/rules: every alerting and recording rule of every group, as Prometheus loaded them."""
        groups = (await self._get("/api/v1/rules", {}, "rules")).get("groups") or []
        return [r for g in groups if isinstance(g, dict) for r in g.get("rules") or [] if isinstance(r, dict)]

    @staticmethod
    def alerting_rules(alertname: str, labels: dict[str, str], rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of `rules` (as `rules()` returned them), the alerting rules named `alertname` whose static labels agree
        with the alert's (a warning and a critical tier of one name are told apart by their severity) and that have
        an expression: the alert's own condition.

        What a webhook says the expression is (its generatorURL) is never taken: anyone with the webhook token could
        make any query the check, one that is always empty (a "recovery") included."""
        return [
            rule
            for rule in rules
            if _alerting_rule_of(rule, alertname, labels)
            and isinstance(rule.get("query"), str)
            and str(rule["query"]).strip()
        ]

    async def alert_states(self, alertname: str, labels: dict[str, str]) -> dict[str, str | None]:
        """Each member's state of the alert these labels name, read from its own GET /api/v1/rules (never another
        member's): `firing`, `pending`, or `inactive` when its rules of that name hold no such alert; None for a
        member that did not answer. A member sends Alertmanager the end of an alert only if it fired it."""

        async def state(url: str) -> str | None:
            try:
                data = await self._get_one(url, "/api/v1/rules", {"type": "alert"})
            except PrometheusError:
                return None
            found = [
                str(held.get("state") or "")
                for group in data.get("groups") or []
                if isinstance(group, dict)
                for rule in group.get("rules") or []
                if _alerting_rule_of(rule, alertname, labels)
                for held in rule.get("alerts") or []
                if isinstance(held, dict) and _labels_agree(held.get("labels") or {}, labels)
            ]
            return "firing" if "firing" in found else "pending" if "pending" in found else "inactive"

        # Asked together: a dead member costs its connect timeout once, not once per member before it.
        answers = await asyncio.gather(*(state(url) for url in self.base_urls))
        return dict(zip(self.base_urls, answers, strict=True))

    async def alert_timing(self, alertname: str, labels: dict[str, str]) -> tuple[float, float] | None:
        """The `for:` and the group's evaluation interval, in seconds, of Prometheus's alerting rule named `alertname`
        whose static labels agree with the alert's (of several, the one whose firings can come closest: the shortest
        sum). A firing ends at an evaluation where its condition no longer holds; the next one is pending from a
        later evaluation on and fires `for:` after that. None when no loaded rule is found."""
        groups = (await self._get("/api/v1/rules", {}, "rules")).get("groups") or []
        timings = [
            (float(rule.get("duration") or 0), float(group.get("interval") or 0))
            for group in groups
            if isinstance(group, dict)
            for rule in group.get("rules") or []
            if _alerting_rule_of(rule, alertname, labels)
        ]
        return min(timings, key=sum) if timings else None

    async def scrape_schedule(self, labels: dict[str, str]) -> ScrapeSchedule | None:
        """GET /api/v1/targets: when the active target these labels name (its `job` and `instance`) is scraped, or
        None when the labels name no single target (no `instance`, an unknown one, several jobs)."""
        if not labels.get("instance"):
            return None
        targets = (await self._get("/api/v1/targets", {"state": "active"}, "targets")).get("activeTargets") or []
        found = [
            t
            for t in targets
            if isinstance(t, dict)
            and all((t.get("labels") or {}).get(k) == labels[k] for k in ("job", "instance") if k in labels)
        ]
        schedule = ScrapeSchedule.of(found[0]) if len(found) == 1 else None
        return None if schedule is None else replace(schedule, member=self.member)


# A scrape's samples are appended and committed after the fetch its lastScrapeDuration measures: a query this long
# after that (plus the fetch's own length again, for one slower than the last) finds them.
SCRAPE_COMMIT_MARGIN_SECONDS = 0.05


@dataclass(frozen=True)
class ScrapeSchedule:
    """When Prometheus scrapes one target: from `last` (the last scrape's start, Unix seconds) every `interval`.

    Prometheus keeps each target on a fixed offset within its interval, so the next scrapes are predictable: by the
    member of a pair that said so (`member`), not by its twin, which scrapes at an offset of its own."""

    last: float
    interval: float
    duration: float
    member: str = ""

    @classmethod
    def of(cls, target: dict[str, Any]) -> ScrapeSchedule | None:
        """From one of /api/v1/targets' activeTargets; None when it was never scraped or says nothing usable."""
        try:
            last = datetime.fromisoformat(str(target["lastScrape"]).replace("Z", "+00:00")).timestamp()
            interval = parse_duration(str(target["scrapeInterval"]))
            duration = float(target.get("lastScrapeDuration") or 0.0)
        except (KeyError, ValueError, TypeError, OverflowError):
            return None
        if last <= 0 or interval <= 0 or not 0 <= duration < interval:
            return None  # never scraped (Go's zero time), or nonsense
        return cls(last, interval, duration)

    def done(self, k: int) -> float:
        """When the samples of scrape `k` (0: the last one) can be queried."""
        return self.last + k * self.interval + 2 * self.duration + SCRAPE_COMMIT_MARGIN_SECONDS

    def first_done(self, started_after: float, after: float) -> float:
        """When the first scrape that starts at `started_after` or later, and is queryable after `after`, is."""
        k = max(0, math.ceil((started_after - self.last) / self.interval))
        k = max(k, math.floor((after - self.done(0)) / self.interval) + 1)
        while self.done(k) <= after:
            k += 1
        return self.done(k)

    def any_first_done(self, started_after: float) -> float:
        """When the first scrape at or after `started_after` is queryable on any server scraping at this interval
        (the other member of a pair): a full interval later at most."""
        return started_after + self.interval + 2 * self.duration + SCRAPE_COMMIT_MARGIN_SECONDS

    def last_done(self, after: float, until: float) -> float | None:
        """The latest moment in (after, until] a scrape becomes queryable, or None when none does."""
        k = math.floor((until - self.done(0)) / self.interval)
        return self.done(k) if self.done(k) > after else None


# A token of PromQL: a quoted string (skipped: a name in it is text) or an identifier (metric names have colons).
_PROMQL_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|[A-Za-z_:][A-Za-z0-9_:]*')
# What may follow an instant-vector selector that a parenthesised expression cannot replace: label matchers, a
# range, a function call, `offset` or `@`.
_NOT_REPLACEABLE_AFTER_RE = re.compile(r"\s*(?:[{\[(@]|offset\b)")
INLINE_PASSES = 4


def inline_recording_rules(expr: str, rules: list[dict[str, Any]]) -> str:
    """`expr` with each recording rule it names, bare, replaced by the rule's own expression in parentheses.

    A recording rule's series are only as fresh as its last evaluation: a verification that queries the rule's
    expression on the raw series sees a recovery one evaluation interval sooner. Only the unambiguous cases: a name
    with a colon (the level:metric:operations convention, never a label name) recorded by exactly one rule without
    labels of its own, used as a plain selector (no matchers, range, `offset` or `@`: those would need the
    expression rewritten). Rules recording other rules are followed a few levels."""
    counts: dict[str, int] = {}
    queries: dict[str, str] = {}
    for rule in rules:
        name, query = rule.get("name"), rule.get("query")
        if rule.get("type") != "recording" or not isinstance(name, str) or not isinstance(query, str):
            continue
        counts[name] = counts.get(name, 0) + 1
        if ":" in name and not rule.get("labels") and query.strip():
            queries[name] = query
    inline = {name: query for name, query in queries.items() if counts[name] == 1}
    for _ in range(INLINE_PASSES if inline else 0):
        expanded = _inline_once(expr, inline)
        if expanded == expr:
            break
        expr = expanded
    return expr


def _inline_once(expr: str, inline: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token not in inline or _NOT_REPLACEABLE_AFTER_RE.match(expr, match.end()):
            return token
        return f"({inline[token]})"

    return _PROMQL_TOKEN_RE.sub(replace, expr)


def _alerting_rule_of(rule: Any, alertname: str, labels: dict[str, str]) -> bool:
    """Whether `rule` (as GET /api/v1/rules gives it) is an alerting rule named `alertname` whose static labels agree
    with the alert's."""
    return (
        isinstance(rule, dict)
        and rule.get("type") == "alerting"
        and rule.get("name") == alertname
        and _labels_agree(rule.get("labels") or {}, labels)
    )


def _labels_agree(rule_labels: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether an alert could come from a rule with these labels (templated values, `{{ ... }}`, can be anything)."""
    return all("{{" in str(v) or labels.get(k) == v for k, v in rule_labels.items())
