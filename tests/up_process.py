"""`trading-ops up` as a real process for a test: on free ports in a temporary directory, its output read line by
line as it comes, its children's pids from its banner, killed with whatever is left of it on close."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from ports import free_port
from system_binaries import LTS, Generation

from trading_ops.stack.layout import PORT_ORDER, Ports, port_option

STARTED_RE = re.compile(r"^started (?P<name>[\w-]+): pid (?P<pid>\d+)")
CHILDREN = ("paper-bot", "reconciler", "alertmanager", "prometheus")
HEALTH = {
    "paper-bot": ("bot", "/healthz"),
    "reconciler": ("reconciler", "/readyz"),
    "alertmanager": ("alertmanager", "/-/ready"),
    "prometheus": ("prometheus", "/-/ready"),
    "alertmanager-2": ("alertmanager_2", "/-/ready"),  # `up --alertmanagers 2`
}
STARTUP_SECONDS = 120.0
STOP_SECONDS = 60.0


def alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (exited, not yet reaped by `up`) does not."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class UpProcess:
    """`trading-ops up` on free ports in a temp dir; kills whatever is left on close (even after a failure)."""

    def __init__(
        self,
        root: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        profile: str = "fast",
        checkout: bool = False,
        generation: Generation = LTS,
        ports: Ports | None = None,
        **config: Any,
    ) -> None:
        """`up` with a configuration of the test's (paths in `root`, `config`'s sections over them), or, with
        `checkout`, as `make run` runs it in a checkout: `root/trading-ops.yaml` and the tokens under `root/var/secrets`
        as they are (make_run_checkout's `make_checkout`), the default state directory `root/var/stack`; only the
        ports are the test's. `up` finds Prometheus and Alertmanager on PATH: `generation`'s come first on it (the
        long-term-support pair unless a test says otherwise), unless `env` is given whole. `ports`: an earlier `up`'s
        (a stack started again as `make run` starts it, on the same ports), else free ones."""
        self.root = root
        # The pair's too: unused without it.
        self.ports = ports or Ports(**{name: free_port() for name in PORT_ORDER})
        self.config = root / "trading-ops.yaml"
        self.secrets = root / "var" / "secrets" if checkout else root / "secrets"
        self.state_dir = root / "var" / "stack" if checkout else root / "stack"
        args = [sys.executable, "-m", "trading_ops", "--config", str(self.config), "up", "--profile", profile]
        if not checkout:
            self.config.write_text(yaml.safe_dump(self._settings(root, config)))
            args += ["--state-dir", str(self.state_dir)]
        args += ["--ready-timeout", "90"]
        args += [f"{port_option(name)}={getattr(self.ports, name)}" for name in PORT_ORDER]
        args += extra  # last, so a test's own flags win
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=generation.path_env() if env is None else env,
            cwd=root,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @staticmethod
    def _settings(root: Path, config: dict[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "database": {"url": f"sqlite:///{root / 'trading-ops.db'}"},
            "bot": {"data_dir": str(root / "bot"), "control_token_file": str(root / "secrets" / "control-token")},
            "reconciler": {
                "token_file": str(root / "secrets" / "reconciler-token"),
                "read_token_file": str(root / "secrets" / "reconciler-read-token"),
            },
            "paper": {"seed": 7},
        }
        for section, values in config.items():
            settings.setdefault(section, {}).update(values)
        return settings

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = STARTUP_SECONDS) -> str:
        end = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                if found is not None:
                    return found
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"up exited ({self.proc.returncode}) first:\n{self.output}")
                if time.monotonic() > end:
                    raise AssertionError(f"no such line within {timeout}s:\n{self.output}")
                self.changed.wait(0.5)

    def wait_up(self) -> None:
        """Until the whole banner is out (its first line comes before the URLs and commands)."""
        self.wait_line(lambda line: "local stack is up" in line)
        self.wait_line(lambda line: line.startswith("Ctrl-C stops everything"))

    def pids(self) -> dict[str, int]:
        return {m["name"]: int(m["pid"]) for line in self.lines if (m := STARTED_RE.match(line))}

    def url(self, role: str, path: str = "") -> str:
        return self.ports.url(role) + path

    def healthy(self, child: str) -> bool:
        role, path = HEALTH[child]
        try:
            with urllib.request.urlopen(self.url(role, path), timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(STOP_SECONDS)
        self.reader.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pid in self.pids().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.stdout:
            self.proc.stdout.close()
