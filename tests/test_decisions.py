"""The keys of signed decisions (trading_ops.decisions) as `config check` and the services read them: the reconciler's
private key owner-only and Ed25519, each of the bot's trusted keys a PEM file or an inline key; one line naming the key
for anything else (exit 2). Real key files, the real CLI in-process; no server is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from secret_file import write_secret

from trading_ops.cli import main
from trading_ops.decisions import ensure_key_files, inline_public_key, key_id, load_public_key
from trading_ops.secret_files import MOUNTED_ENV

CONTROL_TOKEN = "a-control-token-long-enough-0123"
WEBHOOK_TOKEN = "a-webhook-token-long-enough-0123"


@pytest.fixture(autouse=True)
def not_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MOUNTED_ENV, raising=False)


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any]) -> tuple[int, str]:
    data = {
        **data,
        "bot": {"control_token_file": str(write_secret(tmp_path / "control", CONTROL_TOKEN)), **data.get("bot", {})},
    }
    data["reconciler"] = {"token_file": str(write_secret(tmp_path / "webhook", WEBHOOK_TOKEN)), **data["reconciler"]}
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(data))
    status = main(["--config", str(path), "config", "check"])
    return status, capsys.readouterr().err.strip()


def test_generated_keys_pass_and_a_wrong_key_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = tmp_path / "secrets" / "decision-key", tmp_path / "decision-key.pub"
    trusted = ensure_key_files(private, public)
    assert private.stat().st_mode & 0o777 == 0o600 and (private.parent.stat().st_mode & 0o777) == 0o700
    # Generated once: a second call keeps the key.
    assert key_id(ensure_key_files(private, public)) == key_id(trusted)
    assert key_id(load_public_key(inline_public_key(trusted))) == key_id(trusted)
    good = {"reconciler": {"decision_key_file": str(private)}, "bot": {"decision_keys": [str(public)]}}
    assert check(tmp_path, capsys, good) == (0, "")
    # Others may read the private key: refused as every secret file is.
    private.chmod(0o644)
    status, err = check(tmp_path, capsys, good)
    assert status == 2 and err.startswith("trading-ops: config: reconciler.decision_key_file: ") and "0644" in err
    private.chmod(0o600)
    # Not an Ed25519 key; a trusted key that is not there, or not a key.
    ec = tmp_path / "ec-key"
    ec_pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(ec, ec_pem.decode())
    cases = [
        (
            {"reconciler": {"decision_key_file": str(ec)}},
            "reconciler.decision_key_file: ",
            "not an Ed25519 private key",
        ),
        (
            {"reconciler": {}, "bot": {"decision_keys": [str(public), str(tmp_path / "nowhere.pub")]}},
            "bot.decision_keys[1]: ",
            "cannot read",
        ),
        (
            {"reconciler": {}, "bot": {"decision_keys": [str(private)]}},
            "bot.decision_keys[0]: ",
            "not a PEM public key",
        ),
        ({"reconciler": {}, "bot": {"decision_keys": ["ed25519:AAAA"]}}, "bot.decision_keys[0]: ", "not 32 bytes"),
    ]
    for data, key, problem in cases:
        status, err = check(tmp_path, capsys, data)
        assert status == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"trading-ops: config: {key}") and problem in err, err


def test_a_bot_with_a_ramp_and_no_trusted_key_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ramp = {"stages": [{"name": "small", "max_position_notional": 10}, {"name": "more", "max_position_notional": 20}]}
    status, err = check(tmp_path, capsys, {"reconciler": {}, "bot": {"ramp": ramp}})
    assert status == 0
    assert err == (
        "trading-ops: config: warning: bot.decision_keys: none: the bot has a ramp and trusts no decision key, so it "
        "refuses every promotion (and a live start); give the reconciler's public key"
    )
