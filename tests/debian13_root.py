"""The Debian 13 (trixie) root of tests/deploy/test_debian13_real.py, the layer over it with what the Makefile's
run-deps installs there, and the layer with the checkout's virtualenv as `make setup` installed it there: made once
per machine (the virtualenv once per lock), cached under ~/.cache/trading-ops (tests/deployment_prebuild.py builds the
first two ahead of the test; the test itself saves the third from its first `make setup`)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from debian_root import _locked, cache_dir, debian_root
from nspawn_machine import Overlay, nspawn_pipe
from system_binaries import REPO_ROOT

SUITE = "trixie"
# What a fresh Debian 13 machine of this project has before `make setup`: Python with venv, make, CA certificates, and
# systemd to boot.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates", "make")
# The smoke subset's docker-compose: Debian 13's is v2 (its `config` renders only the active profiles' services).
SMOKE_PACKAGES = ("docker-compose",)


def makefile_pairs(name: str) -> dict[str, str]:
    """The Makefile's `NAME := binary:package ...` as binary -> package."""
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = re.findall(rf"^{name} := (.*)$", text, re.MULTILINE)
    return dict(pair.split(":", 1) for pair in line.split())


def run_deps_layer(root: Path) -> Path:
    """An overlay layer over `root` holding what the Makefile's `run-deps` installs on Debian 13 (its recipe run in the
    root, as `make run` runs it on a machine without Prometheus) and SMOKE_PACKAGES (cached)."""
    recipe = makefile_pairs("RUN_DEPS")
    spec = "\n".join([root.name, *sorted(f"{b}:{p}" for b, p in recipe.items()), *SMOKE_PACKAGES])
    target = cache_dir().parent / "layers" / f"debian13-run-deps-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    with _locked(target.with_suffix(".lock")):
        if (target / "etc" / "trading-ops-run-deps.complete").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        source = building / "source"
        source.mkdir(parents=True)
        shutil.copy2(REPO_ROOT / "Makefile", source / "Makefile")
        overlay = Overlay([root], building)
        merged = overlay.mount()
        try:
            nspawn_pipe(
                merged,
                "make -s --no-print-directory -C /source run-deps\n"
                "command -v prometheus promtool prometheus-alertmanager amtool\n"
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                f"{' '.join(SMOKE_PACKAGES)} > /dev/null\n"
                "apt-get clean\n",
                binds=[(source, "/source")],
                timeout=900,
            )
            (merged / "etc" / "trading-ops-run-deps.complete").write_text(spec + "\n", encoding="utf-8")
        finally:
            overlay.unmount()
        shutil.rmtree(building / "work", ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        (building / "upper").rename(target)
        shutil.rmtree(building, ignore_errors=True)
    return target


# The Debian parts of docs/deployment.md's highly available topology (tests/ha_topology.py's DEBIAN13), as Debian 13
# packages them: etcd, Patroni with the etcd client its etcd3 store imports (python3-etcd, only recommended), PostgreSQL
# 17's server, and the monitoring pair with the node exporter.
HA_PACKAGES = (
    "etcd-server",
    "patroni",
    "python3-etcd",
    "postgresql",
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
)
HA_MARKER = Path("etc") / "trading-ops-ha.complete"


def ha_layer(root: Path, run_deps: Path) -> Path:
    """An overlay layer over `root` and `run_deps` holding HA_PACKAGES, apt-installed in the root (cached): nothing is
    started (a policy-rc.d refuses it) and no cluster is made (postgresql-common's `create_main_cluster` off)."""
    spec = "\n".join([root.name, run_deps.name, *HA_PACKAGES])
    target = cache_dir().parent / "layers" / f"debian13-ha-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    with _locked(target.with_suffix(".lock")):
        if (target / HA_MARKER).exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        overlay = Overlay([run_deps, root], building)
        merged = overlay.mount()
        try:
            nspawn_pipe(
                merged,
                "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d\n"
                "chmod 755 /usr/sbin/policy-rc.d\n"
                "mkdir -p /etc/postgresql-common/createcluster.d\n"
                "echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf\n"
                "apt-get update -qq\n"
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                f"{' '.join(HA_PACKAGES)} > /dev/null\n"
                "rm /usr/sbin/policy-rc.d\n"
                "apt-get clean\n"
                "command -v etcd patroni prometheus prometheus-alertmanager prometheus-node-exporter\n"
                "ls /usr/lib/postgresql/*/bin/pg_ctl\n",
                timeout=1200,
            )
            (merged / HA_MARKER).write_text(spec + "\n", encoding="utf-8")
        finally:
            overlay.unmount()
        shutil.rmtree(building / "work", ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        (building / "upper").rename(target)
        shutil.rmtree(building, ignore_errors=True)
    return target


def prepared_root() -> tuple[Path, Path]:
    """The cached Debian 13 root and its run-deps layer (tests/deployment_prebuild.py builds them ahead too)."""
    root = debian_root(PACKAGES, suite=SUITE)
    return root, run_deps_layer(root)


# What `make setup` installs from (its prerequisites in the Makefile): a virtualenv installed with the same files on the
# same root and run-deps layer is the one a new `make setup` would install.
SETUP_INPUTS = ("constraints.txt", "pyproject.toml")
VENV_MARKER = Path("etc") / "trading-ops-venv.complete"


def venv_layer(root: Path, run_deps: Path, checkout: str) -> Path:
    """Where the layer holding `checkout`/.venv, as `make setup` installed it over `root` and `run_deps`, is cached:
    keyed by the two layers and by what SETUP_INPUTS hold (constraints.txt: the lock). It is complete once
    `venv_layer_complete` says so; `save_venv_layer` makes it."""
    digest = hashlib.sha256("\n".join([root.name, run_deps.name, checkout]).encode())
    for name in SETUP_INPUTS:
        digest.update(b"\0" + name.encode() + b"\0" + (REPO_ROOT / name).read_bytes())
    return cache_dir().parent / "layers" / f"debian13-venv-{digest.hexdigest()[:12]}"


def venv_layer_complete(target: Path) -> bool:
    return (target / VENV_MARKER).exists()


def save_venv_layer(upper: Path, checkout: str, target: Path) -> None:
    """Keep the virtualenv a machine's `make setup` installed (in its overlay's `upper`: the machine started without
    one) as the layer `target`, for the next run with the same lock; a copy, the machine's own files untouched."""
    venv = Path(checkout.lstrip("/")) / ".venv"
    with _locked(target.with_suffix(".lock")):
        if venv_layer_complete(target):
            return
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        (building / venv).parent.mkdir(parents=True)
        for parent in venv.parents[:-1]:  # /root keeps its mode in the merged view: the top layer's directory's
            shutil.copystat(upper / parent, building / parent)
        subprocess.run(["cp", "-a", str(upper / venv), str(building / venv)], check=True, timeout=600)
        (building / VENV_MARKER).parent.mkdir(parents=True)
        (building / VENV_MARKER).write_text(target.name + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
