"""The trading-ops configuration the stack's bot and reconciler run with: the user's file, wired to the stack."""

from __future__ import annotations

import copy
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trading_ops.config import Config, ConfigError, DatabaseConfig, parse_config
from trading_ops.stack.layout import HOST, Layout, Ports
from trading_ops.stack.repo import dump_yaml

# Token files `make run` creates; `up` creates them too when the configuration names none.
DEFAULT_CONTROL_TOKEN = "var/secrets/control-token"
DEFAULT_RECONCILER_TOKEN = "var/secrets/reconciler-token"
# The episode API's token (reconciler.read_token): the status line reads the episodes with it.
DEFAULT_READ_TOKEN = "var/secrets/reconciler-read-token"
TOKEN_BYTES = 32
# Keys whose string values are paths relative to the configuration file; the generated file lives elsewhere,
# so they are made absolute. A playbook value that names no file ("default", "docker") is kept as it is.
PATH_KEY_SUFFIXES = ("_file", "_dir", "_path", "_socket")
PATH_KEYS = ("playbook",)
SQLITE_PREFIX = "sqlite:///"
SQLITE_MEMORY = "sqlite:///:memory:"
DEFAULT_DATABASE_URL = DatabaseConfig().url


@dataclass(frozen=True)
class AppConfig:
    path: Path
    config: Config
    control_token_file: Path
    reconciler_token_file: Path
    read_token_file: Path | None = None


def ensure_token(path: Path) -> Path:
    """A bearer token in `path` (mode 600), created with secrets.token_urlsafe when the file is missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
    elif not path.read_text(encoding="utf-8").strip():
        raise ConfigError(str(path), "token file is empty")
    return path


def _absolute(data: Any, base: Path) -> Any:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            is_path = str(key).endswith(PATH_KEY_SUFFIXES) or key in PATH_KEYS
            if is_path and isinstance(value, str) and value:
                candidate = (base / Path(value).expanduser()).resolve()
                looks_like_path = "/" in value or value.endswith((".yml", ".yaml"))
                named = key in PATH_KEYS and not candidate.exists() and not looks_like_path
                out[key] = value if named else str(candidate)
            else:
                out[key] = _absolute(value, base)
        return out
    if isinstance(data, list):
        return [_absolute(v, base) for v in data]
    return data


def _token_path(section: dict[str, Any], key: str, base: Path, default: str) -> Path:
    value = section.get(f"{key}_file")
    return Path(value) if value else (base / default).resolve()


def build_app_config(source: Path | None, layout: Layout, ports: Ports, bot_kind: str = "paper") -> AppConfig:
    """Write the stack's configuration into the state dir: the user's file (or the defaults) with the bot and the
    reconciler on the stack's ports, tokens from files, and the reconciler pointed at the local servers."""
    if source is not None and source.exists():
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        base = source.resolve().parent
    else:
        raw, base = {}, Path.cwd().resolve()
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", "expected a mapping")
    data: dict[str, Any] = _absolute(copy.deepcopy(raw), base)
    db = data.setdefault("database", {})
    if not db.get("url_file") and not db.get("url_env"):
        # A relative SQLite path (the default one included) is relative to the user's file, not to the copy.
        url = str(db.get("url", DEFAULT_DATABASE_URL))
        if url.startswith(SQLITE_PREFIX) and not url.startswith(SQLITE_PREFIX + "/") and url != SQLITE_MEMORY:
            db["url"] = SQLITE_PREFIX + str((base / url[len(SQLITE_PREFIX) :]).resolve())
    bot = data.setdefault("bot", {})
    bot.setdefault("data_dir", str((base / "var").resolve()))
    rc = data.setdefault("reconciler", {})
    control = ensure_token(_token_path(bot, "control_token", base, DEFAULT_CONTROL_TOKEN))
    webhook = ensure_token(_token_path(rc, "token", base, DEFAULT_RECONCILER_TOKEN))
    read = ensure_token(_token_path(rc, "read_token", base, DEFAULT_READ_TOKEN))
    bot.pop("control_token_env", None)
    bot["control_token_file"] = str(control)
    bot["listen"] = {"host": HOST, "port": ports.bot}
    rc.pop("token_env", None)
    rc["token_file"] = str(webhook)
    rc.pop("read_token_env", None)
    rc["read_token_file"] = str(read)
    rc["listen"] = {"host": HOST, "port": ports.reconciler}
    rc["prometheus_url"] = ports.url("prometheus")
    rc["alertmanager_url"] = ports.url("alertmanager")
    # The stack runs one bot: it is the bots: list (the reconciler's targets are derived from it, and Prometheus
    # scrapes the same instance through its file_sd file). Prometheus labels the bot's series
    # instance="<host>:<port>" of its scrape target: that is how the reconciler's bot action finds the control API.
    rc.pop("targets", None)
    entry = {"name": bot.get("name", "paper-1"), "kind": bot_kind, "instance": ports.address("bot")}
    data["bots"] = [{**entry, "url": ports.url("bot"), "token_file": str(control)}]
    config = parse_config(data, base_dir=layout.state_dir.resolve())
    dump_yaml(
        layout.app_config,
        data,
        f"Generated by `trading-ops up` from {source.resolve() if source else 'the defaults'}: the stack's ports,\n"
        "token files and local Prometheus and Alertmanager. Edit the source file, not this copy.",
    )
    return AppConfig(layout.app_config, config, control, webhook, read)
