"""Where each part of the local stack listens and keeps its files under the state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trading_ops.config import STACK_STATE_DIR

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = STACK_STATE_DIR
# Default ports (the catalogue's): with --base-port N they become N, N+1, N+2, ... in this order. The gateway (the
# paper venue behind Kraken's API) runs only with `--bot ccxt-gateway`.
DEFAULT_PORTS = {"bot": 9101, "reconciler": 9102, "prometheus": 9090, "alertmanager": 9093, "gateway": 9110}
BASE_PORT_ORDER = ("bot", "reconciler", "prometheus", "alertmanager", "gateway")
# `up --alertmanagers 2`: the clustered Alertmanager pair production runs. The second member's HTTP port and both
# members' gossip ports (Alertmanager's --cluster.listen-address, TCP and UDP). By default Alertmanager's own
# convention, each member's gossip port right after its HTTP port (9093 and 9094, 9095 and 9096); with --base-port N
# they follow the five above in this order: N+5, N+6, N+7. One Alertmanager has no gossip port and uses none of these.
PAIR_PORTS = {"alertmanager_gossip": 9094, "alertmanager_2": 9095, "alertmanager_2_gossip": 9096}
PAIR_PORT_ORDER = tuple(PAIR_PORTS)
# `up --bot freqtrade`: freqtrade's own REST API (its api_server), which its sidecar polls; the sidecar serves the
# library's /metrics and /control on the bot port. With --base-port N: N+8 (after the pair's ports, used or not).
FREQTRADE_PORTS = {"freqtrade": 9108}
FREQTRADE_PORT_ORDER = tuple(FREQTRADE_PORTS)
# Every port option, `--<name>-port` (dashes for underscores).
PORT_ORDER = BASE_PORT_ORDER + PAIR_PORT_ORDER + FREQTRADE_PORT_ORDER
# The members' port names (child names with a dash: alertmanager, alertmanager-2), in the order of the members, and
# each one's gossip port.
ALERTMANAGER_ROLES = ("alertmanager", "alertmanager_2")
GOSSIP_ROLE = {"alertmanager": "alertmanager_gossip", "alertmanager_2": "alertmanager_2_gossip"}
MAX_ALERTMANAGERS = len(ALERTMANAGER_ROLES)
# `up --bots N`: a fleet of example bots on the one gateway, each a process of its own (about 150 MB resident).
MAX_BOTS = 100
# How much longer than --ready-timeout a fleet's bots may take to become healthy, per bot beyond the first: they start
# at once, each importing ccxt and the runtime (about 1.3 s of CPU), so 20 bots took 25 s on 2 busy cores.
FLEET_START_SECONDS = 2.0


@dataclass(frozen=True)
class Ports:
    bot: int = DEFAULT_PORTS["bot"]
    reconciler: int = DEFAULT_PORTS["reconciler"]
    prometheus: int = DEFAULT_PORTS["prometheus"]
    alertmanager: int = DEFAULT_PORTS["alertmanager"]
    gateway: int = DEFAULT_PORTS["gateway"]
    alertmanager_gossip: int = PAIR_PORTS["alertmanager_gossip"]
    alertmanager_2: int = PAIR_PORTS["alertmanager_2"]
    alertmanager_2_gossip: int = PAIR_PORTS["alertmanager_2_gossip"]
    freqtrade: int = FREQTRADE_PORTS["freqtrade"]

    @classmethod
    def choose(cls, base: int | None = None, **explicit: int | None) -> Ports:
        """Ports from --base-port (consecutive, in PORT_ORDER) with explicit --<name>-port winning."""
        values = DEFAULT_PORTS | PAIR_PORTS | FREQTRADE_PORTS
        if base is not None:
            values = {name: base + i for i, name in enumerate(PORT_ORDER)}
        values.update({name: port for name, port in explicit.items() if port is not None})
        return cls(**values)

    def address(self, name: str) -> str:
        return f"{HOST}:{getattr(self, name)}"

    def url(self, name: str) -> str:
        return f"http://{self.address(name)}"


def port_option(name: str) -> str:
    """The option that sets the port `name` of PORT_ORDER: `--alertmanager-2-gossip-port` for alertmanager_2_gossip."""
    return f"--{name.replace('_', '-')}-port"


def alertmanager_roles(members: int) -> tuple[str, ...]:
    """The port names of the stack's `members` Alertmanagers (`up --alertmanagers N`), in the order of the members."""
    return ALERTMANAGER_ROLES[:members]


def child_name(role: str) -> str:
    """The child (and log) of an Alertmanager member's port name: alertmanager, alertmanager-2."""
    return role.replace("_", "-")


def bot_ports(ports: Ports, count: int, base: int | None = None, alertmanagers: int = 1) -> list[int]:
    """The ports of the stack's `count` bots, consecutive from `base` (--bots-base-port): by default one bot on the
    stack's bot port, and a fleet on the ports right after the stack's highest one (9111.. with the defaults, N+5..
    with --base-port N, N+8.. with the pair's ports too, `alertmanagers` 2)."""
    if base is None:
        names = BASE_PORT_ORDER + (PAIR_PORT_ORDER if alertmanagers > 1 else ())
        base = ports.bot if count == 1 else max(getattr(ports, name) for name in names) + 1
    return list(range(base, base + count))


@dataclass(frozen=True)
class Layout:
    """The state directory: generated configurations, server data and one log file per child."""

    state_dir: Path

    @property
    def app_config(self) -> Path:
        return self.state_dir / "trading-ops.yaml"

    @property
    def prometheus_dir(self) -> Path:
        return self.state_dir / "prometheus"

    @property
    def prometheus_config(self) -> Path:
        return self.prometheus_dir / "prometheus.yml"

    @property
    def rules_dir(self) -> Path:
        return self.prometheus_dir / "rules"

    @property
    def bot_targets(self) -> Path:
        """The file_sd file of the `tradingbot` job: the stack's bot."""
        return self.prometheus_dir / "targets" / "tradingbot.yml"

    @property
    def alertmanager_dir(self) -> Path:
        return self.state_dir / "alertmanager"

    @property
    def alertmanager_config(self) -> Path:
        return self.alertmanager_dir / "alertmanager.yml"

    @property
    def gateway_state(self) -> Path:
        """The paper venue behind the gateway (`--bot ccxt-gateway`): its orders, fills and balances between runs."""
        return self.state_dir / "gateway" / "venue.json"

    @property
    def freqtrade_targets(self) -> Path:
        """The file_sd file of the `freqtrade` job: the sidecar's listen address of the stack's freqtrade."""
        return self.prometheus_dir / "targets" / "freqtrade.yml"

    @property
    def freqtrade_dir(self) -> Path:
        """The freqtrade of `--bot freqtrade`: its generated config.json, user_data, database and log file."""
        return self.state_dir / "freqtrade"

    @property
    def freqtrade_log(self) -> Path:
        """freqtrade's own log file (its --logfile), which its sidecar reads; its output goes to logs/freqtrade.log."""
        return self.freqtrade_dir / "freqtrade.log"

    def bot_config(self, name: str) -> Path:
        """The configuration of one bot of a fleet (`up --bots N`, N > 1): the stack's, with its own name, port, data
        dir and venue key."""
        return self.state_dir / "bots" / f"{name}.yaml"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def log(self, child: str) -> Path:
        return self.logs_dir / f"{child}.log"

    def data(self, child: str) -> Path:
        return self.state_dir / child / "data"
