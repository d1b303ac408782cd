"""The `venue` step: the reconciler's own key on a bot's account, through ccxt's stock kraken client, against the
Kraken-compatible gateway (its own process). cancel_all takes one bot's orders and leaves another bot's on the same
account; flatten waits for a person, then closes the position; a step for a bot with no venue configured, or an
alert naming a host that is no configured bot, is one line, escalated, and nothing is done twice. Needs the
`prometheus-alertmanager` binary (the session's Alertmanager)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import Alertmanager
from engine_runs import engine_settled
from freqtrade_helpers import freqtrade_exchange
from gateway_helpers import (
    BINANCE_VENUE_KEY,
    BINANCE_VENUE_SECRET,
    SIDECAR_KEY,
    SIDECAR_SECRET,
    Gateway,
    start_gateway,
)
from polling import until, until_async
from reconciler_server import AUTH, BOT_TOKEN, READ_AUTH, READ_TOKEN, TOKEN
from webhook_payloads import alert, payload

from trading_ops.cli import main
from trading_ops.config import BotVenueConfig, load_config, order_id_prefix
from trading_ops.db.base import utcnow
from trading_ops.reconciler import page_ends
from trading_ops.reconciler.actions.escalate import APPROVAL_REQUESTED, BOT_HOST_DOWN, FAILED, escalation_alert
from trading_ops.reconciler.actions.venue import EVERY_ORDER, VenueAccount
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.page_ends import ended as end_of

pytestmark = [pytest.mark.alertmanager]

APPROVE_TOKEN = "approve-token-of-the-desk-0123456789"
APPROVE_AUTH = {"Authorization": f"Bearer {APPROVE_TOKEN}"}
HOST_DOWN = "TradingBotHostDown"
# A bot and a second bot on the same account whose name starts with the first's: the first's cancel_all must not
# take the second's orders (its ids are `bot-a-2-<run>-<n>`, which start with `bot-a-`).
BOT_A, BOT_B = "bot-a", "bot-a-2"
RUN = "19ac0ffee01"  # the runtime's run part: the start time in milliseconds, in hex


def rule(*steps: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {
        "name": "bot-host-down",
        "match": [f'alertname="{HOST_DOWN}"'],
        "allow_destructive": True,
        "max_attempts": 1,
        "cooldown": 0,
        "verify": False,
        "steps": list(steps),
        **settings,
    }


CANCEL = {"action": "venue", "operation": "cancel_all"}
FLATTEN = {"action": "venue", "operation": "flatten"}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path / "gateway")
    try:
        yield gw
    finally:
        gw.stop()


def write_config(
    tmp_path: Path,
    gw: Gateway,
    db: str,
    am_url: str,
    playbook: dict[str, Any],
    venue: bool,
    names: tuple[str, str] = (BOT_A, BOT_B),
    instance: str = "10.0.0.11:9101",
    exchange: str = "kraken",
    kind: str = "ccxt",
    orders: str | None = None,
) -> Path:
    """Two bots on the gateway's one account (`names`, default bot-a and bot-a-2); the reconciler holds a key of its
    own on it for the first (`venue: true`; of `kind`, its venue's `orders` when given) and none for the second, on
    `exchange`: kraken (the gateway's Kraken API) or binance (its Binance dialect, the same account; REST URLs named
    once by /api/v3)."""
    for name, value in (
        ("webhook-token", TOKEN),
        ("read-token", READ_TOKEN),
        ("bot-token", BOT_TOKEN),
        ("approve-token", APPROVE_TOKEN),
        ("venue-key", SIDECAR_KEY if exchange == "kraken" else BINANCE_VENUE_KEY),
        ("venue-secret", SIDECAR_SECRET if exchange == "kraken" else BINANCE_VENUE_SECRET),
    ):
        (tmp_path / name).write_text(value)
    (tmp_path / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": [playbook]}))
    bot_a: dict[str, Any] = {
        "name": names[0],
        "kind": kind,
        "instance": instance,
        "url": f"http://{instance}",
        "token_file": "bot-token",
    }
    if venue:
        rest = gw.url if exchange == "kraken" else f"{gw.url}/api/v3"
        bot_a["venue"] = {
            "exchange": exchange,
            "api_key_file": "venue-key",
            "api_secret_file": "venue-secret",
            "urls": {"public": rest, "private": rest},
            "symbols": ["BTC-USD", "ETH-USD"],
        }
        if orders is not None:
            bot_a["venue"]["orders"] = orders
    bot_b = {
        "name": names[1],
        "kind": "ccxt",
        "instance": "10.0.0.12:9101",
        "url": "http://10.0.0.12:9101",
        "token_file": "bot-token",
    }
    data = {
        "database": {"url": db},
        "reconciler": {
            "token_file": "webhook-token",
            "read_token_file": "read-token",
            "api_tokens": [{"name": "desk", "scope": "approve", "token_file": "approve-token"}],
            "playbook": "playbook.yml",
            "poll_interval_seconds": 0.05,
            "lease_seconds": 10,  # half: the idle-in-transaction limit (1.5 s cut starved sessions)
            "check_silences": False,
            "prometheus_url": "http://127.0.0.1:9",
            "alertmanager_url": am_url,
            "watchdog": {"window_seconds": 0},
        },
        "bots": [bot_a, bot_b],
    }
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rest_order(gw: Gateway, cid: str, side: str = "buy") -> dict[str, Any]:
    """A limit order far from the market (it rests), placed with the client order id a bot's runtime gives it."""
    client = gw.ccxt()
    client.load_markets()
    bid = client.fetch_ticker("BTC/USD")["bid"]
    price = bid * (0.8 if side == "buy" else 1.25)
    order: dict[str, Any] = gw.call(
        "create_order",
        "BTC/USD",
        "limit",
        side,
        0.001,
        float(client.price_to_precision("BTC/USD", price)),
        {"clientOrderId": cid},
    )
    return order


def freqtrades_order(gw: Gateway) -> dict[str, Any]:
    """A limit order far from the market (it rests), placed as freqtrade places every order: by freqtrade's own
    exchange class, whose ccxt call carries no client order id (it has no setting for one)."""
    exchange = freqtrade_exchange(gw.url, gw.api_key, gw.api_secret)
    try:
        bid = float(gw.call("fetch_ticker", "BTC/USD")["bid"])
        order: dict[str, Any] = exchange.create_order(
            pair="BTC/USD", ordertype="limit", side="buy", amount=0.001, rate=bid * 0.8, leverage=1.0
        )
    finally:
        exchange.close()
    return order


def no_id_order(gw: Gateway) -> dict[str, Any]:
    """The same through ccxt's stock kraken client, with what freqtrade's Kraken sends beside (its `_params`) and no
    client order id (cheaper than loading freqtrade's exchange)."""
    client = gw.ccxt()
    client.load_markets()
    price = float(client.price_to_precision("BTC/USD", client.fetch_ticker("BTC/USD")["bid"] * 0.8))
    order: dict[str, Any] = gw.call(
        "create_order", "BTC/USD", "limit", "buy", 0.001, price, {"trading_agreement": "agree"}
    )
    return order


def open_ids(gw: Gateway) -> set[str]:
    return {str(o.get("clientOrderId")) for o in gw.call("fetch_open_orders")}


def btc(gw: Gateway) -> float:
    return float(gw.call("fetch_balance")["total"].get("BTC") or 0)


def host_down(am: Alertmanager, instance: str) -> dict[str, Any]:
    """The webhook Alertmanager sends for a firing TradingBotHostDown it holds."""
    labels = {"alertname": HOST_DOWN, "instance": instance, "run": uuid.uuid4().hex[:8]}
    held = am.fire(labels)
    return payload(alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **labels))


async def episodes(client: Any) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/episodes", headers=READ_AUTH)
    return list((await resp.json())["episodes"])


async def ended(client: Any, state: str) -> dict[str, Any]:
    async def one() -> dict[str, Any] | None:
        found = await episodes(client)
        if len(found) == 1 and found[0]["state"] == state:
            resp = await client.get(f"/api/v1/episodes/{found[0]['id']}", headers=READ_AUTH)
            return dict(await resp.json())
        return None

    return await until_async(f"the episode {state}", one, deadline=30)


async def pages(am: Alertmanager, instance: str) -> list[dict[str, Any]]:
    held = list(am.get("alerts"))
    return [a for a in held if a["labels"]["alertname"] == FAILED and a["labels"].get("instance") == instance]


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_cancel_all_at_the_venue_takes_one_bots_orders_and_leaves_the_others(
    exchange: str,
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    gateway: Gateway,
    alertmanager: Alertmanager,
) -> None:
    """The same on Kraken (where the bot's dead man's switch would also cancel them) and on Binance (no switch for spot
    orders: this step is what cancels a dead bot's orders)."""
    for cid in (f"{BOT_A}-{RUN}-1", f"{BOT_A}-{RUN}-2", f"{BOT_B}-{RUN}-1"):
        rest_order(gateway, cid)
    assert open_ids(gateway) == {f"{BOT_A}-{RUN}-1", f"{BOT_A}-{RUN}-2", f"{BOT_B}-{RUN}-1"}
    config = write_config(
        tmp_path, gateway, migrated_sqlite, alertmanager.url, rule(CANCEL), venue=True, exchange=exchange
    )
    client = await aiohttp_client(create_app(load_config(config)))
    body = host_down(alertmanager, "10.0.0.11:9101")
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    done = await ended(client, "recovered")
    (step,) = done["attempts"][0]["steps"]
    assert step["outcome"] == "success", step["output"]
    assert f"{BOT_A} at {exchange}: 2 of its orders cancelled, none left open" in step["output"]
    assert "1 other orders on the account left alone" in step["output"]
    # At the venue: bot-a has nothing open, bot-a-2 keeps its order.
    assert open_ids(gateway) == {f"{BOT_B}-{RUN}-1"}
    # A resend of the same notification starts nothing more.
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    await engine_settled(client.app)
    assert len(await episodes(client)) == 1 and len(done["attempts"]) == 1


async def test_a_freqtrade_bots_orders_carry_no_prefix_and_orders_account_cancels_them(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    gateway: Gateway,
    alertmanager: Alertmanager,
) -> None:
    """freqtrade gives its orders no client order id, so none carries a prefix: a freqtrade bot's venue is configured
    `orders: account` (its account holds only its orders, one account per bot), and its host-down cancel_all cancels
    every open order of the account, asks again, and says so."""
    placed = await asyncio.to_thread(freqtrades_order, gateway)  # freqtrade runs an event loop of its own
    assert placed["clientOrderId"] is None and placed["status"] == "open"
    (resting,) = gateway.call("fetch_open_orders")
    assert resting["id"] == placed["id"] and not resting["clientOrderId"]
    config = write_config(
        tmp_path,
        gateway,
        migrated_sqlite,
        alertmanager.url,
        rule(CANCEL),
        venue=True,
        names=("freqtrade-1", BOT_B),
        kind="freqtrade",
        orders="account",
    )
    client = await aiohttp_client(create_app(load_config(config)))
    body = host_down(alertmanager, "10.0.0.11:9101")
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    done = await ended(client, "recovered")
    (step,) = done["attempts"][0]["steps"]
    assert step["outcome"] == "success", step["output"]
    assert step["output"] == (
        f"freqtrade-1 at kraken: 1 of its orders cancelled ({EVERY_ORDER}), none left open; exposure: flat"
    )
    assert gateway.call("fetch_open_orders") == []
    assert gateway.call("fetch_order", placed["id"], "BTC/USD")["status"] == "canceled"


@pytest.mark.parametrize("orders", ["prefix", "account"])
async def test_an_order_with_no_client_order_id_is_left_alone_by_prefix_and_taken_by_account(
    gateway: Gateway, orders: str
) -> None:
    """The default (`orders: prefix`, a bot on the runtime) cancels only ids carrying the bot's prefix: an order with no
    client order id (a freqtrade's, a person's) is left resting, and the output counts it and names the setting that
    would take it. `orders: account` takes it, and `positions` counts it as the bot's exposure until then."""
    if orders == "prefix":
        rest_order(gateway, f"{BOT_B}-{RUN}-1")  # an order of another bot's: left alone too
    placed = no_id_order(gateway)
    venue = BotVenueConfig(
        exchange="kraken", urls={"public": gateway.url, "private": gateway.url}, symbols=["BTC-USD"], orders=orders
    )
    venue.order_id_prefix = BOT_A

    async def run(operation: str) -> str:
        account = VenueAccount(venue, SIDECAR_KEY, SIDECAR_SECRET, "episode1")
        try:
            result = await account.run(operation, 4000)
        finally:
            await account.close()
        assert result.ok, result
        return result.output

    if orders == "prefix":
        assert await run("positions") == f"{BOT_A} at kraken: flat"
        assert await run("cancel_all") == (
            f"{BOT_A} at kraken: 0 of its orders cancelled, none left open; 2 other orders on the account left alone "
            "(1 with no client order id: a bot placing none, as freqtrade, needs orders: account); exposure: flat"
        )
        assert {o["id"] for o in gateway.call("fetch_open_orders")} >= {placed["id"]}
    else:
        assert await run("positions") == f"{BOT_A} at kraken: 1 of its orders open ({placed['id']})"
        assert await run("cancel_all") == (
            f"{BOT_A} at kraken: 1 of its orders cancelled ({EVERY_ORDER}), none left open; exposure: flat"
        )
        assert gateway.call("fetch_open_orders") == []


@pytest.mark.parametrize("resting", [0, 2])
async def test_a_host_down_cancel_all_makes_few_calls_and_never_waits_on_ccxts_throttler(
    gateway: Gateway, resting: int
) -> None:
    """A host-down cancel_all of a bot with no orders took 8-9 s: ccxt's throttler (kraken: 1 s a call, 3 for
    OpenOrders and Balance) spaced the step's five calls, 7 s of waiting, and the open orders were listed twice though
    nothing was cancelled. The step's calls (what reaches the venue) are counted, and none consults the throttler."""
    for n in range(resting):
        rest_order(gateway, f"{BOT_A}-{RUN}-{n}")
    venue = BotVenueConfig(exchange="kraken", urls={"public": gateway.url, "private": gateway.url}, symbols=["BTC-USD"])
    venue.order_id_prefix = BOT_A
    account = VenueAccount(venue, SIDECAR_KEY, SIDECAR_SECRET, "episode1")
    calls: list[str] = []
    throttled: list[Any] = []
    fetch2, throttle = account.exchange.fetch2, account.exchange.throttle

    async def counted(path: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return await fetch2(path, *args, **kwargs)

    async def watched(cost: Any = None) -> None:
        throttled.append(cost)
        await throttle(cost)

    account.exchange.fetch2, account.exchange.throttle = counted, watched
    try:
        result = await account.run("cancel_all", 4000)
    finally:
        await account.close()
    assert result.ok and f"{resting} of its orders cancelled, none left open" in result.output, result
    assert result.output.endswith("exposure: flat")
    # Markets once, the open orders (again only after a cancel), one balance; a cancel per order.
    listed = ["OpenOrders", *["CancelOrder"] * resting, *["OpenOrders"] * (resting > 0)]
    assert calls == ["Assets", "AssetPairs", *listed, "BalanceEx"], calls
    assert throttled == []
    assert open_ids(gateway) == set()


@pytest.mark.parametrize("exchange", ["kraken", "binance"])
async def test_positions_at_the_venue_is_flat_only_with_no_order_of_the_bot_open(
    exchange: str, gateway: Gateway
) -> None:
    """`positions` of an account that holds none of the bot's assets but has an order of the bot resting (one it sent
    just before its host died, whose answer the venue held): not "flat" (which would end the exposure page and skip
    the flatten's question), the order named; once it is cancelled, flat."""
    cid = f"{BOT_A}-{RUN}-7"
    placed = rest_order(gateway, cid)
    rest_order(gateway, f"{BOT_B}-{RUN}-1")  # another bot's on the account: not this bot's exposure
    assert btc(gateway) == 0
    rest = gateway.url if exchange == "kraken" else f"{gateway.url}/api/v3"
    venue = BotVenueConfig(exchange=exchange, urls={"public": rest, "private": rest}, symbols=["BTC-USD"])
    venue.order_id_prefix = BOT_A
    key = (SIDECAR_KEY, SIDECAR_SECRET) if exchange == "kraken" else (BINANCE_VENUE_KEY, BINANCE_VENUE_SECRET)

    async def positions() -> str:
        account = VenueAccount(venue, *key, "episode1")
        try:
            result = await account.run("positions", 4000)
        finally:
            await account.close()
        assert result.ok, result
        return result.output

    working = await positions()
    assert working == f"{BOT_A} at {exchange}: 1 of its orders open ({cid})", working
    gateway.call("cancel_order", placed["id"], "BTC/USD")
    assert await positions() == f"{BOT_A} at {exchange}: flat"


async def test_bots_whose_names_share_16_characters_each_keep_their_orders(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, gateway: Gateway, alertmanager: Alertmanager
) -> None:
    """kraken-production-1 and kraken-production-2 once shared the prefix kraken-productio, and the first's host-down
    cancel_all took the second's order. Their runtimes' prefixes (config.order_id_prefix) now differ: the cancel takes
    the first bot's orders only."""
    names = ("kraken-production-1", "kraken-production-2")
    one, two = (order_id_prefix(n) for n in names)
    for cid in (f"{one}-{RUN}-1", f"{one}-{RUN}-2", f"{two}-{RUN}-1"):
        rest_order(gateway, cid)
    config = write_config(tmp_path, gateway, migrated_sqlite, alertmanager.url, rule(CANCEL), venue=True, names=names)
    client = await aiohttp_client(create_app(load_config(config)))
    body = host_down(alertmanager, "10.0.0.11:9101")
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
    done = await ended(client, "recovered")
    (step,) = done["attempts"][0]["steps"]
    assert step["outcome"] == "success"
    assert "2 of its orders cancelled, none left open; 1 other orders on the account left alone" in step["output"]
    assert open_ids(gateway) == {f"{two}-{RUN}-1"}


async def test_flatten_at_the_venue_waits_for_approval_then_closes_the_position(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, gateway: Gateway, alertmanager: Alertmanager
) -> None:
    gateway.call("create_order", "BTC/USD", "market", "buy", 0.01, None, {"clientOrderId": f"{BOT_A}-{RUN}-1"})
    rest_order(gateway, f"{BOT_A}-{RUN}-2")
    held = btc(gateway)
    assert held >= 0.01
    playbook = rule(CANCEL, {"action": "venue", "operation": "positions"}, FLATTEN, approval_timeout="60s")
    config = write_config(tmp_path, gateway, migrated_sqlite, alertmanager.url, playbook, venue=True)
    client = await aiohttp_client(create_app(load_config(config)))
    instance = "10.0.0.11:9101"
    body = host_down(alertmanager, instance)
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

    async def pending() -> list[dict[str, Any]] | None:
        resp = await client.get("/api/v1/approvals?status=pending", headers=READ_AUTH)
        found = list((await resp.json())["approvals"])
        return found or None

    (asked,) = await until_async("the flatten's approval asked", pending, deadline=30)
    # cancel_all and positions ran without asking; the flatten waits, and nothing was sold.
    assert json.loads(asked["arguments"]) == {"action": "venue", "params": {"operation": "flatten"}}
    assert open_ids(gateway) == set()
    assert btc(gateway) == held
    episode = (await episodes(client))[0]
    detail = await (await client.get(f"/api/v1/episodes/{episode['id']}", headers=READ_AUTH)).json()
    outputs = [s["output"] for s in detail["attempts"][0]["steps"]]
    assert f"exposure: BTC-USD {held:g}" in outputs[0] and outputs[1].endswith(f": BTC-USD {held:g}")
    decided = await client.post(
        f"/api/v1/approvals/{asked['id']}",
        json={"decision": "approve", "reason": "host is gone", "by": "alice"},
        headers=APPROVE_AUTH,
    )
    assert decided.status == 200, await decided.text()
    done = await ended(client, "recovered")
    flatten = done["attempts"][0]["steps"][-1]
    assert flatten["outcome"] == "success" and "exposure now: flat" in flatten["output"]
    assert btc(gateway) == 0
    # Closed once: the sale is one trade of the reconciler's, whatever comes after.
    sells = [t for t in gateway.call("fetch_my_trades", "BTC/USD") if t["side"] == "sell"]
    assert len(sells) == 1


async def test_bad_input_is_one_line_escalated_and_done_once(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    gateway: Gateway,
    alertmanager: Alertmanager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rest_order(gateway, f"{BOT_A}-{RUN}-1")
    # No venue key configured for the bot: refused, escalated, its order untouched.
    config = write_config(tmp_path, gateway, migrated_sqlite, alertmanager.url, rule(CANCEL), venue=False)
    client = await aiohttp_client(create_app(load_config(config)))
    instance = "10.0.0.11:9101"
    body = host_down(alertmanager, instance)
    await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
    done = await ended(client, "escalated")
    (step,) = done["attempts"][0]["steps"]
    assert step["outcome"] == "refused"
    assert step["output"] == f"no venue account configured for bot instance '{instance}' (bots[].venue)"
    page = await until_async("the page", lambda: pages(alertmanager, instance), deadline=30)
    assert step["output"] in page[0]["annotations"]["description"]
    await client.post("/api/v1/alertmanager", json=body, headers=AUTH)  # a resend
    await engine_settled(client.app)
    assert len(await episodes(client)) == 1 and len(await pages(alertmanager, instance)) == 1
    assert open_ids(gateway) == {f"{BOT_A}-{RUN}-1"}


async def test_a_label_never_names_the_host_or_the_account(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    gateway: Gateway,
    alertmanager: Alertmanager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rest_order(gateway, f"{BOT_A}-{RUN}-1")
    # A step that would take its host from a label does not load: one line naming the key.
    bad = rule({**CANCEL, "host": "${host}"})
    config = write_config(tmp_path, gateway, migrated_sqlite, alertmanager.url, bad, venue=True)
    (tmp_path / "payload.json").write_text(json.dumps(payload(alert(alertname=HOST_DOWN, instance="10.0.0.11:9101"))))
    assert main(["-c", str(config), "playbook", "explain", str(tmp_path / "payload.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps[0].host: a venue step never names its account or host" in err[0]
    # An alert whose instance is a host of its own choosing, no configured bot: refused, escalated, nothing done.
    config = write_config(tmp_path, gateway, migrated_sqlite, alertmanager.url, rule(CANCEL), venue=True)
    client = await aiohttp_client(create_app(load_config(config)))
    body = host_down(alertmanager, "attacker.example:9101")
    await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
    done = await ended(client, "escalated")
    (step,) = done["attempts"][0]["steps"]
    assert step["outcome"] == "refused"
    assert step["output"] == "no bot with instance 'attacker.example:9101' in bots: (a label never names an account)"
    await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
    await engine_settled(client.app)
    assert len(await episodes(client)) == 1
    assert open_ids(gateway) == {f"{BOT_A}-{RUN}-1"}


async def test_a_host_down_again_within_the_cooldown_still_cancels_and_pages(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, gateway: Gateway, alertmanager: Alertmanager
) -> None:
    """The packaged bot-host-down's 10-minute cooldown: the same host dies, comes back and dies again (the same alert,
    a new startsAt) inside it. The second episode cancels the bot's new orders and posts the exposure page again."""
    page = {"action": "escalate", "alertname": BOT_HOST_DOWN}
    instance = unique_instance()
    config = write_config(
        tmp_path,
        gateway,
        migrated_sqlite,
        alertmanager.url,
        rule(CANCEL, page, cooldown="10m"),
        venue=True,
        instance=instance,
    )
    client = await aiohttp_client(create_app(load_config(config)))
    labels = {"alertname": HOST_DOWN, "instance": instance}
    runs = []
    for death in (1, 2):
        rest_order(gateway, f"{BOT_A}-{RUN}-{death}")
        buy = {"clientOrderId": f"{BOT_A}-{RUN}-b{death}"}  # a position the host leaves behind, too
        gateway.call("create_order", "BTC/USD", "market", "buy", 0.01, None, buy)
        held = alertmanager.fire(labels)
        runs.append(held)
        body = payload(alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **labels))
        assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

        async def done(n: int = death) -> dict[str, Any] | None:
            found = [e for e in await episodes(client) if e["state"] in ("recovered", "escalated", "failed")]
            if len(found) < n:
                return None
            newest = max(found, key=lambda e: e["id"])
            return dict(await (await client.get(f"/api/v1/episodes/{newest['id']}", headers=READ_AUTH)).json())

        episode = await until_async(f"death {death}'s episode ended", done, deadline=30)
        assert episode["state"] == "recovered", episode
        cancel, paged = episode["attempts"][0]["steps"]
        assert cancel["outcome"] == "success" and "1 of its orders cancelled, none left open" in cancel["output"]
        assert paged["outcome"] == "success"
        assert open_ids(gateway) == set()
        # Its own page (one per death: the episode's label). The reconciler ends it once the episode closed (the host
        # back: page_ends.py), which its next round may already have done: the text is read while it stands.
        exposure = [
            a
            for a in alertmanager.get("alerts")
            if a["labels"]["alertname"] == BOT_HOST_DOWN and a["labels"].get("episode") == str(episode["id"])
        ]
        assert len(exposure) <= 1, exposure
        if death == 2 and exposure:
            # The page says the cooldown did not hold the cancel back.
            assert "cooldown of rule bot-host-down until" in exposure[0]["annotations"]["description"]
            assert "acted anyway (protective)" in exposure[0]["annotations"]["description"]
        alertmanager.resolve(held)
        # The host is back: Alertmanager holds the death as resolved before the next one fires.
        await until_async(
            "the death resolved in Alertmanager",
            lambda: _resolved(alertmanager, labels),
            deadline=30,
        )
    assert runs[0]["fingerprint"] == runs[1]["fingerprint"] and runs[0]["startsAt"] != runs[1]["startsAt"]
    assert len(await episodes(client)) == 2


async def _resolved(am: Alertmanager, labels: dict[str, str]) -> bool | None:
    active = [a for a in am.get("alerts?active=true") if a["labels"] == labels]
    return True if not active else None


EXPOSURE = {"action": "escalate", "alertname": BOT_HOST_DOWN}


def active(am: Alertmanager, alertname: str, instance: str) -> list[dict[str, Any]]:
    """The alerts named `alertname` for `instance` that Alertmanager still holds active (what still pages)."""
    held = list(am.get("alerts"))
    return [a for a in held if a["labels"]["alertname"] == alertname and a["labels"].get("instance") == instance]


def unique_instance() -> str:
    """A bot instance of the test's own: the session's Alertmanager holds other tests' pages, an exposure page among
    them standing (its host never came back), and a page of the same labels would be taken for it."""
    return f"10.1.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}:9101"


async def test_a_flat_account_is_neither_paged_nor_asked_to_flatten(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, gateway: Gateway, alertmanager: Alertmanager
) -> None:
    # A dead host whose bot held orders but no position: cancel_all leaves the account flat. The exposure page, which
    # would page a person about nothing, is skipped, and so is the flatten that would wait for a person (nobody is
    # asked, nor paged). It was posted, and ended a round later, before.
    rest_order(gateway, f"{BOT_A}-{RUN}-1")
    assert btc(gateway) == 0
    playbook = rule(CANCEL, EXPOSURE, FLATTEN, approval_timeout="60s")
    instance = unique_instance()
    config = write_config(tmp_path, gateway, migrated_sqlite, alertmanager.url, playbook, venue=True, instance=instance)
    client = await aiohttp_client(create_app(load_config(config)))
    assert (
        await client.post("/api/v1/alertmanager", json=host_down(alertmanager, instance), headers=AUTH)
    ).status == 200
    done = await ended(client, "recovered")
    steps = done["attempts"][0]["steps"]
    assert [s["outcome"] for s in steps] == ["success", "skipped", "skipped"], steps
    assert steps[0]["output"].endswith("exposure: flat")
    assert steps[1]["output"].startswith("nothing to page: the account is flat (")
    assert steps[2]["output"].startswith("nothing to flatten: ") and steps[2]["output"].endswith(": flat")
    resp = await client.get("/api/v1/approvals", headers=READ_AUTH)
    assert (await resp.json())["approvals"] == []
    assert active(alertmanager, APPROVAL_REQUESTED, instance) == []
    assert active(alertmanager, BOT_HOST_DOWN, instance) == []


async def a_down_host_holding_btc(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, gateway: Gateway, alertmanager: Alertmanager
) -> tuple[Any, str, dict[str, str], dict[str, Any], float, dict[str, Any]]:
    """The account holds BTC, its bot's host is down (TradingBotHostDown fired in Alertmanager and sent to a reconciler
    whose playbook cancels, pages the exposure and flattens on approval), and the flatten's approval is asked: the
    client, the instance, the alert's labels, Alertmanager's alert, what is held and the approval."""
    gateway.call("create_order", "BTC/USD", "market", "buy", 0.01, None, {"clientOrderId": f"{BOT_A}-{RUN}-1"})
    held = btc(gateway)
    playbook = rule(CANCEL, EXPOSURE, FLATTEN, approval_timeout="60s")
    instance = unique_instance()
    config = write_config(tmp_path, gateway, migrated_sqlite, alertmanager.url, playbook, venue=True, instance=instance)
    client = await aiohttp_client(create_app(load_config(config)))
    labels = {"alertname": HOST_DOWN, "instance": instance, "run": uuid.uuid4().hex[:8]}
    fired = alertmanager.fire(labels)
    body = payload(alert(fingerprint=fired["fingerprint"], starts_at=fired["startsAt"], **labels))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

    async def asked() -> list[dict[str, Any]] | None:
        resp = await client.get("/api/v1/approvals?status=pending", headers=READ_AUTH)
        return list((await resp.json())["approvals"]) or None

    (approval,) = await until_async("the flatten's approval asked", asked, deadline=30)
    return client, instance, labels, fired, held, approval


async def test_the_exposure_page_stands_after_its_episode_closed_until_the_host_is_back(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    gateway: Gateway,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A person rejects the flatten: the episode closes, the account still holds the position and the host is still
    down. The exposure page stands (it was ended with the episode before), posted again so that Alertmanager's
    resolve_timeout does not end it, and ends once the host is back."""
    monkeypatch.setattr(page_ends, "EXPOSURE_REPOST_SECONDS", 0.2)
    client, instance, labels, fired, held, approval = await a_down_host_holding_btc(
        aiohttp_client, tmp_path, migrated_sqlite, gateway, alertmanager
    )
    decided = await client.post(
        f"/api/v1/approvals/{approval['id']}",
        json={"decision": "reject", "reason": "we keep it", "by": "alice"},
        headers=APPROVE_AUTH,
    )
    assert decided.status == 200, await decided.text()

    async def closed() -> dict[str, Any] | None:
        (episode,) = await episodes(client)
        return episode if episode["state"] not in ("pending", "waiting", "running", "verifying") else None

    await until_async("the episode closed", closed, deadline=30)
    assert btc(gateway) == held
    (page,) = active(alertmanager, BOT_HOST_DOWN, instance)

    def posted_again() -> bool | None:
        now = active(alertmanager, BOT_HOST_DOWN, instance)
        return True if len(now) == 1 and now[0]["updatedAt"] != page["updatedAt"] else None

    # Several rounds of page_ends after the episode closed: the page stands, posted again (the same alert).
    await until_async("the exposure page posted again", posted_again, deadline=30, in_thread=True)
    (standing,) = active(alertmanager, BOT_HOST_DOWN, instance)
    assert standing["startsAt"] == page["startsAt"] and f"BTC-USD {held:g}" in standing["annotations"]["description"]
    # The host comes back: its alert resolves, and the page ends.
    alertmanager.resolve(fired)
    resolved = payload(
        alert(status="resolved", fingerprint=fired["fingerprint"], starts_at=fired["startsAt"], **labels)
    )
    assert (await client.post("/api/v1/alertmanager", json=resolved, headers=AUTH)).status == 200
    await until_async(
        "the exposure page ended",
        lambda: not active(alertmanager, BOT_HOST_DOWN, instance) or None,
        deadline=30,
        in_thread=True,
    )


@pytest.mark.parametrize("end", ["flat", "host back"])
async def test_the_exposure_page_ends_when_the_account_is_flat_or_the_host_is_back(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    gateway: Gateway,
    alertmanager: Alertmanager,
    end: str,
) -> None:
    client, instance, labels, fired, held, approval = await a_down_host_holding_btc(
        aiohttp_client, tmp_path, migrated_sqlite, gateway, alertmanager
    )
    # The exposure page pages (Alertmanager holds it active) and says what the account holds.
    (page,) = active(alertmanager, BOT_HOST_DOWN, instance)
    assert f"BTC-USD {held:g}" in page["annotations"]["description"]
    if end == "flat":
        decided = await client.post(
            f"/api/v1/approvals/{approval['id']}",
            json={"decision": "approve", "reason": "host is gone", "by": "alice"},
            headers=APPROVE_AUTH,
        )
        assert decided.status == 200, await decided.text()
        await ended(client, "recovered")
        assert btc(gateway) == 0
    else:  # the host comes back: its alert resolves, the episode closes
        alertmanager.resolve(fired)
        resolved = payload(
            alert(status="resolved", fingerprint=fired["fingerprint"], starts_at=fired["startsAt"], **labels)
        )
        assert (await client.post("/api/v1/alertmanager", json=resolved, headers=AUTH)).status == 200
        await ended(client, "resolved")
    await until_async(
        "the exposure page ended",
        lambda: not active(alertmanager, BOT_HOST_DOWN, instance) or None,
        deadline=30,
        in_thread=True,
    )


def test_a_page_posted_while_a_round_of_page_ends_ran_is_ended_not_refused(alertmanager: Alertmanager) -> None:
    # page_ends reads `now` at the start of its round; an exposure page posted meanwhile starts after it. Alertmanager
    # refuses an end before the start ("start time must be before end time"), which left the page firing a round
    # longer: the end is never before the start, and Alertmanager takes it.
    instance = f"10.0.0.{uuid.uuid4().int % 200 + 20}:9101"
    round_began = utcnow()
    page = escalation_alert(BOT_HOST_DOWN, {"alertname": HOST_DOWN, "instance": instance}, instance, "held", episode=7)
    page["startsAt"] = (round_began + timedelta(seconds=0.5)).isoformat()
    alertmanager.post_alerts([page])
    assert len(active(alertmanager, BOT_HOST_DOWN, instance)) == 1
    alertmanager.post_alerts([end_of(page, round_began)])  # refused with HTTP 400 before
    until("the page ended", lambda: active(alertmanager, BOT_HOST_DOWN, instance) == [], deadline=10)
