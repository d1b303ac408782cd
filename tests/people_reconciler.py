"""A reconciler's configuration for the tests of who decides: one bot behind it, its people's named tokens (each its
owner's alone, in BASE/secrets: tests/secret_file.py), the rules and approvals given, and the key it signs decisions
with. The people's tokens are `token_of(name)`; a person's file is `person_token_file(base, name)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from fake_bot import FakeBot
from reconciler_server import BOT_TOKEN, READ_TOKEN, TOKEN
from secret_file import write_secret

from trading_ops.decisions import ensure_key_files, inline_public_key


def token_of(name: str) -> str:
    return f"token-of-{name}-0123456789abcdef"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_of(name)}"}


def person_token_file(base: Path, name: str) -> Path:
    return base / "secrets" / f"{name}-token"


def people_config(
    base: Path,
    db: str,
    bot: FakeBot,
    am_url: str,
    *,
    people: dict[str, str],
    rules: list[dict[str, Any]],
    approvals: dict[str, int],
    stages: list[dict[str, Any]],
) -> tuple[Path, str]:
    """The configuration file written in `base`, and the public key a bot trusts (as bot.decision_keys takes it)."""
    secrets = base / "secrets"
    for name, value in (("webhook-token", TOKEN), ("read-token", READ_TOKEN), ("bot-token", BOT_TOKEN)):
        write_secret(secrets / name, value)
    for person in people:
        write_secret(person_token_file(base, person), token_of(person))
    (base / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": rules}))
    public = ensure_key_files(secrets / "decision-key", base / "decision-key.pub")
    data = {
        "database": {"url": db},
        "bot": {"ramp": {"stages": stages}},
        "bots": [
            {
                "name": "paper-1",
                "instance": bot.url.removeprefix("http://"),
                "url": bot.url,
                "token_file": str(secrets / "bot-token"),
            }
        ],
        "reconciler": {
            "token_file": str(secrets / "webhook-token"),
            "read_token_file": str(secrets / "read-token"),
            "api_tokens": [
                {"name": p, "scope": scope, "token_file": str(person_token_file(base, p))}
                for p, scope in people.items()
            ],
            "playbook": str(base / "playbook.yml"),
            "poll_interval_seconds": 0.05,
            "lease_seconds": 10,  # half: the idle-in-transaction limit (1.5 s cut starved sessions)
            "check_silences": False,
            "prometheus_url": "http://127.0.0.1:9",
            "alertmanager_url": am_url,
            "watchdog": {"window_seconds": 0},
            "approvals": approvals,
            "decision_key_file": str(secrets / "decision-key"),
        },
    }
    path = base / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, inline_public_key(public)
