"""Render the rule files from the templates and the values: the defaults, with a user's file of changed keys over
them, each checked (type, range, a Prometheus duration, a PromQL selector) before anything is written."""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "trading_ops.rulepack"
# A rule file that did not exist: readable by Prometheus's user, as a checkout's files are.
NEW_FILE_MODE = 0o644
# A placeholder in a template: `[[ section.key ]]` (PromQL and Go templates use neither `[[` nor `]]`).
PLACEHOLDER = re.compile(r"\[\[\s*([a-z_]+(?:\.[a-z_]+)?)\s*\]\]")
DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
STRING = r'"(?:[^"\\\n]|\\.)*"'
MATCHER = re.compile(rf"\s*({LABEL})\s*(=~|!~|!=|=)\s*({STRING})\s*")
# Keys whose value is a share: strictly between 0 and 1.
RATIOS = {
    "thresholds.rate_limit_headroom_ratio",
    "thresholds.availability_objective",
    "thresholds.order_latency_objective",
}


def le_matcher(seconds: float) -> str:
    """The regex (inside a PromQL string) of a histogram bucket's `le` as clients spell it: 1 is "1" (Go) or "1.0"
    (Python, and Prometheus 3 stores it so), 0.5 is "0.5"."""
    if float(seconds).is_integer():
        return f"{int(seconds)}(\\\\.0)?"
    return str(float(seconds)).replace(".", "\\\\.")


# Placeholders computed from a value: name -> (the value it follows, how).
DERIVED = {"order_latency_le": ("thresholds.order_latency_seconds", le_matcher)}


class RulePackError(ValueError):
    """Bad values: one line naming the key."""


def defaults() -> dict[str, Any]:
    return flatten(yaml.safe_load(resources.files(PACKAGE).joinpath("defaults.yml").read_text(encoding="utf-8")))


def flatten(document: Any, where: str = "") -> dict[str, Any]:
    """{"thresholds": {"a": 1}} -> {"thresholds.a": 1}."""
    if not isinstance(document, dict):
        raise RulePackError(f"{where or 'the values file'}: expected a mapping, got {type(document).__name__}")
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{where}.{key}" if where else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def selector_problem(text: str) -> str | None:
    """Why `text` is not a PromQL label-matcher list (what goes inside `{...}`), or None."""
    position = 0
    while True:
        match = MATCHER.match(text, position)
        if match is None:
            return f'not a PromQL selector (label="value", label=~"regex", ...): {text!r}'
        label, op, quoted = match.groups()
        if op in ("=~", "!~"):
            try:
                re.compile(yaml.safe_load(quoted))
            except (re.error, yaml.YAMLError) as exc:
                return f"{label}{op}{quoted} is not a regular expression: {exc}"
        position = match.end()
        if position == len(text):
            return None
        if text[position] != ",":
            return f'not a PromQL selector (label="value", label=~"regex", ...): {text!r}'
        position += 1


def check(name: str, value: Any, default: Any) -> None:
    """One value against its default's kind; raises RulePackError naming the key."""
    if isinstance(default, bool) or isinstance(value, bool):
        raise RulePackError(f"{name}: expected a number, got {value!r}")
    if isinstance(default, (int, float)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RulePackError(f"{name}: expected a number, got {value!r}")
        if value <= 0 or (name in RATIOS and value >= 1):
            bounds = "between 0 and 1" if name in RATIOS else "above 0"
            raise RulePackError(f"{name}: expected a number {bounds}, got {value!r}")
    elif not isinstance(value, str):
        raise RulePackError(f"{name}: expected a string, got {value!r}")
    elif name.startswith("durations.") and not DURATION.match(value):
        raise RulePackError(f"{name}: not a Prometheus duration (such as 30s, 2m, 1h30m): {value!r}")
    elif name.startswith("selectors."):
        problem = selector_problem(value)
        if problem is not None:
            raise RulePackError(f"{name}: {problem}")
    if name == "thresholds.order_latency_seconds":
        from trading_ops.bot.metrics import ACK_LATENCY_BUCKETS

        if float(value) not in ACK_LATENCY_BUCKETS:
            boundaries = ", ".join(f"{b:g}" for b in ACK_LATENCY_BUCKETS)
            raise RulePackError(
                f"{name}: {value!r} is not a bucket boundary of tradingbot_order_ack_latency_seconds ({boundaries})"
            )
    elif name == "runbook_url" and not re.match(r"^https?://\S+/$", value):
        raise RulePackError(f"{name}: expected an http(s) URL ending in '/', got {value!r}")


def load_values(path: Path | None) -> dict[str, Any]:
    """The defaults with the keys of the file at `path` (if any) over them, every key checked."""
    values = defaults()
    if path is None:
        return values
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulePackError(f"{path}: cannot read it: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RulePackError(f"{path}: not YAML: {str(exc).splitlines()[0]}") from exc
    for name, value in flatten(document or {}).items():
        if name not in values:
            inside = sorted(key for key in values if key.startswith(f"{name}."))
            if inside:
                raise RulePackError(f"{name}: expected a mapping (of {', '.join(inside)}), got {value!r}")
            section = name.rpartition(".")[0]
            known = sorted(key for key in values if section and key.startswith(f"{section}.")) or sorted(values)
            raise RulePackError(f"{name}: unknown key (known: {', '.join(known)})")
        check(name, value, values[name])
        values[name] = value
    return values


def templates() -> dict[str, str]:
    """Rule file name -> its template."""
    folder = resources.files(PACKAGE).joinpath("templates")
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yml")
    }


def render(values: dict[str, Any]) -> dict[str, str]:
    """Rule file name -> its text with `values`; a template naming an unknown key is an error."""

    values = {**values, **{name: how(values[source]) for name, (source, how) in DERIVED.items()}}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise RulePackError(f"a template names {name!r}, which is not a key of the rule pack's values")
        return str(values[name])

    return {name: PLACEHOLDER.sub(fill, text) for name, text in templates().items()}


def write(rendered: dict[str, str], output: Path) -> list[Path]:
    """Write every rule file into `output`, each replaced whole (a reader never sees half a file) and only once all
    of them are ready: a file that cannot keep its owner leaves every file as it was."""
    output.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, text in rendered.items():
            with tempfile.NamedTemporaryFile(
                "w", dir=output, prefix=f".{name}.", delete=False, encoding="utf-8"
            ) as tmp:
                staged.append((Path(tmp.name), output / name))
                tmp.write(text)
            _keep_permissions(*staged[-1])
        for path, target in staged:
            os.replace(path, target)
    except BaseException:
        for path, _ in staged:
            path.unlink(missing_ok=True)
        raise
    return [target for _, target in staged]


def _keep_permissions(staged: Path, target: Path) -> None:
    """Prometheus reads the rule files as its own user: a file replaced keeps the mode, owner and group of the one
    before it (an operator's root:prometheus 0640 stays so), and a new one is NEW_FILE_MODE, as a checkout's files
    are (a temporary file's own 0600 would lock Prometheus out of its rules)."""
    try:
        before = target.stat()
    except FileNotFoundError:
        staged.chmod(NEW_FILE_MODE)
        return
    if (before.st_uid, before.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(staged, before.st_uid, before.st_gid)
        except PermissionError as exc:
            raise RulePackError(
                f"{target} belongs to uid {before.st_uid} gid {before.st_gid}, which this user cannot give the new "
                "file: run as that user or root (nothing written)"
            ) from exc
    staged.chmod(stat.S_IMODE(before.st_mode))
