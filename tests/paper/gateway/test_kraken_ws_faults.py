"""Each stream fault of the gateway's WebSocket, injected through its fault commands (what `trading-ops gateway-chaos`
posts) and seen by a raw client as a user would see it: a channel acked then silent while heartbeats flow (healed by
subscribing again), a whole socket silent, closes with 1001 and 1006, a corrupted book checksum once and
persistently, a gap in executions' sequence, a trade snapshot repeating fills, ESession:Invalid session, Exceeded msg
rate and system maintenance. Needs only the gateway, started per test on 127.0.0.1."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import pytest
from ccxt_helpers import chaos, limit, market, running_gateway
from ws_helpers import socket, ws_token, ws_urls

from trading_ops.bot.streams.checksum import Book

MOVING = {"tick_interval": 0.02, "volatility": 0.001}


def of(channel: str, kind: str | None = None):
    return lambda m: m.get("channel") == channel and (kind is None or m.get("type") == kind)


def acked(method: str, req_id: int):
    return lambda m: m.get("method") == method and m.get("req_id") == req_id


def levels(side: list[dict]) -> list[tuple[Decimal, Decimal]]:
    return [(level["price"], level["qty"]) for level in side]


BOOK = {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}, "req_id": 1}


async def test_a_channel_acked_then_silent_while_heartbeats_flow_until_subscribed_again() -> None:
    async with running_gateway(**MOVING) as (_gateway, base), socket(ws_urls(base)[0]) as ws:
        await ws.send(BOOK)
        await ws.until(of("book", "update"))
        answer = await chaos(base, "ws_silent_channel", channel="book", symbol="BTC-USD")
        assert answer["subscriptions"] == 1 and answer["heal"] == "subscribe again"
        await ws.until(of("heartbeat"))  # the socket talks; the book does not
        await ws.until(of("heartbeat"))
        await ws.send({"method": "ping", "req_id": 2})
        await ws.until(acked("pong", 2))
        start = len(ws.received)
        await ws.until(of("heartbeat"))
        assert not [m for m in ws.received[start:] if of("book")(m)]
        await ws.send({**BOOK, "req_id": 3})
        await ws.until(acked("subscribe", 3))
        await ws.until(of("book", "snapshot"))
        await ws.until(of("book", "update"))


async def test_a_whole_socket_silent_then_a_new_one_served() -> None:
    async with running_gateway(**MOVING) as (_gateway, base):
        url = ws_urls(base)[0]
        async with socket(url) as ws:
            await ws.send(BOOK)
            await ws.until(of("book", "update"))
            assert (await chaos(base, "ws_silent_socket"))["connections"] == 1
            # What the gateway sent before the fault is already on this side of the loopback: read it first (a
            # loaded machine's client had not, and took a book update sent before the fault for one after it).
            for _ in range(100):
                try:
                    await ws.next(deadline=0.3)
                except TimeoutError:
                    break
            else:
                pytest.fail("the socket kept sending after ws_silent_socket")
            await ws.send({"method": "ping", "req_id": 2})
            # Nothing at all comes, pong and heartbeats included (a deadline for silence, not a measurement).
            with pytest.raises(TimeoutError):
                await ws.until(lambda m: True, deadline=3)
        async with socket(url) as ws:
            await ws.send(BOOK)
            await ws.until(of("book", "update"))


@pytest.mark.parametrize("code", [1001, 1006])
async def test_the_socket_closed_with_1001_or_dropped_with_1006(code: int) -> None:
    async with running_gateway() as (_gateway, base), socket(ws_urls(base)[1]) as ws:
        await ws.next()
        assert (await chaos(base, "ws_close", code=code))["connections"] == 1
        msg = await ws.ws.receive(timeout=20)
        if code == 1001:
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001 and msg.extra == "Going away"
        else:  # no close frame: the connection just ends
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR) and ws.ws.close_code == 1006


async def test_a_corrupted_checksum_once_then_persistently() -> None:
    async with running_gateway(**MOVING) as (_gateway, base), socket(ws_urls(base)[0]) as ws:
        await ws.send(BOOK)
        snapshot = (await ws.until(of("book", "snapshot")))["data"][0]
        book = Book(10, 2, 4)
        assert book.apply(levels(snapshot["asks"]), levels(snapshot["bids"]), snapshot=True) == snapshot["checksum"]

        async def mismatches(updates: int) -> int:
            wrong = 0
            for _ in range(updates):
                data = (await ws.until(of("book", "update")))["data"][0]
                wrong += book.apply(levels(data["asks"]), levels(data["bids"]), snapshot=False) != data["checksum"]
            return wrong

        assert await mismatches(10) == 0
        await chaos(base, "ws_book_checksum", mode="once")
        assert await mismatches(20) == 1  # one update, then the book's own checksums again
        await chaos(base, "ws_book_checksum", mode="persistent")
        assert await mismatches(10) == 10
        await ws.send({**BOOK, "req_id": 2})  # a resubscribe's snapshot is wrong too
        snapshot = (await ws.until(of("book", "snapshot")))["data"][0]
        assert book.apply(levels(snapshot["asks"]), levels(snapshot["bids"]), snapshot=True) != snapshot["checksum"]
        assert (await chaos(base, "clear"))["cleared"] is True
        await asyncio.sleep(0.1)
        assert await mismatches(10) <= 1  # an update already on its way, at most


async def test_an_executions_sequence_gap_and_a_trade_snapshot_repeating_fills() -> None:
    async with running_gateway() as (gateway, base), socket(ws_urls(base)[1]) as ws:
        token = await ws_token(base)
        await ws.send({"method": "subscribe", "params": {"channel": "executions", "token": token}, "req_id": 1})
        assert (await ws.until(of("executions", "snapshot")))["sequence"] == 1
        await chaos(base, "ws_sequence_gap")
        await gateway.venue.submit(limit("gap-1"))  # its pending_new/new message is lost
        await gateway.venue.submit(limit("gap-2"))
        update = await ws.until(of("executions", "update"))
        assert update["sequence"] == 3 and update["data"][0]["cl_ord_id"] == "gap-2"

        await gateway.venue.submit(market("m-1", "ETH-USD"))
        fill = (await gateway.venue.recent_fills())[-1]
        await chaos(base, "ws_repeat_fills")
        await ws.send(
            {
                "method": "subscribe",
                "params": {"channel": "executions", "token": token, "snap_orders": False, "snap_trades": True},
                "req_id": 2,
            }
        )
        trades = (await ws.until(of("executions", "snapshot")))["data"]
        assert [t["exec_id"] for t in trades] == [fill.trade_id, fill.trade_id]


async def test_executions_persistently_silent_across_a_resubscribe_until_cleared() -> None:
    """`ws_silent_channel channel=executions persistent=true`: the subscription, and a new one, acked and then silent
    (no snapshot, no update) while the socket answers pings; after `clear` a new subscription is served again."""
    async with running_gateway() as (gateway, base), socket(ws_urls(base)[1]) as ws:
        token = await ws_token(base)
        subscribe = {"method": "subscribe", "params": {"channel": "executions", "token": token}}
        await ws.send({**subscribe, "req_id": 1})
        await ws.until(of("executions", "snapshot"))
        answer = await chaos(base, "ws_silent_channel", channel="executions", persistent=True)
        assert answer["subscriptions"] == 1 and answer["heal"] == "clear"
        await ws.send({**subscribe, "req_id": 2})
        await ws.until(acked("subscribe", 2))
        start = len(ws.received)
        await gateway.venue.submit(limit("silent-1"))
        await ws.send({"method": "ping", "req_id": 3})
        await ws.until(acked("pong", 3))
        await ws.until(of("heartbeat"))
        assert not [m for m in ws.received[start:] if of("executions")(m)]
        await chaos(base, "clear")
        await ws.send({**subscribe, "req_id": 4})
        snapshot = await ws.until(of("executions", "snapshot"))
        assert "silent-1" in [o["cl_ord_id"] for o in snapshot["data"]]


async def test_invalid_session_exceeded_msg_rate_and_maintenance() -> None:
    async with running_gateway(**MOVING) as (_gateway, base), socket(ws_urls(base)[1]) as ws:
        token = await ws_token(base)
        await chaos(base, "ws_invalid_session")
        subscribe = {"method": "subscribe", "params": {"channel": "executions", "token": token}}
        await ws.send({**subscribe, "req_id": 1})
        assert (await ws.until(acked("subscribe", 1)))["error"] == "ESession:Invalid session"
        await ws.send({**subscribe, "req_id": 2})
        assert (await ws.until(acked("subscribe", 2)))["success"] is True
        await chaos(base, "ws_msg_rate", count=2)
        for req_id in (3, 4):
            await ws.send({"method": "ping", "req_id": req_id})
            assert (await ws.until(lambda m, r=req_id: m.get("req_id") == r))["error"] == "Exceeded msg rate"
        await ws.send({"method": "ping", "req_id": 5})
        assert (await ws.until(acked("pong", 5)))["req_id"] == 5

        await chaos(base, "ws_maintenance", seconds=1)
        status = await ws.until(of("status"))
        assert status["data"][0]["system"] == "maintenance"
        order = {
            "order_type": "limit",
            "side": "buy",
            "order_qty": Decimal("0.01"),
            "limit_price": 1000,
            "symbol": "BTC/USD",
            "token": token,
        }
        await ws.send({"method": "add_order", "params": order, "req_id": 6})
        assert (await ws.until(acked("add_order", 6)))["error"] == "EService:Unavailable"
        assert (await ws.until(of("status")))["data"][0]["system"] == "online"
        await ws.send({"method": "add_order", "params": order, "req_id": 7})
        assert (await ws.until(acked("add_order", 7)))["success"] is True


async def test_the_faults_are_listed_and_bad_arguments_refused() -> None:
    async with running_gateway() as (_gateway, base), socket(ws_urls(base)[0]) as _ws:
        await chaos(base, "ws_sequence_gap", count=3)
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer chaos-token"}
            async with session.get(f"{base}/chaos", headers=headers) as r:
                listed = (await r.json())["websocket"]
            assert listed["ws_sequence_gap"] == 3 and listed["connections"] == 1
            async with session.post(f"{base}/chaos/ws_close", json={"code": 1000}, headers=headers) as r:
                assert r.status == 400 and "code must be one of 1006, 1001" in (await r.json())["error"]
