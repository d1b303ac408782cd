"""The long-term-support Prometheus (3.5, with its promtool) and the current Alertmanager (0.33), from Debian's own
packages, unpacked into a cache beside the system's 2.x / 0.25 (never installed over them): `make monitoring-lts`
(which `make test` and `make run` run) fills the cache once, and the tests run on both generations.

    python tests/monitoring_lts.py          # fetch (checking each package's sha256) and unpack, unless done
    python tests/monitoring_lts.py --bin    # print the directory of the binaries (for PATH)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Debian's mirror (DEBIAN_MIRROR for a local one); the packages are sid's, amd64.
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian").rstrip("/")
PROMETHEUS_VERSION = "3.5.3"
ALERTMANAGER_VERSION = "0.33.1"
NODE_EXPORTER_VERSION = "1.11.1"


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    pool_path: str
    sha256: str


# Exact versions and checksums (from sid's Packages index): a changed package on the mirror is refused, not run.
DEBS = (
    Deb(
        "prometheus",
        "3.5.3+ds1-6",
        "pool/main/p/prometheus/prometheus_3.5.3+ds1-6_amd64.deb",
        "593bcced02d8082688ea034dfc543848ad145c5f793aae5aad756c4dbdfa98da",
    ),
    Deb(
        "promtool",
        "3.5.3+ds1-6",
        "pool/main/p/prometheus/promtool_3.5.3+ds1-6_amd64.deb",
        "1fb8bad7b932e7a44bccb12517f0bd96d5d5d83f15d3a1c0e2aa705cbf93fe90",
    ),
    Deb(
        "prometheus-alertmanager",
        "0.33.1-5",
        "pool/main/p/prometheus-alertmanager/prometheus-alertmanager_0.33.1-5_amd64.deb",
        "ec1be21dd7ffeec3d6f42dd1cc8e97b8a9e93888f1953b4fb4cb9234be70185f",
    ),
)
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "trading-ops"
    / f"prometheus-{PROMETHEUS_VERSION}-alertmanager-{ALERTMANAGER_VERSION}"
)
BIN_DIR = CACHE / "usr" / "bin"
BINARIES = ("prometheus", "promtool", "prometheus-alertmanager", "amtool")
FILL = "make monitoring-lts"


def missing() -> list[str]:
    """The binaries the cache lacks (all of them before the first `make monitoring-lts`)."""
    return [name for name in BINARIES if not os.access(BIN_DIR / name, os.X_OK)]


def fetch(deb: Deb, into: Path) -> Path:
    url = f"{MIRROR}/{deb.pool_path}"
    target = into / Path(deb.pool_path).name
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(target, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        raise SystemExit(f"monitoring-lts: cannot fetch {deb.package} {deb.version} from {url}: {exc}") from None
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != deb.sha256:
        raise SystemExit(f"monitoring-lts: {url} has sha256 {digest}, not the pinned {deb.sha256}")
    return target


def fill() -> Path:
    """Fetch and unpack the packages into CACHE, unless they are there; returns the binaries' directory."""
    if not missing():
        return BIN_DIR
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("monitoring-lts: dpkg-deb is not on PATH (Debian package 'dpkg')")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent, prefix=f".{CACHE.name}.") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for deb in DEBS:
            unpacked = subprocess.run(
                ["dpkg-deb", "-x", str(fetch(deb, Path(tmp))), str(root)], capture_output=True, text=True, check=False
            )
            if unpacked.returncode != 0:
                raise SystemExit(f"monitoring-lts: dpkg-deb -x {deb.package}: {unpacked.stderr.strip()}")
        shutil.rmtree(CACHE, ignore_errors=True)
        root.rename(CACHE)  # whole or not at all: another run never sees half a cache
    if missing():
        raise SystemExit(f"monitoring-lts: the packages hold no {', '.join(missing())} under {BIN_DIR}")
    return BIN_DIR


if __name__ == "__main__":
    if sys.argv[1:] == ["--bin"]:
        print(BIN_DIR)
    else:
        print(f"monitoring-lts: Prometheus {PROMETHEUS_VERSION}, Alertmanager {ALERTMANAGER_VERSION} in {fill()}")
