"""Find the Prometheus and Alertmanager server binaries, and say how to install the missing ones."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

# Server -> binary names to try (Debian names Alertmanager `prometheus-alertmanager`), and the Debian package.
SERVERS = {
    "prometheus": (("prometheus",), "prometheus"),
    "alertmanager": (("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
}
INSTALL_ALL = "apt-get install prometheus prometheus-alertmanager"


@dataclass(frozen=True)
class Binary:
    server: str
    path: str | None
    package: str

    @property
    def install_hint(self) -> str:
        names = " or ".join(SERVERS[self.server][0])
        return (
            f"{self.server}: no {names} on PATH; install it with `sudo apt-get install {self.package}` "
            f"(both servers: `sudo {INSTALL_ALL}`), or put the upstream binary on PATH"
        )


def find(server: str, path: str | None = None) -> Binary:
    """The server's binary on PATH (or on `path`, an os.pathsep-separated list, for tests)."""
    names, package = SERVERS[server]
    found = next((p for p in (shutil.which(name, path=path) for name in names) if p), None)
    return Binary(server, found, package)
