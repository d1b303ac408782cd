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
from conftest import free_port
from freqtrade_helpers import until
from system_binaries import REPO_ROOT

API_KEY = "freqtrade-test-key"
API_SECRET = base64.b64encode(b"the freqtrade tests' gateway secret").decode()
CHAOS_TOKEN = "gateway-chaos-token"


@dataclass
class Gateway:
    url: str
    api_key: str
    api_secret: str
    proc: subprocess.Popen[bytes]
    log: Path

    def ccxt(self) -> Any:
        """ccxt's real (sync) kraken client on the gateway, as a person checking the venue would use."""
        return ccxt.kraken(
            {
                "apiKey": self.api_key,
                "secret": self.api_secret,
                "enableRateLimit": False,
                "timeout": 5000,
                "urls": {"api": {"public": self.url, "private": self.url}},
            }
        )

    def call(self, method: str, *args: Any) -> Any:
        """A ccxt call on the gateway, sent again when the nonce is refused: freqtrade, the sidecar and the test sign
        with the one key the gateway has, and their nonces may arrive out of order (as on Kraken with a shared key)."""
        for attempt in range(10):
            try:
                return getattr(self.ccxt(), method)(*args)
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(tmp: Path) -> Gateway:
    """A paper venue trading BTC-USD and ETH-USD for USD, no random rejects or partial fills (the tests count trades),
    behind Kraken's REST API."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "api-key").write_text(API_KEY)
    (tmp / "api-secret").write_text(API_SECRET)
    (tmp / "chaos-token").write_text(CHAOS_TOKEN)
    port = free_port()
    config = {
        "paper": {
            "symbols": ["BTC-USD", "ETH-USD"],
            "quote_asset": "USD",
            "starting_balance": 100_000,
            "reject_probability": 0,
            "partial_fill_probability": 0,
        },
        "gateway": {
            "listen": {"host": "127.0.0.1", "port": port},
            "api_key_file": str(tmp / "api-key"),
            "api_secret_file": str(tmp / "api-secret"),
            "control_token_file": str(tmp / "chaos-token"),
            "orders_per_second": 1000,
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
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"paper-gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with urllib.request.urlopen(f"{url}/0/public/Time", timeout=2) as resp:
            return resp.status == 200

    try:
        until("the paper gateway answers", answers, deadline=30)
    except Exception:
        proc.kill()
        raise
    return Gateway(url, API_KEY, API_SECRET, proc, log)
