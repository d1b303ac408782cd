"""`make lock`'s check that a new constraints.txt holds on every Python this project's machines run (Debian 12's 3.11,
Debian 13's 3.13): uv resolves the project's extras for each of them, on Linux x86_64 with the older Debian's glibc,
against the new pins, and the resolution must be the pins themselves, each from a wheel where the lock's own
resolution took a wheel (a pin with no wheel for a Python would be built from source there, if at all).

`python tests/lock_pythons.py REPORT CONSTRAINTS EXTRAS PYTHON...`: REPORT is pip's installation report of the lock's
resolution. Prints one line and exits 1 when a Python does not take the pins; 0 when every one does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Wheels that run on Debian 12 (glibc 2.36) run on Debian 13 (2.41) too.
PLATFORM = "x86_64-manylinux_2_36"
# Pins that pip and uv install themselves, not part of the project's resolution.
TOOLS = {"pip", "uv"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
TIMEOUT_SECONDS = 600


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path) -> dict[str, str]:
    found = {}
    for line in constraints.read_text(encoding="utf-8").splitlines():
        if match := PIN.match(line.strip()):
            found[canonical(match[1])] = match[2]
    return found


def built_from_source(report: Path) -> set[str]:
    """The packages the lock's resolution took as a source distribution (no wheel at all at that version)."""
    found = set()
    for item in json.loads(report.read_text(encoding="utf-8"))["install"]:
        url = item.get("download_info", {}).get("url", "")
        if not url.endswith(".whl") and not url.startswith("file:"):
            found.add(canonical(item["metadata"]["name"]))
    return found


def uv_binary(constraints: Path, scratch: Path) -> str:
    """The uv of the checkout's virtualenv, else one on PATH, else the pinned uv installed into `scratch`."""
    venv_uv = REPO_ROOT / ".venv" / "bin" / "uv"
    if venv_uv.exists():
        return str(venv_uv)
    if found := shutil.which("uv"):
        return found
    target = scratch / "uv"
    pinned = pins(constraints).get("uv")
    spec = f"uv=={pinned}" if pinned else "uv"
    install = [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), spec]
    subprocess.run(install, check=True, timeout=TIMEOUT_SECONDS, stdout=subprocess.DEVNULL)
    return str(target / "bin" / "uv")


def resolve(uv: str, python: str, constraints: Path, extras: list[str], wheels_only: list[str], out: Path) -> str:
    """uv's resolution for `python` into `out`; its last error line, or "" when it resolved."""
    argv = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--python-version", python]
    argv += ["--python-platform", PLATFORM, "-c", str(constraints), "-o", str(out)]
    if wheels_only:
        argv += ["--only-binary", ",".join(wheels_only)]
    for extra in extras:
        argv += ["--extra", extra]
    argv.append(str(REPO_ROOT / "pyproject.toml"))
    env = {**os.environ, "UV_NO_CONFIG": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False, env=env)
    if done.returncode == 0:
        return ""
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    causes = [line for line in lines if line.startswith(("cause:", "Because", "╰─▶"))]
    return (causes or lines or ["no output"])[0]


def check(report: Path, constraints: Path, extras: list[str], pythons: list[str]) -> str:
    """ "" when every Python in `pythons` takes exactly the pins, else one line saying which does not and why."""
    pinned = pins(constraints)
    project = {name: version for name, version in pinned.items() if name not in TOOLS}
    wheels_only = sorted(set(project) - built_from_source(report))
    with tempfile.TemporaryDirectory() as scratch:
        uv = uv_binary(constraints, Path(scratch))
        for python in pythons:
            out = Path(scratch) / f"resolved-{python}.txt"
            error = resolve(uv, python, constraints, extras, wheels_only, out)
            if error:
                return f"the lock does not install on Python {python}: {error}"
            resolved = pins(out)
            extra = sorted(f"{name}=={version}" for name, version in resolved.items() if name not in project)
            if extra:
                return f"Python {python} needs packages the lock does not pin: {', '.join(extra)}"
    return ""


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: lock_pythons.py REPORT CONSTRAINTS EXTRAS PYTHON...", file=sys.stderr)
        return 2
    report, constraints, extras, *pythons = argv
    problem = check(Path(report), Path(constraints), [e for e in extras.split(",") if e], pythons)
    if problem:
        print(f"make lock: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
