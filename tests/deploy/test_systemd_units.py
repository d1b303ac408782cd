"""The shipped systemd units, read without running them (`systemd-analyze verify` and `security`). Under real systemd,
with the polkit rule under polkitd: tests/deploy/test_systemd_real.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from system_binaries import REPO_ROOT, run_binary

from trading_ops.config import parse_config

UNIT_SUFFIXES = {".service", ".timer", ".socket", ".path", ".target", ".mount"}
# Not the repository's own: the local stack's state, pip's in-tree build, hidden folders (.venv, .git, caches).
SKIP_DIRS = {"var", "build", "dist", "node_modules"}
UNITS = sorted(
    p
    for p in REPO_ROOT.rglob("*")
    if p.suffix in UNIT_SUFFIXES
    and p.is_file()
    and not any(part in SKIP_DIRS or part.startswith(".") for part in p.relative_to(REPO_ROOT).parent.parts)
)
SERVICES = [u for u in UNITS if u.suffix == ".service"]
# Where the units expect the installation; the tests point it at this interpreter's environment.
INSTALL_BIN = "/opt/trading-ops/.venv/bin/"
# `systemd-analyze security` exposure, 0-100 (the command prints it /10): 1.3 is what the units rate today;
# above 2.0 ("OK" ends at 4.9) something was dropped.
MAX_EXPOSURE = 20
# The units that run a bot on the runtime (its watchdog pings while the trading loop makes progress).
BOT_UNITS = ("trading-ops-paper-bot", "trading-ops-bot@")
TEMPLATE = REPO_ROOT / "trading_ops/bot/systemd/trading-ops-bot@.service"
HARDENING = {
    "NoNewPrivileges": "true",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "PrivateDevices": "true",
    "CapabilityBoundingSet": "",
    "RestrictSUIDSGID": "true",
    "SystemCallArchitectures": "native",
}


def unit_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value given (systemd allows repeating a key)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def installed_copy(unit: Path, into: Path, text: str | None = None) -> Path:
    """The unit (or `text` under its name) in `into`, its commands pointed at this environment's `trading-ops`."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "trading-ops").exists(), "the trading-ops console script is not installed in this venv"
    body = (text if text is not None else unit.read_text()).replace(INSTALL_BIN, f"{bin_dir}/")
    into.mkdir(parents=True, exist_ok=True)
    copy = into / unit.name
    copy.write_text(body)
    return copy


def verify_problems(unit: Path) -> str:
    """What `systemd-analyze verify` says about the unit: empty when it is clean. systemd only warns about an
    unknown key or a value it cannot parse (and exits 0), so any output is a problem."""
    result = run_binary("systemd-analyze", "verify", "--man=no", unit, cwd=unit.parent)
    return (result.stdout + result.stderr).strip() or ("" if result.returncode == 0 else f"exit {result.returncode}")


def test_the_repository_ships_units() -> None:
    names = {u.name for u in UNITS}
    assert {"trading-ops-paper-bot.service", "trading-ops-reconciler.service", TEMPLATE.name} <= names


def test_any_bot_but_the_shipped_kinds_runs_in_an_instance_of_the_template() -> None:
    """What the reconciler restarts for a ccxt bot (its derived `unit`) is an instance of the shipped template, the
    polkit rule allows it, and the template keeps each instance's files apart (its name in every path)."""
    bots = [{"name": "eth-mm", "kind": "ccxt", "instance": "10.0.1.21:9101", "url": "http://10.0.1.21:9101"}]
    (target,) = parse_config({"bots": bots}).reconciler.targets.values()
    assert target.unit == "trading-ops-bot@eth-mm.service"
    rule = (REPO_ROOT / "trading_ops/reconciler/systemd/50-trading-ops-reconciler.rules").read_text()
    assert "bot@" in rule
    service = parse_unit(TEMPLATE.read_text())["Service"]
    assert service["Type"] == ["notify"] and service["WatchdogSec"]
    for key in ("WorkingDirectory", "ExecStart", "ExecStartPre", "ReadWritePaths"):
        assert all("%i" in value for value in service[key]), key
    assert service["ExecStart"] == [
        "/opt/trading-ops/.venv/bin/python /opt/trading-ops/bots/%i.py /etc/trading-ops/bots/%i.yaml"
    ]
    # Its own state directory only (each StateDirectory= is writable: not the paper bot's, not the other bots').
    assert service["StateDirectory"] == ["trading-ops/bots/%i"]


def test_the_template_rates_ok_as_an_instance_too(tmp_path: Path) -> None:
    """`systemd-analyze security` of an instance (what runs), not only of the template file."""
    copy = installed_copy(TEMPLATE, tmp_path)
    instance = copy.rename(tmp_path / "trading-ops-bot@eth-mm.service")
    assert verify_problems(instance) == ""
    result = run_binary("systemd-analyze", "security", "--offline=true", f"--threshold={MAX_EXPOSURE}", instance)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert re.search(r"trading-ops-bot@eth-mm\.service: \d+\.\d OK", result.stdout), result.stdout[-300:]


@pytest.mark.parametrize("unit", UNITS, ids=unit_id)
def test_systemd_analyze_verify_accepts_the_unit(unit: Path, tmp_path: Path) -> None:
    for other in UNITS:  # units may refer to each other (OnFailure=, a timer's service)
        installed_copy(other, tmp_path)
    assert verify_problems(tmp_path / unit.name) == ""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("MemoryMax=512M", "MemoryMaxx=512M"), "Unknown key"),
        (("Restart=on-failure", "Restart=sometimes"), "restart"),
        (("StartLimitBurst=5", "StartLimitBurst=five"), "five"),
        (("[Service]\n", "[Service]\nExecStartPost=/nonexistent/trading-ops\n"), "/nonexistent/trading-ops"),
    ],
    ids=["unknown-key", "bad-restart", "bad-start-limit", "missing-binary"],
)
def test_systemd_analyze_verify_rejects_a_broken_unit(change: tuple[str, str], expected: str, tmp_path: Path) -> None:
    unit = REPO_ROOT / "trading_ops/paper/systemd/trading-ops-paper-bot.service"
    old, new = change
    text = unit.read_text()
    assert old in text
    problems = verify_problems(installed_copy(unit, tmp_path, text.replace(old, new, 1)))
    assert expected.lower() in problems.lower(), problems


@pytest.mark.parametrize("unit", SERVICES, ids=unit_id)
def test_service_is_hardened_to_an_ok_exposure(unit: Path, tmp_path: Path) -> None:
    copy = installed_copy(unit, tmp_path)
    result = run_binary("systemd-analyze", "security", "--offline=true", f"--threshold={MAX_EXPOSURE}", copy)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=unit_id)
def test_service_stops_a_crash_loop_and_bounds_its_resources(unit: Path) -> None:
    sections = parse_unit(unit.read_text())
    unit_section, service = sections.get("Unit", {}), sections["Service"]
    # Start limits live in [Unit] (in [Service] systemd ignores them): a crash loop ends in "failed", then pages.
    assert "StartLimitIntervalSec" in unit_section and "StartLimitBurst" in unit_section
    assert int(unit_section["StartLimitBurst"][-1]) >= 1
    if service.get("Type", ["simple"])[-1] != "oneshot":
        assert service.get("Restart") == ["on-failure"]
    if service.get("Type", ["simple"])[-1] == "notify" and unit.name.startswith(BOT_UNITS):
        assert "WatchdogSec" in service  # the bot pings only while its trading loop makes progress
    assert "MemoryMax" in service and "LimitNOFILE" in service
    for key, value in HARDENING.items():
        assert service.get(key, [None])[-1] == value, f"{key}={value} missing"
    assert "@system-service" in service.get("SystemCallFilter", [])
    families = " ".join(service.get("RestrictAddressFamilies", [])).split()
    assert families and "AF_PACKET" not in families and not families[0].startswith("~")
    state = [p for v in service.get("ReadWritePaths", []) for p in v.split()]
    assert state, "no ReadWritePaths: under ProtectSystem=strict the service could write nothing"


def test_the_systemd_action_runs_systemctl_without_sudo() -> None:
    """Through polkit over D-Bus; sudo cannot work under the reconciler unit's NoNewPrivileges=true."""
    assert parse_config({}).reconciler.systemctl == ["systemctl"]
    for doc in [*sorted((REPO_ROOT / "runbooks").glob("*.md")), REPO_ROOT / "trading-ops.example.yaml", *SERVICES]:
        assert not re.search(r"\[sudo,|sudo -n systemctl", doc.read_text()), f"{doc.name} suggests sudo"
