"""Where each part of the local stack listens and keeps its files under the state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = "var/stack"
# Default ports (the catalogue's): with --base-port N they become N, N+1, N+2, N+3 in this order.
DEFAULT_PORTS = {"bot": 9101, "reconciler": 9102, "prometheus": 9090, "alertmanager": 9093}
BASE_PORT_ORDER = ("bot", "reconciler", "prometheus", "alertmanager")


@dataclass(frozen=True)
class Ports:
    bot: int = DEFAULT_PORTS["bot"]
    reconciler: int = DEFAULT_PORTS["reconciler"]
    prometheus: int = DEFAULT_PORTS["prometheus"]
    alertmanager: int = DEFAULT_PORTS["alertmanager"]

    @classmethod
    def choose(cls, base: int | None = None, **explicit: int | None) -> Ports:
        """Ports from --base-port (consecutive, in BASE_PORT_ORDER) with explicit --<name>-port winning."""
        values = dict(DEFAULT_PORTS)
        if base is not None:
            values = {name: base + i for i, name in enumerate(BASE_PORT_ORDER)}
        values.update({name: port for name, port in explicit.items() if port is not None})
        return cls(**values)

    def address(self, name: str) -> str:
        return f"{HOST}:{getattr(self, name)}"

    def url(self, name: str) -> str:
        return f"http://{self.address(name)}"


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
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def log(self, child: str) -> Path:
        return self.logs_dir / f"{child}.log"

    def data(self, child: str) -> Path:
        return self.state_dir / child / "data"
