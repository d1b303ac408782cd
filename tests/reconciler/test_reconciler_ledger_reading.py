"""A live replica whose database stops answering (its host dead: a proxy that relays nothing, holding every
connection, in front of the local PostgreSQL) still answers /metrics and /healthz at once: what they export of the
ledger is read in the background (trading_ops.reconciler.ledger_reading), so Prometheus never misses a scrape of a
replica that never stopped and TradingOpsReconcilerDown does not page for it. Needs PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausable_proxy import PausableProxy
from reconciler_server import ThreadedServer, make_config
from sqlalchemy.engine import make_url

from trading_ops.db import migrate
from trading_ops.reconciler.ledger_reading import BackgroundReading

pytestmark = [pytest.mark.postgres]

# What a scrape may take: Prometheus's scrape timeout in the standard profile is well above it (the answer comes in
# milliseconds). A replica that waited on its database would not answer at all while the database is silent.
SCRAPE_PATIENCE_SECONDS = 10.0


@pytest.fixture
def silent_ledger(postgres_url: str) -> Iterator[tuple[str, PausableProxy]]:
    migrate.upgrade(postgres_url)
    url = make_url(postgres_url)
    proxy = PausableProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        proxy.resume()
        proxy.close()


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=SCRAPE_PATIENCE_SECONDS) as resp:
        return resp.status, resp.read().decode()


def test_metrics_and_healthz_answer_while_the_database_does_not(
    tmp_path: Path, silent_ledger: tuple[str, PausableProxy]
) -> None:
    url, proxy = silent_ledger
    server = ThreadedServer(make_config(tmp_path, url))
    try:
        status, body = get(f"{server.url}/metrics")
        assert status == 200
        assert "tradingops_escalations_pending 0.0" in body and "tradingops_approvals_pending 0.0" in body
        # The database host dies: nothing comes back from it, every connection hangs.
        proxy.pause()
        for _ in range(3):  # the scrapes that follow: each one would start a read that never ends
            status, body = get(f"{server.url}/metrics")
            assert status == 200 and "tradingops_build_info" in body
            # The last figures stay until they are stale (a minute), not a scrape's wait.
            assert "tradingops_escalations_pending 0.0" in body
            status, _ = get(f"{server.url}/healthz")
            assert status == 200
    finally:
        proxy.resume()  # what hung on the database ends, so the replica stops cleanly
        server.stop()


def test_a_figure_the_database_has_not_answered_for_a_while_is_left_out() -> None:
    answers = iter([7])

    def read() -> int:
        return next(answers)  # the second read fails (StopIteration): the database does not answer

    reading = BackgroundReading("test", read, stale=0.2)
    assert reading.read() == 7
    assert reading.latest() == 7  # fresh: exported (the read it started failed)
    deadline = time.monotonic() + 30
    while reading.latest() is not None:
        assert time.monotonic() < deadline, "a stale figure is still exported"
        time.sleep(0.05)
