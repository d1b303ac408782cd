"""A small client of Alertmanager's API v2: post and look up alerts, create, list and expire silences.

Given the members of a clustered Alertmanager, it posts alerts to every member (as Prometheus does: each one pages
through its own routing, and the cluster deduplicates) and reads from the member that answered last, then the others.
A dead member costs the survivors little: a member that does not accept the connection within CONNECT_TIMEOUT_SECONDS
is passed over, reads stay with the member that answered, and a post returns once one member took it (the others'
posts go on in the background)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from trading_ops.matchers import RegexError, regex_matches

log = logging.getLogger(__name__)

# A member that does not accept the connection this quickly (dead host, blackholed address) is passed over; one that
# accepted has the whole TIMEOUT to answer.
CONNECT_TIMEOUT_SECONDS = 1.0
TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=CONNECT_TIMEOUT_SECONDS)
# Label names Alertmanager's matcher syntax accepts in a filter (Prometheus label names).
FILTER_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class AlertmanagerError(Exception):
    """Alertmanager answered with an error (`status`) or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AlertmanagerClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str | Sequence[str]) -> None:
        self.session = session
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("an Alertmanager URL is needed")
        self.base_urls = [u.rstrip("/") for u in urls]
        # The member that answered last: asked first next time (a dead first member is not waited for again).
        self.member = self.base_urls[0]
        # Posts to the other members still under way after one member took the alerts (kept referenced until done).
        self._posting: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        """The member that answered last (the first member before any did)."""
        return self.member

    def _order(self) -> list[str]:
        # The members in order from the one that answered last (from the first when the list changed since).
        start = self.base_urls.index(self.member) if self.member in self.base_urls else 0
        return self.base_urls[start:] + self.base_urls[:start]

    async def _request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        """The answer of the member that answered last, else of the next that gives one (a member that does not
        answer, or answers 5xx, is skipped); AlertmanagerError naming every member's problem when none does."""
        problems: list[AlertmanagerError] = []
        for base in self._order():
            try:
                answer = await self._request_one(base, method, path, json, params)
            except AlertmanagerError as exc:
                problems.append(exc)
                if exc.status is not None and exc.status < 500:
                    raise  # a refusal (a bad silence, an unknown id) is the same on every member
                continue
            self.member = base
            return answer
        raise AlertmanagerError("; ".join(str(p) for p in problems))

    async def _request_one(self, base: str, method: str, path: str, json: Any, params: Any) -> Any:
        url = f"{base}/api/v2/{path}"
        try:
            async with self.session.request(method, url, json=json, params=params, timeout=TIMEOUT) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise AlertmanagerError(f"{method} {url}: HTTP {resp.status}: {text[:200]}", resp.status)
                return await resp.json(content_type=None) if text else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AlertmanagerError(f"{method} {url}: {exc or type(exc).__name__}") from exc

    async def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """POST /api/v2/alerts to every member (each alert has labels, annotations and optional startsAt, endsAt,
        generatorURL); AlertmanagerError only when no member took them. Returns once one member took them: the posts
        to the others go on in the background (a dead member's failure is logged), so a dead member delays no page."""
        tasks = {
            asyncio.create_task(self._request_one(base, "POST", "alerts", alerts, None), name=f"post alerts to {base}")
            for base in self._order()
        }
        problems: list[BaseException] = []
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failed = [t.exception() for t in done if t.exception() is not None]
            problems.extend(e for e in failed if e is not None)
            if len(failed) < len(done):  # one member took them
                for problem in problems:
                    log.warning("an Alertmanager member did not take the alerts (the others did): %s", problem)
                for task in pending:
                    self._posting.add(task)
                    task.add_done_callback(self._posted)
                return
        raise AlertmanagerError("; ".join(str(p) for p in problems))

    def _posted(self, task: asyncio.Task[Any]) -> None:
        """A post to another member, finished after a first member had taken the alerts."""
        self._posting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an Alertmanager member did not take the alerts (the others did): %s", task.exception())

    async def create_silence(
        self, matchers: dict[str, str], starts_at: datetime, ends_at: datetime, created_by: str, comment: str
    ) -> str:
        body = {
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()],
            "startsAt": starts_at.isoformat(),
            "endsAt": ends_at.isoformat(),
            "createdBy": created_by,
            "comment": comment,
        }
        data = await self._request("POST", "silences", body)
        return str((data or {}).get("silenceID", ""))

    async def expire_silence(self, silence_id: str) -> None:
        """DELETE /api/v2/silence/{id}: end a silence now (an expired or unknown one is an AlertmanagerError)."""
        await self._request("DELETE", f"silence/{quote(silence_id, safe='')}")

    async def silence(self, silence_id: str) -> dict[str, Any]:
        """GET /api/v2/silence/{id}: one silence with its status.state (active, pending, expired)."""
        return dict(await self._request("GET", f"silence/{quote(silence_id, safe='')}") or {})

    async def silences(self) -> list[dict[str, Any]]:
        return list(await self._request("GET", "silences") or [])

    async def active_silence_for(self, labels: dict[str, str], exclude_created_by: str = "") -> dict[str, Any] | None:
        """The first active silence whose matchers all match `labels` (a maintenance window), else None."""
        for silence in await self.silences():
            if (silence.get("status") or {}).get("state") != "active":
                continue
            if exclude_created_by and silence.get("createdBy") == exclude_created_by:
                continue
            if silence_matches(silence, labels):
                return silence
        return None

    async def config_text(self) -> str:
        """GET /api/v2/status: the configuration the member runs, as its YAML text."""
        status = await self._request("GET", "status") or {}
        config = status.get("config") if isinstance(status, dict) else None
        text = config.get("original") if isinstance(config, dict) else None
        if not isinstance(text, str):
            raise AlertmanagerError("GET status: no configuration in the answer")
        return text

    async def alerts(self, active: bool = True) -> list[dict[str, Any]]:
        return list(await self._request("GET", f"alerts?active={'true' if active else 'false'}") or [])

    async def alerts_matching(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """GET /api/v2/alerts filtered on these labels: the alerts Alertmanager holds that are not resolved
        (active, silenced, inhibited or unprocessed). Labels whose names a filter cannot express are left out."""
        params = [
            ("filter", f"{name}={matcher_value(value)}") for name, value in labels.items() if FILTER_NAME_RE.match(name)
        ]
        return list(await self._request("GET", "alerts", params=params) or [])


def matcher_value(value: str) -> str:
    """A label value quoted for Alertmanager's matcher syntax (OpenMetrics escapes: \\, \" and \\n)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def silence_matches(silence: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether every matcher of an API v2 silence matches `labels` (an absent label is the empty string)."""
    return all(matcher_accepts(m, labels.get(str(m.get("name", "")), "")) for m in silence.get("matchers") or [])


def matcher_accepts(matcher: dict[str, Any], value: str) -> bool:
    """Whether one API v2 matcher ({name, value, isRegex, isEqual}) accepts a label value."""
    pattern = str(matcher.get("value", ""))
    if matcher.get("isRegex"):
        # RE2 anchored as Alertmanager runs it: a silence's regex, whoever wrote it, takes linear time. One that
        # RE2 refuses (Alertmanager would not have accepted it) matches nothing: that silence is no maintenance.
        try:
            hit = regex_matches(pattern, value)
        except RegexError as exc:
            log.warning("silence matcher %s ignored: %s", str(matcher.get("name", ""))[:60], exc)
            return False
    else:
        hit = value == pattern
    return hit if matcher.get("isEqual", True) else not hit
