"""Find and read the repo's monitoring configurations (prometheus/, alertmanager/) that the local stack runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import trading_ops

PROMETHEUS_CONFIG = Path("prometheus/prometheus.yml")
ALERTMANAGER_CONFIG = Path("alertmanager/alertmanager.yml")


class MonitoringConfigError(Exception):
    """The repo's monitoring configuration is missing or cannot be adapted (one line, exit 2)."""


def find_repo(explicit: str | None) -> Path:
    """The directory holding prometheus/ and alertmanager/: `explicit`, else the current directory, else the
    source checkout the package runs from (an editable install)."""
    candidates = [Path(explicit)] if explicit else [Path.cwd(), Path(trading_ops.__file__).resolve().parent.parent]
    for candidate in candidates:
        if (candidate / PROMETHEUS_CONFIG).is_file() and (candidate / ALERTMANAGER_CONFIG).is_file():
            return candidate.resolve()
    where = " or ".join(str(c) for c in candidates)
    raise MonitoringConfigError(
        f"no {PROMETHEUS_CONFIG} and {ALERTMANAGER_CONFIG} in {where}: run from the trading-ops checkout or pass --repo"
    )


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`, or MonitoringConfigError naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MonitoringConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise MonitoringConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MonitoringConfigError(f"{path}: expected a mapping at the top level")
    return data


def dump_yaml(path: Path, data: Any, header: str) -> None:
    """Write `data` as YAML under a comment header saying where it came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(comment + body, encoding="utf-8")
