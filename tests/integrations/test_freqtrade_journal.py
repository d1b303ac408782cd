"""The freqtrade sidecar's view of freqtrade's database: `tradingbot_journal_failing{venue,reason}`,
`tradingbot_journal_write_failures_total` and the `journal` check of its /readyz, from what freqtrade logs.

The first test drives the sidecar with the records a poll hands it (freqtrade's own words,
tests/integrations/test_freqtrade_logs.py) and reads its HTTP API. The second runs a REAL freqtrade (the `freqtrade`
extra) trading on the Kraken-compatible paper gateway, its SQLite database on a small tmpfs this test mounts (and
unmounts whatever happens: needs root), filled to the last byte: the sidecar polling it and reading its log file must
report the journal failing, and keep saying so after freqtrade exits on it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import polling
import pytest
from freqtrade_database_errors import API_DISK_FULL, LOOP_DISK_FULL, PG_REFUSED
from freqtrade_helpers import PASSWORD, USERNAME, make_freqtrade, until
from full_disk import fill, small_filesystem
from gateway_helpers import start_gateway
from ports import free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from trading_ops.bot import server
from trading_ops.integrations.freqtrade.app import FreqtradeSidecar, create_app
from trading_ops.integrations.freqtrade.journal import QUIET_SECONDS
from trading_ops.integrations.freqtrade.logs import Record
from trading_ops.integrations.freqtrade.poller import News, Snapshot

TOKEN = "sidecar-token"
POLL_SECONDS = 0.2
TMPFS_SIZE = "4m"
REASONS = ("disk_full", "database_unavailable", "write_error")


def sidecar_of(url: str, log_file: Path | None = None) -> FreqtradeSidecar:
    return FreqtradeSidecar(
        name="ft",
        url=url,
        username=USERNAME,
        password=PASSWORD,
        token=TOKEN,
        registry=CollectorRegistry(),
        poll_interval=POLL_SECONDS,
        log_file=str(log_file) if log_file else None,
    )


async def samples(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }


def journal(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], venue: str = "kraken"
) -> dict[str, float | None]:
    """journal_failing per reason, and the failures counter, of `venue` (freqtrade's exchange; `unknown` until it
    answered once)."""
    out = {r: values.get(("tradingbot_journal_failing", (("reason", r), ("venue", venue)))) for r in REASONS}
    out["failures"] = values.get(("tradingbot_journal_write_failures_total", (("venue", venue),)))
    return out


async def test_a_database_error_in_the_log_fails_the_journal_in_metrics_and_readyz(aiohttp_client: Any) -> None:
    sidecar = sidecar_of("http://127.0.0.1:9")
    # The bot server the sidecar serves, without its poller: the test hands the sidecar each poll's result, as the
    # poller does (its listeners).
    client = await aiohttp_client(server.create_app(sidecar))
    trade = {"trade_id": 1, "pair": "BTC/USD", "amount": 0.1, "orders": [{"order_id": "P1", "filled": 0.1}]}

    def poll(at: float, records: list[Record], closed: list[dict[str, Any]], trades: tuple[Any, ...]) -> None:
        previous = sidecar.poller.snapshot
        snap = Snapshot(
            up=True,
            polled_at=at,
            version="2026.9",
            config={"exchange": "kraken", "strategy": "S", "state": "running"},
            heartbeat=at,
            bot_start=1.0,
            trades=trades,
        )
        sidecar.poller.snapshot = snap
        for listener in sidecar.poller.listeners:
            listener(previous, snap, News(records, closed), previous.up)

    poll(10.0, [], [], (trade,))
    # Initialised at 0, every reason, before anything failed.
    assert journal(await samples(client)) == {
        "disk_full": 0,
        "database_unavailable": 0,
        "write_error": 0,
        "failures": 0,
    }
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["checks"]["journal"]["ok"] is True

    poll(11.0, [Record(10.5, "uvicorn.error", "ERROR", API_DISK_FULL)], [], (trade,))
    values = await samples(client)
    assert journal(values) == {"disk_full": 1, "database_unavailable": 0, "write_error": 0, "failures": 1}
    assert values[("tradingbot_ready", ())] == 0
    resp = await client.get("/readyz")
    check = (await resp.json())["checks"]["journal"]
    assert resp.status == 503
    assert check["ok"] is False and check["reason"] == "disk_full"
    assert check["error"] == "sqlite3.OperationalError: database or disk is full"

    # Its loop turns on with nothing new written, short of QUIET_SECONDS: still failing, now for the latest reason.
    poll(12.0, [Record(11.5, "freqtrade", "ERROR", f"Fatal exception!\n{PG_REFUSED}")], [], (trade,))
    poll(11.5 + QUIET_SECONDS - 1, [], [], (trade,))
    assert journal(await samples(client)) == {
        "disk_full": 0,
        "database_unavailable": 1,
        "write_error": 0,
        "failures": 2,
    }
    assert (await client.get("/readyz")).status == 503

    # freqtrade down: the journal's state and its counter stay (a freqtrade that exits on its database is no better).
    sidecar.poller.snapshot = Snapshot(up=False, config={"exchange": "kraken"}, error="connection refused")
    assert journal(await samples(client))["database_unavailable"] == 1

    # Back, and a trade that closed since: freqtrade wrote it, the journal is writable again.
    poll(80.0, [], [{"trade_id": 1}], ())
    assert journal(await samples(client)) == {
        "disk_full": 0,
        "database_unavailable": 0,
        "write_error": 0,
        "failures": 2,
    }
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["checks"]["journal"] == {
        "ok": True,
        "reason": None,
        "error": None,
    }


# -- a real freqtrade on a full disk -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_real_freqtrade_on_a_full_disk_fails_the_sidecars_journal(tmp_path: Path, aiohttp_client: Any) -> None:
    gateway = start_gateway(tmp_path / "gateway")
    ft = None
    try:
        with small_filesystem(tmp_path / "db", TMPFS_SIZE) as db_dir:
            # Trades stay open (held an hour) until the test exits them: its exit is the write that fails.
            ft = make_freqtrade(
                tmp_path / "freqtrade", gateway.url, gateway.api_key, gateway.api_secret, hold_seconds=3600
            )
            ft.db_url = f"sqlite:///{db_dir / 'tradesv3.sqlite'}"
            # freqtrade sets up no logging of its own (no --logfile) when it finds PYTEST_VERSION in its environment,
            # which it inherits from this test, unless told to: the sidecar reads that file.
            config = json.loads(ft.config.read_text())
            ft.config.write_text(json.dumps({**config, "ft_tests_force_logging": True}))
            ft.start()
            until("freqtrade opens a trade", lambda: [t for t in ft.open_trades() if t["amount"] > 0])
            sidecar = sidecar_of(ft.url, ft.log)
            client = await aiohttp_client(create_app(sidecar))

            async def until_async(what: str, probe: Any, deadline: float = 30.0, in_thread: bool = False) -> Any:
                try:
                    return await polling.until_async(what, probe, deadline, POLL_SECONDS, in_thread=in_thread)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; freqtrade's log: {ft.tail()}") from None

            async def failing() -> dict[str, float | None]:
                return journal(await samples(client))

            await until_async("the sidecar's first answered poll", lambda: _up(client))
            assert await failing() == {"disk_full": 0, "database_unavailable": 0, "write_error": 0, "failures": 0}

            filler = fill(db_dir)
            faulted = time.monotonic()
            # The exit must be journaled: freqtrade's commit fails (its API answers 500), its loop's next commit too.
            with contextlib.suppress(OSError):
                ft.api("POST", "/forceexit", {"tradeid": "all"}, timeout=10)
            values = await until_async(
                "journal_failing{reason=disk_full} 1", lambda: _when(failing(), lambda v: v["disk_full"] == 1)
            )
            detected = time.monotonic() - faulted
            assert values["failures"] is not None and values["failures"] >= 1
            resp = await client.get("/readyz")
            assert resp.status == 503 and (await resp.json())["checks"]["journal"]["reason"] == "disk_full"
            # freqtrade exits on the failed commit of its loop; the sidecar keeps saying why, and reads what freqtrade
            # logged after its API was gone ("Fatal exception!", "Error during cleanup") from its log file.
            assert ft.proc is not None
            until("freqtrade exits on its database error", lambda: ft.proc.poll() is not None, deadline=60)
            await until_async("the sidecar sees freqtrade down", lambda: _down(client))
            await until_async(
                "the failures freqtrade logged as it exited", lambda: _when(failing(), lambda v: v["failures"] >= 2)
            )
            assert (await failing())["disk_full"] == 1

            # Space freed, freqtrade started again: it looks for the exits it sent before their commits failed (on the
            # venue, not in its database) and closes the trades, or the test exits what is still open. Those writes
            # land, and the journal is writable again.
            filler.unlink()
            freed = time.monotonic()
            ft.start()
            await until_async("the sidecar sees freqtrade up again", lambda: _up(client), deadline=60)
            if ft.open_trades():
                with contextlib.suppress(OSError):
                    ft.api("POST", "/forceexit", {"tradeid": "all"}, timeout=10)
            values = await until_async(
                "journal_failing back to 0 after a write landed",
                lambda: _when(failing(), lambda v: v["disk_full"] == 0),
                deadline=60,
            )
            cleared = time.monotonic() - freed
            # The write that landed may be freqtrade's own at its start; the trade closes once the venue filled its exit
            # and freqtrade's loop saw the fill.
            await until_async(
                "freqtrade counts a closed trade",
                lambda: ft.api("GET", "/profit")["closed_trade_count"] >= 1,
                deadline=60,
                in_thread=True,
            )
            assert values["database_unavailable"] == 0 and values["write_error"] == 0
            assert values["failures"] is not None and values["failures"] >= 2  # a counter: never goes back
            resp = await client.get("/readyz")
            assert resp.status == 200, await resp.text()
            print(
                f"\nfreqtrade journal: fault -> sidecar's journal_failing 1 in {detected:.2f} s; "
                f"space freed -> 0 in {cleared:.2f} s (freqtrade restarted)"
            )
    finally:
        if ft is not None:
            ft.stop()
        gateway.stop()


async def _when(values: Any, condition: Any) -> Any:
    result = await values
    return result if condition(result) else None


async def _up(client: Any) -> bool:
    return (await samples(client)).get(("tradingbot_freqtrade_up", ())) == 1


async def _down(client: Any) -> bool:
    return (await samples(client)).get(("tradingbot_freqtrade_up", ())) == 0


async def test_a_log_file_is_read_while_freqtrade_does_not_answer(tmp_path: Path, aiohttp_client: Any) -> None:
    # Nothing listens on the port: every poll fails, as for a freqtrade that exited on its database error.
    log = tmp_path / "freqtrade.log"
    log.write_text("2026-11-25 07:25:03,431 - freqtrade.worker - INFO - Bot heartbeat\n")
    sidecar = sidecar_of(f"http://127.0.0.1:{free_port()}", log)
    client = await aiohttp_client(create_app(sidecar))
    await _until_polled(sidecar, 2)
    assert journal(await samples(client), "unknown") == {
        "disk_full": 0,
        "database_unavailable": 0,
        "write_error": 0,
        "failures": 0,
    }
    with log.open("a") as out:
        out.write(f"2026-11-25 07:25:14,229 - freqtrade - ERROR - {LOOP_DISK_FULL}\n")
    await _until_polled(sidecar, sidecar.poller.polls + 2)  # the record is whole once a read finds nothing after it
    values = journal(await samples(client), "unknown")
    assert values == {"disk_full": 1, "database_unavailable": 0, "write_error": 0, "failures": 1}
    check = (await (await client.get("/readyz")).json())["checks"]["journal"]
    assert check["ok"] is False and check["reason"] == "disk_full"


async def _until_polled(sidecar: FreqtradeSidecar, polls: int, deadline: float = 30.0) -> None:
    await polling.until_async(f"{polls} polls", lambda: sidecar.poller.polls >= polls, deadline, POLL_SECONDS / 2)
