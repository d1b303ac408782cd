"""`trading-ops paper-gateway` (the paper venue behind Kraken's REST API) and `trading-ops gateway-chaos`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from trading_ops.cli import http_url
from trading_ops.config import Config, ConfigError, resolve_secret
from trading_ops.paper.cli import parse_params, post_json, print_answer, unreachable

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    gateway = sub.add_parser(
        "paper-gateway",
        help="serve the paper venue through Kraken's REST API, for any ccxt client",
        description="Point ccxt's kraken client at it: urls={'api': {'public': URL, 'private': URL}}; ccxt.pro's at "
        "its WebSocket v2 too: urls['api']['ws'] = {'publicV2': ws://HOST:PORT/ws/v2, 'privateV2': "
        "ws://HOST:PORT/ws-auth/v2}.",
    )
    gateway.add_argument("--host", default=None, help="override gateway.listen.host")
    gateway.add_argument("--port", type=int, default=None, help="override gateway.listen.port")
    gateway.set_defaults(handler=run_gateway)

    chaos = sub.add_parser(
        "gateway-chaos",
        help="inject a fault into the paper gateway",
        description="Faults: drop_connection [seconds=N] (until the client reconnects), outage [seconds=N] (every "
        "client of every key dropped; no reconnect ends it, it ends by itself), unavailable [seconds=N], "
        "rate_limit [seconds=N] (0 or none: until cleared), nonce [count=N], "
        "lost_reply [count=N mode=close|timeout delay=S], insufficient_funds [count=N], invalid_order [count=N], "
        "stale_market_data [symbol=S seconds=N] (until the client resubscribes), "
        "position_drift [symbol=S quantity=Q account=NAME], price_gap [symbol=S change=R], clear. "
        "WebSocket faults: ws_silent_channel [channel=book|trade|ticker|instrument|executions|balances symbol=S "
        "persistent=true] (acked, then silent while heartbeats flow, until subscribed again; persistent, a public "
        "channel: its new subscriptions too, until clear), ws_silent_socket [seconds=N "
        "endpoint=public|private|all] (0: until the client reconnects), ws_close [code=1006|1001 endpoint=...], "
        "ws_book_checksum [mode=once|persistent], ws_sequence_gap [count=N], ws_repeat_fills [count=N], "
        "ws_invalid_session [count=N], ws_msg_rate [count=N], ws_maintenance [seconds=N]. "
        "Binance dialect faults: binance_weight_exhausted (429, then a 418 ban for a client that keeps sending), "
        "binance_listen_key_expired, binance_depth_gap [symbol=S count=N], binance_depth_silent [symbol=S "
        "persistent=true] (diffs stop while the market moves, until subscribed again), binance_user_stream_silent "
        "[persistent=true], binance_user_stream_refused, binance_clock_drift [ms=N], "
        "binance_filter_refusal [count=N filter=LOT_SIZE|...]. "
        "`status` lists what is in force. Prints the gateway's answer as `key: value` lines (--json: the JSON it "
        "sent); a refusal is one line on stderr, exit 2 for a bad fault, argument or token, 1 otherwise.",
    )
    chaos.add_argument("fault", help="the fault to inject, e.g. rate_limit, or status")
    chaos.add_argument("params", nargs="*", metavar="KEY=VALUE", help="arguments (numbers are sent as numbers)")
    chaos.add_argument(
        "--url", type=http_url, default=None, help="gateway base URL, http://host:port (default: from gateway.listen)"
    )
    chaos.add_argument("--json", action="store_true", help="print the gateway's answer as the JSON it sent")
    chaos.set_defaults(handler=run_gateway_chaos)


def run_gateway(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.secret_files import refuse_loose_secrets

    refuse_loose_secrets(config)  # as ssh and PostgreSQL refuse a key others can read: at start, not mid-incident
    from aiohttp import web

    from trading_ops.paper.gateway.build import gateway_from_config
    from trading_ops.paper.gateway.kraken.gateway import BEARER_ROUTES, create_app
    from trading_ops.paper.gateway.kraken.ws.server import PRIVATE_PATH, PUBLIC_PATH
    from trading_ops.webconfig import describe, secure_app, server_web_config

    gateway = gateway_from_config(config)  # configuration problems first
    listen = config.gateway.listen
    web_config = server_web_config(listen, "gateway.listen")
    host = args.host or listen.host
    port = listen.port if args.port is None else args.port
    scheme = web_config.scheme if web_config is not None else "http"
    ws = "wss" if scheme == "https" else "ws"
    log.info(
        "paper gateway (Kraken REST) on %s://%s:%d (%s); WebSocket v2 public %s://%s:%d%s, private %s://%s:%d%s",
        scheme,
        host,
        port,
        describe(web_config),
        ws,
        host,
        port,
        PUBLIC_PATH,
        ws,
        host,
        port,
        PRIVATE_PATH,
    )
    for dialect in gateway.dialects:
        log.info("paper gateway also speaks %s on %s://%s:%d (docs/gateway.md)", dialect.name, scheme, host, port)
    app = create_app(gateway)
    secure_app(app, web_config, BEARER_ROUTES)
    ssl_context = web_config.ssl_context if web_config is not None else None
    web.run_app(app, host=host, port=port, ssl_context=ssl_context, print=None, access_log=None)
    return 0


def run_gateway_chaos(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    import aiohttp

    token = resolve_secret(config, config.gateway, "control_token", "gateway.control_token")
    if not token:
        raise ConfigError("gateway.control_token", "no token to call the gateway's fault commands with")
    listen = config.gateway.listen
    base = (args.url or f"http://{listen.host}:{listen.port}").rstrip("/")
    try:
        if args.fault == "status":
            status, payload = asyncio.run(_get(f"{base}/chaos", token))
        else:
            status, payload = asyncio.run(post_json(f"{base}/chaos/{args.fault}", token, parse_params(args.params)))
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"trading-ops: gateway-chaos: cannot reach {base}: {unreachable(exc, base)}", file=sys.stderr)
        return 1
    return print_answer("gateway-chaos", args.fault, status, payload, args.json)


async def _get(url: str, token: str) -> tuple[int, Any]:
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json(content_type=None)
