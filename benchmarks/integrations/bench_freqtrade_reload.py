"""A real freqtrade's reload_config (what the sidecar's `reconnect` asks of it) many times over: does freqtrade come
back from each within a deadline, and how long does each take; prints JSON.

freqtrade live on the paper gateway (tests/freqtrade_helpers.py, tests/gateway_helpers.py). Each run: POST
/reload_config, then until GET /health answers with a newer bot_startup_ts. A freqtrade that does not come back within
`--deadline` is aborted (SIGABRT) and its threads' Python stacks (faulthandler) printed: where it hangs.

What polls freqtrade meanwhile decides whether a reload can hang (docs/freqtrade.md: freqtrade's API server waits for
every connection to close): a sidecar-like poll (each endpoint the sidecar reads, concurrently, every 0.2 s, each on a
connection of its own) unless `--no-poll`; `--clients N`: N clients polling /health on kept-alive connections
(`client`; with `--close` each request on a connection of its own, as the sidecar's since); `--sidecar`: the real
`trading-ops freqtrade` sidecar process. `--outage S` puts the gateway in an outage for S seconds before each reload
(as test_freqtrade_sidecar's venue test); `--restart`: after each reload freqtrade hung (SIGSTOP) and restarted as the
playbook does (SIGCONT, SIGKILL, start); `--load N` runs N busy processes beside it.

Measured (docs/freqtrade.md): `--no-poll --clients 16` hung the 2nd reload in one run, the 3rd in another;
`--no-poll --clients 16 --close` came back 60 times of 60. `--sidecar --outage 3 --load 1`: the 58th hung with the
sidecar on kept-alive connections, 100 of 100 came back with its connection per request.

Usage: python benchmarks/integrations/bench_freqtrade_reload.py [--runs 50] [--deadline 60] [--clients 16 [--close]]
    [--sidecar]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from freqtrade_helpers import PASSWORD, USERNAME, make_freqtrade  # noqa: E402
from gateway_helpers import start_gateway  # noqa: E402
from ports import free_port  # noqa: E402
from secret_file import write_secret  # noqa: E402
from server_process import stop as stop_process  # noqa: E402
from server_process import wait_http  # noqa: E402

BUSY = "while True: pass"
# What the sidecar's poll asks freqtrade every POLL seconds (trading_ops/integrations/freqtrade/poller.py): answered
# meanwhile a reload_config stops freqtrade's API server and starts a new one.
POLLED = ("/health", "/show_config", "/status", "/profit", "/balance", "/locks", "/daily?timescale=1", "/logs?limit=50")
POLL = 0.2


def poll(ft: Any, stop: threading.Event) -> None:
    """The sidecar's poll, in a thread of its own: each endpoint concurrently, each answer or error ignored."""
    while not stop.is_set():
        threads = [threading.Thread(target=_get, args=(ft, path)) for path in POLLED]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.wait(POLL)


def client(ft: Any, stop: threading.Event, seed: int, keep_alive: bool) -> None:
    """A client of freqtrade's API polling GET /health every POLL seconds. `keep_alive`: on kept-alive connections,
    as the sidecar's aiohttp session had them: it stays on a connection while freqtrade answers it with an error (a
    pool reuses what answers), opens a new one after an error of the connection, and after an answer now and then (a
    pool's connections come and go), so that connections are being opened when a reload_config stops the server.
    Else each request on a connection of its own, closed with its answer (Connection: close), as the sidecar's now."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Basic {b64encode(f'{USERNAME}:{PASSWORD}'.encode()).decode()}"}
    if not keep_alive:
        headers["Connection"] = "close"
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", ft.api_port, timeout=3)
        try:
            while not stop.wait(POLL):
                conn.request("GET", "/api/v1/health", headers=headers)
                answer = conn.getresponse()
                answer.read()
                if not keep_alive or (answer.status == 200 and rng.random() < 0.3):
                    break
        except (OSError, http.client.HTTPException):
            stop.wait(POLL)
        finally:
            conn.close()


def _get(ft: Any, path: str) -> None:
    try:
        ft.api("GET", path, timeout=3)
    except (OSError, ValueError):
        pass


def reload_once(ft: Any, deadline: float) -> float | None:
    """Seconds until freqtrade answers again after one reload_config, or None when it does not within `deadline`."""
    before = ft.api("GET", "/health")["bot_startup_ts"]
    start = time.monotonic()
    ft.api("POST", "/reload_config")
    while time.monotonic() - start < deadline:
        try:
            health = ft.api("GET", "/health", timeout=2)
            if health.get("bot_startup_ts", before) != before and health.get("last_process_ts"):
                return time.monotonic() - start
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


def restart_once(ft: Any, deadline: float) -> float | None:
    """Seconds until a hung (SIGSTOP) freqtrade, killed and started again as the restart playbook does
    (tests/freqtrade/restart_freqtrade.py: SIGCONT, SIGKILL, wait until it is gone, start), answers with its loop
    running; None when not within `deadline`."""
    assert ft.proc is not None
    ft.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.0)
    start = time.monotonic()
    ft.proc.send_signal(signal.SIGCONT)
    ft.proc.kill()
    ft.proc.wait(deadline)
    ft.proc = None
    try:
        ft.start()  # waits until its API answers and its loop has run (health's last_process_ts)
    except (TimeoutError, RuntimeError):
        return None
    took = time.monotonic() - start
    return took if took < deadline else None


def start_sidecar(tmp: Path, ft: Any, gateway: Any) -> subprocess.Popen[bytes]:
    """The `trading-ops freqtrade` sidecar process on `ft`, polling it at the sidecar tests' interval (aiohttp, its
    connections kept alive) and reconciling through the gateway."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name, value in (("token", "bench-token"), ("ft-password", PASSWORD)):
        write_secret(tmp / name, value)
    write_secret(tmp / "gw-key", gateway.sidecar_key)
    write_secret(tmp / "gw-secret", gateway.sidecar_secret)
    port = free_port()
    target = {
        "url": ft.url,
        "username": USERNAME,
        "password_file": str(tmp / "ft-password"),
        "listen": {"host": "127.0.0.1", "port": port},
        "ccxt": {
            "exchange": "kraken",
            "api_key_file": str(tmp / "gw-key"),
            "api_secret_file": str(tmp / "gw-secret"),
            "urls": {"public": gateway.url, "private": gateway.url},
            "symbols": ["BTC-USD", "ETH-USD"],
            "enable_rate_limit": False,
            "timeout_seconds": 2,
        },
    }
    config = {
        "freqtrade": {
            "control_token_file": str(tmp / "token"),
            "poll_interval_seconds": POLL,
            "request_timeout_seconds": 3,
            "reconcile_interval_seconds": 0,
            "targets": {"ft-bench": target},
        }
    }
    (tmp / "sidecar.yaml").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "--config", str(tmp / "sidecar.yaml"), "freqtrade"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "sidecar.log", "wb"),  # noqa: SIM115
    )
    wait_http(f"http://127.0.0.1:{port}/metrics", proc=proc)
    return proc


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--load", type=int, default=0, help="busy processes beside freqtrade")
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--no-poll", action="store_true", help="no sidecar-like poll beside the reloads")
    parser.add_argument("--restart", action="store_true", help="after each reload, SIGSTOP, kill and start again")
    parser.add_argument("--clients", type=int, default=0, help="clients polling /health beside the reloads (client)")
    parser.add_argument("--close", action="store_true", help="the clients' connections closed after each request")
    parser.add_argument("--sidecar", action="store_true", help="the real sidecar process polls freqtrade too")
    parser.add_argument("--outage", type=float, default=0.0, help="seconds of a gateway outage before each reload")
    parser.add_argument("--keep", type=Path, help="a directory to copy a hung freqtrade's log and stderr to")
    return parser.parse_args()


def reloads(args: argparse.Namespace, ft: Any, gateway: Any) -> tuple[list[float], dict[str, Any] | None]:
    """Each reload's seconds until freqtrade answered again, and the hung one (its run, its diagnostics) if any."""
    times: list[float] = []
    for run in range(args.runs):
        if args.outage:
            gateway.chaos("outage")
            time.sleep(args.outage)
            gateway.chaos("clear")
        took = reload_once(ft, args.deadline)
        if args.restart and took is not None:
            took = restart_once(ft, args.deadline)
        if took is None:
            hung = {"run": run, "diagnostics": ft.diagnostics()}
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for path in (ft.log, ft.workdir / "freqtrade.stderr"):
                    if path.exists():
                        shutil.copy(path, args.keep / path.name)
            return times, hung
        times.append(took)
        print(f"run {run}: {took:.2f}s", file=sys.stderr, flush=True)
    return times, None


def main() -> None:
    args = arguments()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops it: its finally stops what it started
    with tempfile.TemporaryDirectory(prefix="ft-reload-") as tmp:
        gateway = start_gateway(Path(tmp) / "gateway")
        ft = make_freqtrade(Path(tmp) / "ft", gateway.url, gateway.api_key, gateway.api_secret, hold_seconds=3600)
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
        stop = threading.Event()
        sidecar = None
        try:
            ft.start()
            if not args.no_poll:
                threading.Thread(target=poll, args=(ft, stop), daemon=True).start()
            for seed in range(args.clients):
                threading.Thread(target=client, args=(ft, stop, seed, not args.close), daemon=True).start()
            if args.sidecar:
                sidecar = start_sidecar(Path(tmp) / "sidecar", ft, gateway)
            times, hung = reloads(args, ft, gateway)
        finally:
            stop.set()
            if sidecar is not None:
                stop_process(sidecar)
            for proc in busy:
                proc.kill()
                proc.wait()
            ft.stop()
            gateway.stop()
    result: dict[str, Any] = {
        "what": "reload_config then restart" if args.restart else "reload_config",
        "load": args.load,
        "poll": not args.no_poll,
        "sidecar": args.sidecar,
        "clients": args.clients,
        "keep_alive": not args.close,
        "outage_s": args.outage,
        "back": len(times),
        "hung": hung is not None,
    }
    if times:
        result |= {"p50_s": round(statistics.median(times), 2), "max_s": round(max(times), 2)}
    print(json.dumps(result))
    if hung is not None:
        print(f"hung at run {hung['run']}:\n{hung['diagnostics']}")


if __name__ == "__main__":
    main()
