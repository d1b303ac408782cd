"""The console's login throttle under a flood (issue 47): wrong tokens from many loopback addresses (127.0.2.x,
127.0.3.x, 127.0.4.x, each client socket bound to its own address) in threads of their own, while an operator logs
in with a valid token and gets in; failures throttled per client and for everyone, one log line per flood, the
metrics; trusted proxies. The real reconciler on a real port (aiohttp's test server) on SQLite; no other server."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from polling import until_async
from reconciler_server import make_config
from secret_file import write_secret

from trading_ops.config import Config
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.console import COOKIE
from trading_ops.reconciler.login_throttle import (
    ALL_BURST,
    CLIENT_BURST,
    CLIENT_INTERVAL_SECONDS,
    FLOOD_CLIENT_BURST,
    client_of,
)

DESK_TOKEN = "console-desk-approve-token-0123456789"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# The flood: three threads, each cycling through 20 addresses of its own /24.
FLOOD_NETS = ("127.0.2", "127.0.3", "127.0.4")
ADDRESSES_PER_THREAD = 20
FLOOD_LINE = "a flood of failed attempts"
# Attempts the flood has made before the operator logs in (it goes on while they do).
FLOOD_ATTEMPTS = 3000


def config_of(tmp_path: Path, db_url: str, **reconciler: Any) -> Config:
    write_secret(tmp_path / "desk-token", DESK_TOKEN)
    tokens = [{"name": "desk", "scope": "approve", "token_file": str(tmp_path / "desk-token")}]
    return make_config(tmp_path, db_url, api_tokens=tokens, **reconciler)


async def attempt(url: str, source: str, token: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A login through the form from a socket bound to `source`: (status, the answer's headers and cookies)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        form = await session.get(url)
        nonce = CSRF.search(await form.text())
        assert nonce is not None
        data = {"csrf": nonce.group(1), "token": token}
        async with session.post(url, data=data, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return resp.status, resp


class Flood:
    """Threads of their own posting wrong tokens as fast as the server answers, each from its addresses in turn (one
    session per address: its login cookie fetched once), until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.no_retry_after = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(net,), daemon=True) for net in FLOOD_NETS]

    async def __aenter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:  # joined off the event loop: the server under test answers their last requests
            await asyncio.to_thread(thread.join, 60)
        assert not any(thread.is_alive() for thread in self.threads), "a flood thread did not stop"

    @property
    def attempts(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def _run(self, net: str) -> None:
        asyncio.run(self._flood(net))

    async def _flood(self, net: str) -> None:
        sessions: list[aiohttp.ClientSession] = []
        nonces: list[str] = []
        try:
            for host in range(1, ADDRESSES_PER_THREAD + 1):
                connector = aiohttp.TCPConnector(local_addr=(f"{net}.{host}", 0))
                session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True))
                sessions.append(session)
                form = await session.get(self.url)
                nonce = CSRF.search(await form.text())
                assert nonce is not None
                nonces.append(nonce.group(1))
            n = 0
            while not self.stop.is_set():
                session, nonce_of = sessions[n % len(sessions)], nonces[n % len(sessions)]
                n += 1
                data = {"csrf": nonce_of, "token": f"a-wrong-guess-{n:020d}"}
                async with session.post(self.url, data=data, allow_redirects=False) as resp:
                    again = CSRF.search(await resp.text())  # a 401 is the form again, with a new login cookie
                    if again is not None:
                        nonces[(n - 1) % len(sessions)] = again.group(1)
                    with self.lock:
                        self.statuses[resp.status] += 1
                        if resp.status == 429 and int(resp.headers.get("Retry-After", "0")) < 1:
                            self.no_retry_after += 1
        finally:
            for session in sessions:
                await session.close()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


async def test_a_valid_token_gets_in_during_a_flood_of_wrong_ones_from_many_addresses(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trading_ops.reconciler")
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config_of(tmp_path, migrated_sqlite)))
    url = str(client.make_url("/ui/login"))
    throttle = client.app[keys.LOGIN_THROTTLE]
    latencies = []
    started = time.monotonic()
    async with Flood(url) as flood:
        # The flood is on once everyone's bound is spent, and every flooding address then waits.
        await until_async("the flood to be on", lambda: throttle.floods >= 1, deadline=120)
        await until_async(f"{FLOOD_ATTEMPTS} attempts", lambda: flood.attempts >= FLOOD_ATTEMPTS, deadline=300)
        # The on-call person, from addresses of their own, logs in with a valid token: every time, at once.
        attempts_before = flood.attempts
        for i in range(5):
            before = time.monotonic()
            status, resp = await attempt(url, f"127.0.5.{i + 1}", DESK_TOKEN)
            latencies.append(time.monotonic() - before)
            assert status == 303, status
            assert resp.cookies[COOKIE].value
            assert throttle.flooding
        # The flood went on meanwhile (a login can be quicker than one of its throttled answers: counted over all five).
        await until_async("the flood to go on", lambda: flood.attempts > attempts_before, deadline=30)
        assert throttle.flooding
        # Even from an address that mistyped its token once during the flood.
        status, _resp = await attempt(url, "127.0.6.1", "a-typo-of-the-desk-token")
        assert status == 401
        before = time.monotonic()
        assert (await attempt(url, "127.0.6.1", DESK_TOKEN))[0] == 303
        latencies.append(time.monotonic() - before)
    elapsed = time.monotonic() - started
    during = await (await client.get("/metrics")).text()
    statuses = dict(flood.statuses)
    print(
        json.dumps(
            {
                "flood_attempts": flood.attempts,
                "flood_statuses": statuses,
                "flood_seconds": round(elapsed, 2),
                "valid_logins": len(latencies),
                "valid_logins_in": len(latencies),
                "valid_login_latency_seconds": [round(s, 3) for s in latencies],
            }
        )
    )
    # What the flood got: wrong-token answers within the bound for all, and 429 with Retry-After for the rest.
    assert set(statuses) <= {401, 429}, statuses
    assert flood.no_retry_after == 0
    addresses = len(FLOOD_NETS) * ADDRESSES_PER_THREAD
    # Before the flood everyone's 60 (and its refill); then each address's few tries and one per interval.
    bound = ALL_BURST + elapsed + addresses * (FLOOD_CLIENT_BURST + elapsed / CLIENT_INTERVAL_SECONDS)
    assert statuses[401] <= bound, statuses
    # One line for the flood, none per attempt: the failures and refusals are counted, not logged one by one.
    flood_lines = [r for r in caplog.records if FLOOD_LINE in r.getMessage()]
    assert len(flood_lines) == 1, [r.getMessage() for r in flood_lines]
    per_attempt = [r for r in caplog.records if "refused" in r.getMessage() and "127.0." in r.getMessage()]
    assert len(per_attempt) <= ALL_BURST + 1, len(per_attempt)
    assert metric(during, "tradingops_console_login_flood") == 1
    assert metric(during, "tradingops_console_login_floods_total") == 1
    assert metric(during, "tradingops_console_login_throttled_total") == statuses[429]
    assert metric(during, "tradingops_console_login_failures_total") == statuses[401] + 1  # and the typo
    assert metric(during, "tradingops_console_login_lockouts_total") >= addresses


async def test_failures_alone_are_throttled_per_client_and_the_flood_ends_in_one_line(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trading_ops.reconciler")
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config_of(tmp_path, migrated_sqlite)))
    throttle = client.app[keys.LOGIN_THROTTLE]
    now = [time.monotonic()]
    throttle.clock = lambda: now[0]  # a clock that moves only when the test says
    url = str(client.make_url("/ui/login"))
    # Valid logins spend nothing: many in a row from one address all get in.
    assert [(await attempt(url, "127.0.7.1", DESK_TOKEN))[0] for _ in range(CLIENT_BURST + 5)] == [303] * (
        CLIENT_BURST + 5
    )
    # Failures do: a burst, then 429 with Retry-After, and this address's valid token waits too (no guess is tried
    # for a client past its failures, or a guesser would learn which guess was right).
    guesses = [(await attempt(url, "127.0.7.2", "wrong-token-xxxxxxxx"))[0] for _ in range(CLIENT_BURST + 1)]
    assert guesses == [401] * CLIENT_BURST + [429]
    status, resp = await attempt(url, "127.0.7.2", DESK_TOKEN)
    assert status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert any("127.0.7.2 locked out" in r.getMessage() for r in caplog.records)
    # Everyone's bound: past it a flood is on, and every address gets one failed try.
    for i in range(ALL_BURST):
        await attempt(url, f"127.0.8.{1 + i // CLIENT_BURST}", "wrong-token-xxxxxxxx")
    assert throttle.flooding
    tries = [(await attempt(url, "127.0.9.1", "wrong-token-xxxxxxxx"))[0] for _ in range(FLOOD_CLIENT_BURST + 1)]
    assert tries == [401] * FLOOD_CLIENT_BURST + [429]
    assert (await attempt(url, "127.0.9.2", DESK_TOKEN))[0] == 303
    # Once everyone's bucket is full again the flood is over: one line with its numbers.
    now[0] += ALL_BURST * 2
    assert not throttle.flooding
    over = [r.getMessage() for r in caplog.records if "flood of failed attempts is over" in r.getMessage()]
    assert len(over) == 1 and "client(s)" in over[0], over
    # The locked address has its tries back too.
    assert (await attempt(url, "127.0.7.2", DESK_TOKEN))[0] == 303


async def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled_not_the_proxy(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    config = config_of(tmp_path, migrated_sqlite, trusted_proxies=["127.0.10.0/24"])
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    throttle = client.app[keys.LOGIN_THROTTLE]
    stopped = time.monotonic()
    throttle.clock = lambda: stopped
    url = str(client.make_url("/ui/login"))
    # A guesser behind the load balancer (127.0.10.1) spends its own bucket, with whatever it writes itself in front.
    guesser = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    guesses = [(await attempt(url, "127.0.10.1", "wrong-token-xxxxxxxx", guesser))[0] for _ in range(CLIENT_BURST)]
    assert guesses == [401] * CLIENT_BURST
    forged = {"X-Forwarded-For": "198.51.100.8, 198.51.100.7"}
    assert (await attempt(url, "127.0.10.1", "wrong-token-xxxxxxxx", forged))[0] == 429
    # An operator behind the same balancer is another client: in at once.
    operator = {"X-Forwarded-For": "198.51.100.20"}
    assert (await attempt(url, "127.0.10.1", DESK_TOKEN, operator))[0] == 303
    # Not behind a trusted proxy, X-Forwarded-For is not believed.
    assert client_of("127.0.11.1", ["198.51.100.20"], throttle.trusted) == "127.0.11.1"
    assert client_of("127.0.10.1", ["10.0.0.1, 127.0.10.2"], throttle.trusted) == "10.0.0.1"
    assert client_of("2001:db8::1", [], []) == "2001:db8::/64"
