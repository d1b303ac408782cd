"""The Kraken-compatible paper gateway (`trading-ops paper-gateway`) as its own process on a free loopback port, for
tests that run a third-party bot (freqtrade) on it; ccxt's real kraken client to look at what the venue holds."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ccxt
from freqtrade_helpers import until
from ports import free_port
from secret_file import write_secret
from system_binaries import REPO_ROOT

# Three keys of the venue's one account, one per client, as on Kraken (its nonce must increase per key, and
# freqtrade does not send an order again whose nonce came in behind another client's): freqtrade's, its sidecar's
# (reconciliation) and the test's own (looking at what the venue holds).
API_KEY = "freqtrade-test-key"
API_SECRET = base64.b64encode(b"the freqtrade tests' gateway secret").decode()
SIDECAR_KEY = "sidecar-test-key"
SIDECAR_SECRET = base64.b64encode(b"the sidecar's key on the same account").decode()
# A Binance key of the main account (the gateway's Binance dialect): the reconciler's own there, in the venue tests.
BINANCE_VENUE_KEY = "binanceReconcilerKey0123456789"
BINANCE_VENUE_SECRET = "the reconciler's binance secret"
# A bot's Binance key on the main account, and a second bot's on the sub-account SECOND_ACCOUNT (an account of its
# own): tests/deploy/test_host_down_e2e.py on Binance. Binance signs with a timestamp, not a nonce: any key could be
# shared by clients, but each client has its own here as on Kraken.
BINANCE_BOT_KEY = "binanceBotKey0123456789"
BINANCE_BOT_SECRET = "the first bot's binance secret"
BINANCE_SECOND_KEY = "binanceSecondBotKey0123456789"
BINANCE_SECOND_SECRET = "the second bot's binance secret, on an account of its own"
CHECK_KEY = "test-check-key"
CHECK_SECRET = base64.b64encode(b"the key the test looks at the venue with").decode()
# A second bot's key, of an account of its own (the gateway's sub-account SECOND_ACCOUNT: one account per bot), and
# the test's own key on that account (tests/deploy/test_host_down_e2e.py: two bots on one venue).
SECOND_ACCOUNT = "second"
SECOND_KEY = "second-bot-key"
SECOND_SECRET = base64.b64encode(b"a second bot's key on an account of its own").decode()
SECOND_CHECK_KEY = "second-check-key"
SECOND_CHECK_SECRET = base64.b64encode(b"the key the test looks at the second account with").decode()
CHAOS_TOKEN = "gateway-chaos-token"


@dataclass
class Gateway:
    url: str
    api_key: str  # freqtrade's
    api_secret: str
    proc: subprocess.Popen[bytes]
    log: Path
    sidecar_key: str = SIDECAR_KEY
    sidecar_secret: str = SIDECAR_SECRET

    def ccxt(self, key: tuple[str, str] = (CHECK_KEY, CHECK_SECRET)) -> Any:
        """ccxt's real (sync) kraken client on the gateway, as a person checking the venue would use (a key of their
        own on the account; `key` another account's)."""
        return ccxt.kraken(
            {
                "apiKey": key[0],
                "secret": key[1],
                "enableRateLimit": False,
                "timeout": 5000,
                "urls": {"api": {"public": self.url, "private": self.url}},
            }
        )

    def call(self, method: str, *args: Any, key: tuple[str, str] = (CHECK_KEY, CHECK_SECRET)) -> Any:
        """A ccxt call on the gateway with the test's key (of the main account; `key` another), sent again when its
        nonce is refused (calls of the test's threads on that one key may arrive out of order)."""
        for attempt in range(10):
            try:
                return getattr(self.ccxt(key), method)(*args)
            except ccxt.InvalidNonce:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def chaos(self, fault: str, **params: Any) -> Any:
        """Inject a fault (`POST /chaos/{fault}`), e.g. drop_connection for `seconds`, or `clear`."""
        req = urllib.request.Request(
            f"{self.url}/chaos/{fault}",
            data=json.dumps(params).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {CHAOS_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def diagnostics(self) -> str:
        """What a failed test's report shows of the gateway (tests/conftest.py): its log's last lines."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-40:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(tmp: Path, host: str = "127.0.0.1", **paper: Any) -> Gateway:
    """A paper venue trading BTC-USD and ETH-USD for USD, no random rejects or partial fills (the tests count trades),
    behind Kraken's REST API on `host` (a test network's address, for bots on its test hosts); `paper` overrides
    settings of its paper: section (volatility=0: a market that stands still)."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_secret(tmp / "api-key", API_KEY)
    write_secret(tmp / "api-secret", API_SECRET)
    write_secret(tmp / "chaos-token", CHAOS_TOKEN)
    keys = (
        ("sidecar", SIDECAR_KEY, SIDECAR_SECRET),
        ("check", CHECK_KEY, CHECK_SECRET),
    )
    second = (("second", SECOND_KEY, SECOND_SECRET), ("second-check", SECOND_CHECK_KEY, SECOND_CHECK_SECRET))
    binance = (
        ("main", "binance", BINANCE_VENUE_KEY, BINANCE_VENUE_SECRET),
        ("main", "binance-bot", BINANCE_BOT_KEY, BINANCE_BOT_SECRET),
        (SECOND_ACCOUNT, "binance-second", BINANCE_SECOND_KEY, BINANCE_SECOND_SECRET),
    )
    for name, key, secret in (*keys, *second, *((n, k, sec) for _, n, k, sec in binance)):
        write_secret(tmp / f"{name}-key", key)
        write_secret(tmp / f"{name}-secret", secret)
    port = free_port()
    config = {
        "paper": {
            "symbols": ["BTC-USD", "ETH-USD"],
            "quote_asset": "USD",
            "starting_balance": 100_000,
            "reject_probability": 0,
            "partial_fill_probability": 0,
            **paper,
        },
        "gateway": {
            "listen": {"host": host, "port": port},
            "api_key_file": str(tmp / "api-key"),
            "api_secret_file": str(tmp / "api-secret"),
            "control_token_file": str(tmp / "chaos-token"),
            "extra_keys": [
                {"api_key_file": str(tmp / f"{name}-key"), "api_secret_file": str(tmp / f"{name}-secret")}
                for name, _, _ in keys
            ],
            "accounts": [
                {
                    "name": SECOND_ACCOUNT,
                    "api_key_file": str(tmp / "second-key"),
                    "api_secret_file": str(tmp / "second-secret"),
                    "extra_keys": [
                        {
                            "api_key_file": str(tmp / "second-check-key"),
                            "api_secret_file": str(tmp / "second-check-secret"),
                        }
                    ],
                }
            ],
            "orders_per_second": 1000,
            # The same market and accounts in Binance spot's dialect, each reached with Binance keys of its own.
            "binance": {
                "keys": [
                    {
                        "account": account,
                        "api_key_file": str(tmp / f"{name}-key"),
                        "api_secret_file": str(tmp / f"{name}-secret"),
                    }
                    for account, name, _, _ in binance
                ]
            },
        },
    }
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(config))
    log = tmp / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "--config", str(path), "paper-gateway"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115
    )
    url = f"http://{host}:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"paper-gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with urllib.request.urlopen(f"{url}/0/public/Time", timeout=2) as resp:
            return resp.status == 200

    try:
        until("the paper gateway answers", answers, deadline=60)
    except Exception:
        proc.kill()
        raise
    return Gateway(url, API_KEY, API_SECRET, proc, log)
