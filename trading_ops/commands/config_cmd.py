"""`trading-ops config check|show`: validate the configuration, or print it as it is in effect, secrets masked."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from trading_ops.config import DEFAULT_CONFIG_PATH, Config, ConfigError, resolve_secret
from trading_ops.db.errors import shown_url

# The database URL's own keys: `config show` replaces them with the URL in effect (password masked).
DATABASE_URL_KEYS = ("url", "url_env", "url_file")
# user:password@ in any URL-valued setting (an Alertmanager or Prometheus URL with basic auth).
URL_PASSWORD_RE = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def register(sub: Any) -> None:
    parser = sub.add_parser("config", help="configuration tools")
    inner = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = inner.add_parser("check", help="validate the configuration file and exit (0 ok, 2 invalid)")
    check.add_argument("--no-secrets", action="store_true", help="do not check that secrets can be read")
    check.set_defaults(handler=check_config)
    show = inner.add_parser(
        "show",
        help="print the configuration in effect (defaults filled in), secrets masked",
        description="Print every setting as the commands will use it, defaults included, as YAML. Secrets are "
        "shown as where they are read from (an environment variable or a file) and whether they are there, "
        "never their values; the database URL's password is masked.",
    )
    show.set_defaults(handler=show_config)


def config_source(args: argparse.Namespace) -> str:
    """Which file the configuration came from, as the top-level loader chose it."""
    if args.config:
        return str(args.config)
    if Path(DEFAULT_CONFIG_PATH).exists():
        return f"./{DEFAULT_CONFIG_PATH}"
    return f"defaults: no --config and no ./{DEFAULT_CONFIG_PATH}"


def check_config(args: argparse.Namespace, config: Config) -> int:
    config.database_url()
    if not args.no_secrets:
        token = resolve_secret(config, config.bot, "control_token", "bot.control_token")
        if not token:
            raise ConfigError(
                "bot.control_token",
                "no token: set control_token_file or the environment "
                "variable named by control_token_env (default TRADING_OPS_CONTROL_TOKEN)",
            )
    print(f"configuration ok ({config_source(args)})")
    return 0


def _secret(config: Config, section: Any, name: str, key: str) -> dict[str, str]:
    reference = str(getattr(section, name))
    kind, _, where = reference.partition(":")
    try:
        present = bool(resolve_secret(config, section, name, key))
    except ConfigError as exc:
        return {f"{name}_{kind}": where, f"{name}_status": f"unreadable ({exc.problem})"}
    return {f"{name}_{kind}": where, f"{name}_status": "set" if present else "not set"}


def _plain(config: Config, obj: Any, key: str) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            path = f"{key}.{f.name}" if key else f.name
            if f.metadata.get("secret"):
                out.update(_secret(config, obj, f.name, path))
            else:
                out[f.name] = _plain(config, getattr(obj, f.name), path)
        return out
    if isinstance(obj, dict):
        return {str(k): _plain(config, v, f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(config, v, f"{key}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, str):
        return URL_PASSWORD_RE.sub(r"\1***@", obj)
    return obj


def show_config(args: argparse.Namespace, config: Config) -> int:
    data = _plain(config, config, "")
    database = data["database"]
    source = next((k for k in ("url_file", "url_env") if database.get(k)), "url")
    for name in DATABASE_URL_KEYS:
        database.pop(name, None)
    database["url"] = shown_url(config.database_url())
    database["url_from"] = source
    print(f"# configuration in effect ({config_source(args)}); secrets masked")
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000).rstrip())
    return 0
