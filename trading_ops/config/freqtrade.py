"""The freqtrade sidecar's sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from trading_ops.config.common import ListenConfig, NamedTokenConfig, check_token_names
from trading_ops.config.fields import (
    ConfigError,
    bounded,
    check_http_url,
    check_name,
    check_nonempty,
    checked,
    path_field,
    secret,
)
from trading_ops.config.paper import CcxtConfig


@dataclass
class FreqtradeListenConfig(ListenConfig):
    port: int = bounded(9103, min=0, max=65535)


@dataclass
class FreqtradeTargetConfig:
    # freqtrade's API server (its config's api_server: listen_ip_address, listen_port, username, password).
    url: str = checked("http://127.0.0.1:8080", check_http_url)
    username: str = checked("freqtrader", check_nonempty)
    password: str = secret("TRADING_OPS_FREQTRADE_PASSWORD", "password of freqtrade's API server")
    # Where the sidecar serves this freqtrade's /metrics and /control: one port per freqtrade, so each is one
    # Prometheus target (its own `instance`) and one entry of the reconciler's targets.
    listen: FreqtradeListenConfig = field(default_factory=FreqtradeListenConfig)
    # The venue freqtrade trades on, reached by the sidecar itself through the ccxt broker (the same exchange, keys
    # and urls as freqtrade's `exchange` section; symbols = freqtrade's pairs as BASE-QUOTE) for `reconcile`.
    # Without it, `reconcile` answers 409.
    ccxt: CcxtConfig | None = None
    # freqtrade's log file (its `--logfile`) when the sidecar runs on its host and may read it: freqtrade's database
    # errors are read from it on every poll, so one freqtrade logged just before it exited is seen (its /logs, read
    # otherwise, dies with it). Empty: /logs only.
    log_file: str = ""
    # freqtrade streams its candles (its exchange.enable_ws on a venue it streams from): the sidecar exports its stream
    # state (tradingbot_stream_*) from the start, not only once freqtrade's log first shows its WebSocket.
    stream: bool = False
    # The name the reconciler's bots[] entry gives this freqtrade: a signed decision (clearing a loss-limit halt)
    # names the bot it is for. Empty: the target's name.
    bot: str = ""


@dataclass
class FreqtradeConfig:
    # Bearer token of the sidecar's control API (the same for every watched freqtrade).
    control_token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of the freqtrade sidecar's control API")
    # Named tokens with scopes, as bot.control_tokens (the same for every watched freqtrade).
    control_tokens: list[NamedTokenConfig] = field(default_factory=list)
    # How often freqtrade's API is asked; each poll is a handful of cheap GETs.
    poll_interval_seconds: float = bounded(2.0, min=0.05)
    request_timeout_seconds: float = bounded(3.0, min=0.05)
    # A loop iteration older than this makes the sidecar's /healthz fail (freqtrade's process_throttle_secs is 5 s
    # by default; the shipped TradingBotHeartbeatStale alert waits 15 s).
    heartbeat_timeout_seconds: float = bounded(15.0, min=0.1)
    # Targets with a `ccxt` venue are reconciled this often (0: only on the command and when freqtrade (re)starts).
    reconcile_interval_seconds: float = bounded(60.0, min=0)
    # Name (a label-safe word) -> one freqtrade.
    targets: dict[str, FreqtradeTargetConfig] = field(default_factory=dict)
    # The reconciler's public keys the sidecar trusts for signed decisions, as bot.decision_keys: clearing a halt whose
    # reason names a loss limit (`risk limit daily_loss ...`) needs a clear_halt decision signed by one of them; none:
    # such a halt is never cleared through the sidecar.
    decision_keys: list[str] = field(default_factory=list)
    # Where the sidecar keeps, per target (a folder of its name), why it halted freqtrade and the decisions it acted on
    # (each once): a restart forgets neither.
    data_dir: str = path_field("./var/freqtrade-sidecar", check_nonempty, state=True)

    def validate(self, prefix: str, given: set[str]) -> None:
        check_token_names(self.control_tokens, f"{prefix}.control_tokens", "control_token")
        listens: dict[tuple[str, int], str] = {}
        for name, target in self.targets.items():
            key = f"{prefix}.targets.{name}"
            problem = check_name(name)
            if problem:
                raise ConfigError(key, problem)
            where = (target.listen.host, target.listen.port)
            if target.listen.port and where in listens:
                raise ConfigError(
                    f"{key}.listen", f"{where[0]}:{where[1]} is already the listen address of {listens[where]}"
                )
            listens[where] = name
