"""A real Prometheus for a test: the server on a loopback port with the configuration the test wrote, its data and
its log beside that."""

from __future__ import annotations

import subprocess
from pathlib import Path

from system_binaries import SYSTEM, Generation, prometheus_binary


def start_prometheus(
    config: Path, data: Path, port: int, *flags: str, generation: Generation = SYSTEM
) -> subprocess.Popen[bytes]:
    """Prometheus (of `generation`) on 127.0.0.1:`port` with `config` and `flags`, its TSDB in `data`, its warnings
    and errors in prometheus.log beside `config`. The caller waits for its /-/ready (server_process.wait_http) and
    stops it."""
    return subprocess.Popen(
        [
            generation.binary("prometheus") if generation.bin_dir else prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            *flags,
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "prometheus.log", "wb"),  # noqa: SIM115
    )
