"""`trading-ops freqtrade`: run the sidecar for every freqtrade in `freqtrade.targets`, one listen port each."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
from pathlib import Path
from typing import Any

from trading_ops.cli import UsageError
from trading_ops.config import Config, ConfigError, resolve_secret, resolve_tokens

log = logging.getLogger(__name__)

# The `venue` of the sidecar's runs in the journal (bot_runs.venue): freqtrade's own venue is its configuration's.
JOURNAL_VENUE = "freqtrade"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "freqtrade",
        help="serve the library's metrics and control API for unmodified freqtrade bots (a sidecar)",
        description="Polls each freqtrade in freqtrade.targets through its REST API and serves /metrics, /healthz, "
        "/readyz and POST /control/{command} for it on its own listen port.",
    )
    parser.add_argument("--target", action="append", default=None, help="run only this target (repeatable)")
    parser.set_defaults(handler=run)


def build_sidecars(config: Config, only: list[str] | None = None, journal: bool = True) -> list[Any]:
    """One FreqtradeSidecar per configured target (each on its own registry); configuration problems first. With
    `journal`, each journals the control commands it receives in `database.url` (its `command_journal`, all on one
    engine), as a bot does: a database not migrated to this version is a configuration error (`trading-ops db
    upgrade`)."""
    from prometheus_client import CollectorRegistry

    from trading_ops.integrations.freqtrade.app import FreqtradeSidecar

    section = config.freqtrade
    if not section.targets:
        raise ConfigError("freqtrade.targets", "no freqtrade to watch: add at least one target")
    unknown = sorted(set(only or ()) - set(section.targets))
    if unknown:
        raise UsageError(f"--target {unknown[0]}: not in freqtrade.targets ({', '.join(sorted(section.targets))})")
    tokens = resolve_tokens(config, section, "control_token", "control_tokens", "freqtrade")
    if not tokens:
        raise ConfigError(
            "freqtrade.control_token",
            "no token: give control_tokens, or control_token_file or control_token_env (or set "
            "TRADING_OPS_CONTROL_TOKEN)",
        )
    from trading_ops.bot.decision_gate import load_trusted

    keys = load_trusted(section.decision_keys, config, "freqtrade.decision_keys")
    passwords = {}
    for name, target in section.targets.items():
        if only and name not in only:
            continue
        password = resolve_secret(config, target, "password", f"freqtrade.targets.{name}.password")
        if not password:
            raise ConfigError(
                f"freqtrade.targets.{name}.password",
                "no password: give password_file or password_env (or set TRADING_OPS_FREQTRADE_PASSWORD)",
            )
        passwords[name] = password
    engine = open_journal_engine(config) if journal else None
    sidecars = []
    for name, password in passwords.items():
        target = section.targets[name]
        commands = None
        if engine is not None:
            from trading_ops.integrations.command_journal import CommandJournal

            commands = CommandJournal(engine, target.bot or name, JOURNAL_VENUE)
        broker = None
        if target.ccxt is not None:
            from trading_ops.venues.ccxt.factory import broker_from_config

            # The broker reads the `ccxt` section: this target's, with its secrets resolved against this config.
            broker = broker_from_config(dataclasses.replace(config, ccxt=target.ccxt))
        sidecars.append(
            FreqtradeSidecar(
                name=name,
                url=target.url,
                username=target.username,
                password=password,
                token=tokens,
                registry=CollectorRegistry(),
                poll_interval=section.poll_interval_seconds,
                request_timeout=section.request_timeout_seconds,
                heartbeat_timeout=section.heartbeat_timeout_seconds,
                broker=broker,
                reconcile_interval=section.reconcile_interval_seconds,
                log_file=target.log_file or None,
                stream=target.stream,
                decision_keys=keys,
                data_dir=Path(section.data_dir) / name,
                bot=target.bot or name,
                journal=commands,
            )
        )
    return sidecars


def open_journal_engine(config: Config) -> Any:
    """The engine of `database.url`, at this version's schema (a ConfigError naming `trading-ops db upgrade` when
    not)."""
    from trading_ops.integrations.command_journal import SchemaProblem, open_engine

    try:
        return open_engine(config.database_url(), config.database.sqlite_synchronous)
    except SchemaProblem as exc:
        raise ConfigError("database.url", f"{exc} (the sidecar journals its control commands there)") from None


def run(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.secret_files import refuse_loose_secrets

    refuse_loose_secrets(config)  # as ssh and PostgreSQL refuse a key others can read: at start, not mid-incident
    import asyncio

    sidecars = build_sidecars(config, args.target)
    try:
        asyncio.run(serve(config, sidecars))
    finally:
        engines = {
            id(s.command_journal.engine): s.command_journal.engine for s in sidecars if s.command_journal is not None
        }
        for engine in engines.values():
            engine.dispose()
    return 0


async def serve(config: Config, sidecars: list[Any]) -> None:
    """Serve every sidecar until SIGTERM or SIGINT."""
    import asyncio

    from aiohttp import web

    from trading_ops.bot.server import BEARER_ROUTES
    from trading_ops.integrations.freqtrade.app import create_app
    from trading_ops.webconfig import describe, secure_app, server_web_config

    # Every target's web configuration first: a bad one is a configuration error before any sidecar serves.
    web_configs = {
        s.name: server_web_config(config.freqtrade.targets[s.name].listen, f"freqtrade.targets.{s.name}.listen")
        for s in sidecars
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    try:
        for sidecar in sidecars:
            listen = config.freqtrade.targets[sidecar.name].listen
            web_config = web_configs[sidecar.name]
            app = create_app(sidecar)
            secure_app(app, web_config, BEARER_ROUTES)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            ssl_context = web_config.ssl_context if web_config is not None else None
            try:
                await web.TCPSite(runner, listen.host, listen.port, ssl_context=ssl_context).start()
            except OSError as exc:
                raise ConfigError(
                    f"freqtrade.targets.{sidecar.name}.listen",
                    f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}",
                ) from exc
            log.info(
                "freqtrade sidecar %s: %s -> %s://%s:%d (%s)",
                sidecar.name,
                sidecar.poller.client.base,
                web_config.scheme if web_config is not None else "http",
                listen.host,
                listen.port,
                describe(web_config),
            )
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
