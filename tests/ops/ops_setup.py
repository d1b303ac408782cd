"""The scheduled operations under test: the bots they act on (real control APIs) and their configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler_server import BOT_TOKEN
from secret_file import write_secret

from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.config import Config, parse_config


@dataclass
class Bot:
    name: str
    url: str
    instrumentation: Instrumentation

    @property
    def state(self) -> str:
        return str(self.instrumentation.state.state.value)


def ops_config(
    tmp_path: Path,
    db_url: str,
    *,
    alertmanager_url: str = "http://127.0.0.1:9",
    bots: dict[str, Bot] | None = None,
    notify_urls: list[str] | None = None,
    **sections: Any,
) -> Config:
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    targets = {name: {"url": b.url, "token_file": str(tmp_path / "bot-token")} for name, b in (bots or {}).items()}
    data: dict[str, Any] = {
        "database": {"url": db_url},
        "reconciler": {"alertmanager_url": alertmanager_url, "targets": targets},
        **sections,
    }
    if notify_urls:
        write_secret(tmp_path / "apprise-urls", "\n".join(notify_urls))
        data["notifications"] = {"urls_file": str(tmp_path / "apprise-urls")}
    return parse_config(data, base_dir=tmp_path)
