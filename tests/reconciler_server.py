"""The reconciler under test: its tokens, playbook file and configuration, and its app served on a real port from a
thread for the tests whose clients are synchronous."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from ports import free_port
from secret_file import write_secret

from trading_ops.config import Config, parse_config

TOKEN = "webhook-token"
READ_TOKEN = "read-token"
BOT_TOKEN = "bot-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The episode API's token (reconciler.read_token), not the webhook's.
READ_AUTH = {"Authorization": f"Bearer {READ_TOKEN}"}


def write_playbook(tmp_path: Path, rules: list[dict[str, Any]], defaults: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "playbook.yml"
    path.write_text(yaml.safe_dump({"version": 1, "defaults": defaults or {}, "rules": rules}))
    return path


def make_config(tmp_path: Path, db_url: str, notify_urls: list[str] | None = None, **reconciler: Any) -> Config:
    """A configuration for tests: fast polling, silences not checked, tokens (and apprise URLs) in files."""
    write_secret(tmp_path / "webhook-token", TOKEN)
    write_secret(tmp_path / "read-token", READ_TOKEN)
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    rc: dict[str, Any] = {
        "token_file": str(tmp_path / "webhook-token"),
        "read_token_file": str(tmp_path / "read-token"),
        "poll_interval_seconds": 0.05,
        "check_silences": False,
        "prometheus_url": "http://127.0.0.1:9",
        "alertmanager_url": "http://127.0.0.1:9",
        "watchdog": {"window_seconds": 0},
    }
    rc.update(reconciler)
    data: dict[str, Any] = {"database": {"url": db_url}, "reconciler": rc}
    if notify_urls:
        write_secret(tmp_path / "apprise-urls", "\n".join(notify_urls))
        data["notifications"] = {"urls_file": str(tmp_path / "apprise-urls")}
    return parse_config(data, base_dir=tmp_path)


def write_one_rule_config(
    tmp_path: Path, db_url: str, alertname: str, step: dict[str, Any], bot: dict[str, Any], **reconciler: Any
) -> Path:
    """A configuration file for a reconciler with one bot (`bot`, its entry of `bots:`) and one rule: `alertname`
    runs `step` once, unverified, no cooldown. Tokens in files beside it; `reconciler` adds or replaces settings."""
    for name, value in (("webhook-token", TOKEN), ("read-token", READ_TOKEN), ("bot-token", BOT_TOKEN)):
        (tmp_path / name).write_text(value)
    rule = {
        "name": "bot-loop-restart",
        "match": [f'alertname="{alertname}"'],
        "max_attempts": 1,
        "cooldown": 0,
        "verify": False,
        "steps": [step],
    }
    (tmp_path / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": [rule]}))
    rc: dict[str, Any] = {
        "token_file": "webhook-token",
        "read_token_file": "read-token",
        "playbook": "playbook.yml",
        "poll_interval_seconds": 0.05,
        "check_silences": False,
        "prometheus_url": "http://127.0.0.1:9",
        "watchdog": {"window_seconds": 0},
        **reconciler,
    }
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": db_url}, "reconciler": rc, "bots": [bot]}))
    return path


class ThreadedServer:
    """The reconciler app served on a real port from a thread with its own event loop (for sync clients)."""

    def __init__(self, config: Config) -> None:
        from trading_ops.reconciler.app import create_app

        self.config = config
        self.port = free_port()
        self.app = create_app(config)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"reconciler did not start: {self.error}")
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, access_log=None)
        try:
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        except BaseException as exc:  # reported to the starting test
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(
            f"{self.url}/api/v1/alertmanager",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **(headers or AUTH)},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
