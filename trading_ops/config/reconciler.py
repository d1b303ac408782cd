"""The reconciler's sections: listen, budgets, watchdog, escalation, targets, and the bots it acts on (their venues
and hosts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trading_ops.config.common import ListenConfig, NamedTokenConfig, TLSClientConfig, check_token_names
from trading_ops.config.fields import (
    FREQTRADE_KIND,
    KIND_CONTAINERS,
    KIND_UNITS,
    PAPER_BOT_CONTAINER,
    PAPER_BOT_UNIT,
    ConfigError,
    bounded,
    check_account,
    check_command,
    check_container,
    check_docker_url,
    check_host_ports,
    check_http_url,
    check_http_urls,
    check_instance,
    check_name,
    check_networks,
    check_nonempty,
    check_optional_exchange,
    check_optional_host,
    check_optional_http_url,
    check_positive_duration,
    check_prometheus_urls,
    check_regex,
    check_remote_user,
    check_unit,
    checked,
    path_field,
    secret,
)


@dataclass
class ReconcilerListenConfig(ListenConfig):
    port: int = bounded(9102, min=0, max=65535)


@dataclass
class BotVenueConfig:
    """The reconciler's own hands at a bot's account (a playbook's `venue` step), for when the bot is gone: the
    exchange through ccxt, with an API key of the reconciler's own on that account (trade permission only, never
    withdrawal), read from a file or a variable. Empty `exchange`: none configured, a venue step refuses."""

    exchange: str = checked("", check_optional_exchange)  # a ccxt exchange id, e.g. kraken
    api_key: str = secret("", "the reconciler's own API key on the bot's account (trade permission only)")
    api_secret: str = secret("", "the secret of that API key")
    # Overrides of the exchange's API URLs by name (kraken: public, private), e.g. a paper gateway's address.
    urls: dict[str, str] = field(default_factory=dict)
    # The bot's symbols (BASE-QUOTE): what `positions` reports and `flatten` closes.
    symbols: list[str] = field(default_factory=list)
    # How the bot's orders are told from others' on the account: the client order ids the runtime gives them start
    # with `<prefix>-`. Empty: derived from the bot's name as the runtime derives it (`order_id_prefix`).
    order_id_prefix: str = checked("", lambda v: None if v == "" else check_name(v))
    # How a venue step tells the bot's orders: `prefix`, those whose client order id carries `order_id_prefix` (a bot
    # on the runtime: every order it places has one); `account`, every open order of the account is the bot's (it
    # places orders with no client order id, as freqtrade does: none would carry a prefix). One account per bot makes
    # that safe; a person's own orders on the account are cancelled with the bot's.
    orders: Literal["prefix", "account"] = "prefix"
    # Which account at the venue this is, in a name of yours (a Kraken subaccount's name, say): one account per bot,
    # so two bots may not name the same one. Empty: the account the reconciler's key (its file or variable) reaches.
    account: str = checked("", lambda v: None if v == "" else check_name(v))
    # Base-asset balances that are not the bot's (its position is the balance less this), as ccxt.position_baseline.
    position_baseline: dict[str, float] = field(default_factory=dict)
    timeout_seconds: float = bounded(10.0, min=0.1)
    # TLS to an https venue whose certificate is not in ccxt's CA bundle (a paper gateway with a web_config_file).
    tls: TLSClientConfig = field(default_factory=TLSClientConfig)

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.exchange:
            if given - {"exchange"}:
                raise ConfigError(f"{prefix}.exchange", "missing: the ccxt exchange id of the bot's venue")
            return
        for name in ("api_key", "api_secret"):
            if getattr(self, name) == "env:":
                raise ConfigError(
                    f"{prefix}.{name}_file",
                    f"missing: the reconciler's key is read from {name}_file "
                    f"(or {name}_env), never written in the file",
                )
        if not self.symbols:
            raise ConfigError(f"{prefix}.symbols", "must list the bot's symbols (what positions and flatten cover)")
        check_account(prefix, self.symbols, self.urls, self.position_baseline)


@dataclass
class BotHostConfig:
    """The host a bot runs on when it is not the reconciler's own: systemd steps reach its service manager as
    `systemctl --host` does (SSH to it, `systemd-stdio-bridge` there), docker steps its Docker engine over TLS
    (`docker_url: tcp://host:2376`) or SSH (`ssh://user@host`). Known-hosts checking always: the host's key must be
    in `known_hosts_file`. Empty `address`: the reconciler's own host (reconciler.systemctl, docker_socket)."""

    address: str = checked("", check_optional_host)  # the host's name or IP address
    ssh_port: int = bounded(22, min=1, max=65535)
    ssh_user: str = checked("", check_remote_user)  # empty: the reconciler's user name
    identity_file: str = path_field()  # the reconciler's private key for this host; empty: ssh's default keys
    known_hosts_file: str = path_field()  # the host's key (StrictHostKeyChecking=yes); required with an address
    connect_timeout_seconds: float = bounded(10.0, min=1)
    # Its Docker engine: tcp://HOST:2376 with docker_tls (a client certificate), or ssh://USER@HOST[:PORT] (the
    # ssh settings above, `docker system dial-stdio` there). Empty: docker steps use reconciler.docker_socket.
    docker_url: str = checked("", check_docker_url)
    docker_tls: TLSClientConfig = field(default_factory=TLSClientConfig)

    def validate(self, prefix: str, given: set[str]) -> None:
        if given - {"address"} and not self.address and not self.docker_url.startswith("tcp://"):
            raise ConfigError(f"{prefix}.address", "missing: the host's name or address")
        if self.address and not self.known_hosts_file:
            raise ConfigError(
                f"{prefix}.known_hosts_file", "missing: the host's key is checked (StrictHostKeyChecking=yes)"
            )
        if self.docker_url.startswith("tcp://"):
            tls = self.docker_tls
            if not (tls.ca_file and tls.cert_file and tls.key_file):
                raise ConfigError(
                    f"{prefix}.docker_tls",
                    "a tcp:// Docker engine is reached with TLS: give ca_file, cert_file and key_file",
                )


@dataclass
class TargetConfig:
    # Base URL of the bot's HTTP server; the bot action posts to <url>/control/<command>.
    url: str = checked("http://127.0.0.1:9101", check_http_url)
    token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of this bot's control API")
    # A token of the `destructive` scope, sent only with the commands that need it (cancel_all, flatten, halt,
    # clear_halt); `token` then needs no more than `operate`. Unset: `token` is sent with every command.
    destructive_token: str = secret("", "bearer token of this bot's control API for destructive commands")
    # The systemd unit running it: what a playbook's `systemd` step without `unit:` restarts.
    unit: str = checked(PAPER_BOT_UNIT, check_unit)
    # Its container (docker compose): what a `docker` step without `container:` restarts.
    container: str = checked(PAPER_BOT_CONTAINER, check_container)
    # The reconciler's own key on the bot's account at its venue: what a `venue` step uses (bots[].venue).
    venue: BotVenueConfig = field(default_factory=BotVenueConfig)
    # The host it runs on, when not the reconciler's own: where systemd and docker steps act (bots[].host).
    host: BotHostConfig = field(default_factory=BotHostConfig)


@dataclass
class BudgetConfig:
    # At most this many actions per target (an alert's instance) in any rolling hour ...
    max_actions_per_target_per_hour: int = bounded(6, min=1)
    # ... and this many in total. Spending a budget opens the circuit and escalates.
    max_actions_per_hour: int = bounded(60, min=1)
    # An open circuit closes again after this long.
    circuit_cool_off_seconds: float = bounded(1800.0, min=1)


@dataclass
class FourEyesConfig:
    """How many people other than the requester must approve each kind of decision that widens risk (four eyes,
    docs/reconciler.md#approvals). 0 is for a one-person team only, set explicitly: the requester's own approval then
    counts, and every such decision says "approved by its requester (allowed by configuration)". A step the
    reconciler asks a person to approve (a venue-direct flatten) always needs one person, never the reconciler."""

    # A ramp promotion (`trading-ops ramp promote`): the bot's limits widen.
    ramp_promotion: int = bounded(1, min=0, max=5)
    # A live start (paper to live).
    live_start: int = bounded(1, min=0, max=5)
    # Clearing a loss-limit halt: the bot may trade again.
    clear_halt: int = bounded(1, min=0, max=5)


@dataclass
class WatchdogConfig:
    # The always-firing alert that proves the alerting pipeline works end to end.
    alertname: str = checked("Watchdog", check_nonempty)
    # No Watchdog for this long = the pipeline is broken: notify through apprise directly. 0 disables.
    window_seconds: float = bounded(600.0, min=0)
    check_interval_seconds: float = bounded(15.0, min=0.05)


@dataclass
class EscalationConfig:
    # Every page the reconciler owes is a ledger row (the outbox) posted to Alertmanager until a member takes it,
    # however long that takes. A post Alertmanager did not take is tried again after this long, doubling ...
    retry_initial_seconds: float = bounded(1.0, min=0.01)
    # ... up to this: once Alertmanager is back, every pending page is posted within about this long.
    retry_max_seconds: float = bounded(10.0, min=0.01)
    # A page Alertmanager has not taken this long after it was owed also goes out through notifications.urls
    # (apprise), and the episode counts as escalated from then on; the outbox still posts it to Alertmanager.
    fallback_after_seconds: float = bounded(30.0, min=0)


@dataclass
class ReconcilerConfig:
    listen: ReconcilerListenConfig = field(default_factory=ReconcilerListenConfig)
    token: str = secret("TRADING_OPS_RECONCILER_TOKEN", "bearer token Alertmanager sends to the webhook")
    # Bearer token of the episode API (GET /api/v1/episodes...), which shows labels, annotations and step outputs:
    # not the webhook's (whoever can post alerts need not read them). Unset = the episode API answers 401.
    read_token: str = secret("TRADING_OPS_RECONCILER_READ_TOKEN", "bearer token of the episode API")
    # Named tokens of the API (not of the webhook), each with a scope: read (episodes), operate, destructive,
    # approve (approvals). read_token is one more, named read_token, of the read scope.
    api_tokens: list[NamedTokenConfig] = field(default_factory=list)
    # The reconciler's own address as operators reach it (https://reconciler.example.org): its pages to Alertmanager
    # then carry a `console_url` annotation, a link into the operator console (/ui/) at their episode or approval.
    # Empty = no link.
    external_url: str = checked("", check_optional_http_url)
    # Load balancers and proxies in front of the console (addresses or networks): a login through one of them counts
    # against the address it appended to X-Forwarded-For (read from the right, past every trusted hop), not against
    # the proxy's. Empty = the connection's address, X-Forwarded-For never believed.
    trusted_proxies: list[str] = checked([], check_networks)
    # Name of this replica in claims and logs (empty = the host name). Replicas may share it: a claim is taken
    # over only when its lease expired or its process is provably gone.
    instance: str = ""
    # A packaged playbook (`default`: systemd units, `docker`: the docker compose stack) or a playbook file;
    # empty = default.
    playbook: str = ""
    # Prometheus, or every member of an HA pair (a list): each query goes to the member that answered last, and one
    # that fails there is asked of the next before it counts as failed, so one member down fails no verification.
    prometheus_url: str | list[str] = checked("http://127.0.0.1:9090", check_prometheus_urls)
    alertmanager_url: str = checked("http://127.0.0.1:9093", check_http_url)
    # The other members of a clustered Alertmanager (the URL above is one of them): escalations are posted to every
    # member, as Prometheus sends its alerts, and reads (silences, still-firing checks) go to the first that answers,
    # so one member down pages nobody less and holds nothing back.
    alertmanager_peers: list[str] = checked([], check_http_urls)

    @property
    def alertmanager_urls(self) -> list[str]:
        return [self.alertmanager_url, *self.alertmanager_peers]

    @property
    def prometheus_urls(self) -> list[str]:
        return [self.prometheus_url] if isinstance(self.prometheus_url, str) else list(self.prometheus_url)

    # Webhook bodies larger than this get 413 (Alertmanager does not resend after a 4xx: such a notification is
    # lost). Paired with the receiver's max_alerts in alertmanager/alertmanager.yml (1000): 1000 alerts of the
    # largest shipped rule (the SLO burn-rate alerts, whose generatorURL carries a long expression) are about 1.9 MB,
    # so 8 MiB leaves room for labels and annotations 3x larger.
    max_body_bytes: int = bounded(8 * 1024 * 1024, min=1024)
    # Record what would be done, do nothing.
    dry_run: bool = False
    # How often the workers look for due episodes (new notifications wake them at once).
    poll_interval_seconds: float = bounded(1.0, min=0.01)
    # A claim on an episode and its target lasts this long and is renewed while the run is alive.
    lease_seconds: float = bounded(30.0, min=0.5)
    # Outcomes of steps the ledger has not taken yet (the database unreachable when a step finished, and the
    # reconciler stopping before it came back): one file each, written to the ledger at the next start before
    # anything else. Relative to this file's folder.
    spool_dir: str = path_field("./var/reconciler-spool", check_nonempty, state=True)
    max_concurrent_runs: int = bounded(4, min=1)
    # Intake group commit: notifications stored per transaction at most.
    batch_max: int = bounded(256, min=1)
    # Label values reach exec steps (as environment variables) and templates only when they match this (RE2). ':' is
    # for instance labels (host:port), '@' for systemd template units; neither can move an http step's request
    # (values are URL-encoded there, and its host comes from its URL template).
    label_value_pattern: str = checked(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$", check_regex)
    # Hosts (`host` for any port, or `host:port`) the playbook's `http` steps may send requests to. A step's host is
    # written in its URL template, never taken from a label; a host not listed here refuses the playbook at start.
    http_allowed_hosts: list[str] = checked([], check_host_ports)
    # Outputs of steps are kept up to this many bytes.
    output_limit_bytes: int = bounded(4096, min=64)
    # Command used by systemd steps (`<systemctl> restart <unit>`).
    systemctl: list[str] = checked(["systemctl"], check_command)
    docker_socket: str = checked("/var/run/docker.sock", check_nonempty)
    # Ask Alertmanager whether a matching silence is active before acting (maintenance: the episode is parked
    # until the silence ends), and refresh tradingops_maintenance_active every 15 s.
    check_silences: bool = True
    # The ledger keeps notifications, and closed episodes with their attempts and steps, this many days (pruned
    # hourly; open episodes are never pruned). A firing alert that started longer ago is not acted on.
    retention_days: int = bounded(30, min=1, max=36500)
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    # Four eyes: how many people other than the requester approve each kind of widening decision.
    approvals: FourEyesConfig = field(default_factory=FourEyesConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # TLS of every request the reconciler sends to an https URL: bots' control APIs, Prometheus, Alertmanager.
    tls: TLSClientConfig = field(default_factory=TLSClientConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    # Bot instance (the `instance` label of its alerts) -> its control API.
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    # How often every replica asks each target for the control commands its journal recorded (its `control_events`,
    # with the target's token) and appends those the reconciler did not send itself to the audit chain: a command
    # sent straight to a bot is audited within this long. 0 = never.
    control_audit_interval_seconds: float = bounded(30.0, min=0.0)
    # The Ed25519 private key (PEM) the reconciler signs decisions with once people approved them (a ramp promotion,
    # clearing a loss-limit halt, a live start): read from decision_key_file (owner-only) or decision_key_env; the
    # bots trust its public key (bot.decision_keys). `trading-ops up` generates one for the local stack.
    decision_key: str = secret("", "Ed25519 private key (PEM) the reconciler signs decisions with")
    # How long a decision sent with a control command holds (it is sent at once), and one written for a live start.
    decision_ttl: str = checked("5m", check_positive_duration)
    live_start_decision_ttl: str = checked("7d", check_positive_duration)

    def validate(self, prefix: str, given: set[str]) -> None:
        check_token_names(self.api_tokens, f"{prefix}.api_tokens", "read_token")


@dataclass
class BotEntryConfig:
    """One bot the operations side watches and heals: Prometheus scrapes `instance`, the reconciler acts on `url`."""

    name: str = checked("paper-1", check_name)
    # What runs it (`trading-ops up --bot KIND`): paper, or a kind of bot_kinds; `freqtrade` is a freqtrade watched by
    # the `trading-ops freqtrade` sidecar (instance and url are the sidecar's listen address for it: Prometheus scrapes
    # it in the freqtrade job, `config targets --job freqtrade`).
    kind: str = checked("paper", check_name)
    # host:port of its /metrics: the scrape target, and so the `instance` label of its series and alerts.
    instance: str = checked("127.0.0.1:9101", check_instance)
    # Base URL of its control API (usually http://<instance>).
    url: str = checked("http://127.0.0.1:9101", check_http_url)
    token: str = secret("TRADING_OPS_CONTROL_TOKEN", "bearer token of this bot's control API")
    # A `destructive` token sent only with cancel_all, flatten, halt and clear_halt (then `token` may be `operate`).
    destructive_token: str = secret("", "bearer token of this bot's control API for destructive commands")
    # Its systemd unit (what the playbook's restart steps restart); default: trading-ops-paper-bot.service for the
    # paper kind, else the template unit's instance trading-ops-bot@<name>.service.
    unit: str = checked("", check_unit)
    # Its container under docker compose; default: trading-ops-paper-bot for the paper kind, else trading-ops-<name>.
    container: str = checked("", check_container)
    # The reconciler's own hands at this bot's account, for when the bot is gone (a playbook's `venue` step):
    # docs/deployment.md, "A fleet on several hosts".
    venue: BotVenueConfig = field(default_factory=BotVenueConfig)
    # The host it runs on, when not the reconciler's: systemd steps reach it with `systemctl --host` over SSH, docker
    # steps its Docker engine over TLS or SSH (docs/deployment.md, "A fleet on several hosts").
    host: BotHostConfig = field(default_factory=BotHostConfig)
    # Whether the file gave `kind` (a bot a freqtrade target of the same file watches is of kind freqtrade unless it
    # says otherwise: Config.validate).
    kind_given: bool = field(default=False, metadata={"internal": True})

    def validate(self, prefix: str, given: set[str]) -> None:
        self.kind_given = "kind" in given
        self.check_kind(prefix)

    def check_kind(self, prefix: str) -> None:
        """What a bot of its kind needs: a freqtrade's venue step cancels the whole account's orders."""
        if self.kind == FREQTRADE_KIND and self.venue.exchange and self.venue.orders != "account":
            raise ConfigError(
                f"{prefix}.venue.orders",
                f"must be account for a bot of kind {FREQTRADE_KIND}: freqtrade places its orders with no client order "
                "id, so none carries the bot's prefix and a venue step's cancel_all would cancel none of them "
                "(orders: account cancels every open order of its account)",
            )

    @property
    def systemd_unit(self) -> str:
        if self.unit:
            return self.unit
        return KIND_UNITS.get(self.kind) or f"trading-ops-bot@{self.name}.service"

    @property
    def docker_container(self) -> str:
        if self.container:
            return self.container
        return KIND_CONTAINERS.get(self.kind) or f"trading-ops-{self.name}"
