"""Sections several services share: listen addresses, TLS clients, the database, named tokens, logging,
notifications."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trading_ops.config.fields import (
    SQLITE_FILE_URL,
    ConfigError,
    bounded,
    check_database_url,
    check_host,
    check_name,
    checked,
    path_field,
    read_secret_file,
    secret,
)
from trading_ops.scopes import SCOPES


@dataclass
class ListenConfig:
    host: str = checked("127.0.0.1", check_host)
    port: int = bounded(9101, min=0, max=65535)
    # The Prometheus exporter-toolkit web configuration (tls_server_config incl. mutual TLS, basic_auth_users with
    # bcrypt hashes; relative to this file): empty = plain HTTP. See trading_ops/webconfig.py and the README.
    web_config_file: str = path_field()


@dataclass
class TLSClientConfig:
    """TLS of a client (Prometheus's tls_config, in short): the CA its servers' certificates are verified against
    (empty: the system's), and a certificate and key for servers that ask for one (mutual TLS)."""

    ca_file: str = path_field()
    cert_file: str = path_field()
    key_file: str = path_field()


@dataclass
class DatabaseConfig:
    # SQLAlchemy URL: sqlite:///var/trading-ops.db (embedded default, WAL) or
    # postgresql+psycopg://user@host:5432/db. A URL with a password belongs in url_env / url_file.
    url: str = checked("sqlite:///var/trading-ops.db", lambda value: check_database_url(value, in_file=True))
    url_env: str = ""
    url_file: str = path_field()
    # SQLite only: NORMAL survives a process crash (kill -9) in WAL mode; FULL also survives power loss.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"

    def validate(self, prefix: str, given: set[str]) -> None:
        sources = [name for name in ("url", "url_file", "url_env") if name in given]
        if len(sources) > 1:
            raise ConfigError(f"{prefix}.{sources[1]}", "give only one of url, url_file and url_env")

    def resolved_url(self, base_dir: Path | None = None) -> str:
        """The URL from url, url_file (relative to `base_dir`, the configuration's directory) or url_env."""
        if self.url_file:
            path = Path(self.url_file).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            key, value = "database.url_file", read_secret_file("database.url_file", str(path))
        elif self.url_env:
            key, value = "database.url_env", os.environ.get(self.url_env, "").strip()
            if not value:
                raise ConfigError(key, f"environment variable {self.url_env} is not set")
        else:
            return self.url
        problem = check_database_url(value, in_file=False)
        if problem:
            raise ConfigError(key, problem)
        return value


def sqlite_file(url: str) -> str | None:
    """The database file of an SQLite URL as SQLAlchemy reads it, or None: another database, or one in memory."""
    match = SQLITE_FILE_URL.fullmatch(url)
    if match is not None:
        database: str | None = match.group(2)
    else:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return database if database and database != ":memory:" else None


# Names the `source` label of tradingbot_control_commands_total gives to what is no configured token's: a bot's own
# risk limits, and requests without a valid token. A named token may not take them.
RESERVED_TOKEN_NAMES = ("risk", "unauthenticated")


@dataclass
class NamedTokenConfig:
    """One of the several tokens an API accepts: its name (logs, the journal, the `source` label), its scope, and
    where its secret is read from (token_file, or token_env; never the file itself)."""

    name: str = checked("", check_name)
    scope: Literal["read", "operate", "destructive", "approve"] = "read"
    token: str = secret("", "the token's secret")

    def validate(self, prefix: str, given: set[str]) -> None:
        for key in ("name", "scope"):
            if key not in given:
                raise ConfigError(
                    f"{prefix}.{key}", f"missing (each token has a name and a scope: {', '.join(SCOPES)})"
                )
        if self.token == "env:":
            raise ConfigError(
                f"{prefix}.token_file", "missing: each token's secret is read from token_file (or token_env)"
            )
        if self.name in RESERVED_TOKEN_NAMES:
            raise ConfigError(f"{prefix}.name", f"{self.name!r} is reserved (a `source` label value of its own)")


def check_token_names(tokens: list[NamedTokenConfig], key: str, *reserved: str) -> None:
    """Each name once in a list of tokens, and none a name the single older token of that API goes by."""
    seen: set[str] = set()
    for i, token in enumerate(tokens):
        if token.name in seen:
            raise ConfigError(f"{key}[{i}].name", f"{token.name!r} is given twice; names tell the tokens apart")
        if token.name in reserved:
            raise ConfigError(f"{key}[{i}].name", f"{token.name!r} is the name of the single token (its key)")
        seen.add(token.name)


@dataclass
class NotificationsConfig:
    # apprise URLs (mailto://, slack://, tgram://, json://, ...). They carry credentials, so they come
    # from a file (one URL per line) or an environment variable (whitespace separated).
    urls: str = secret("TRADING_OPS_APPRISE_URLS", "apprise notification URLs")


@dataclass
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
