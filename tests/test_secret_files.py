"""Secret and private-key files checked as ssh and PostgreSQL check theirs (issue 47): `config check` and each service's
start refuse a token, a venue secret, an SSH identity or a TLS key that its group or others may read, in one line naming
the file and its mode (exit 2), before anything runs; 0600, 0400 and root's 0640 (PostgreSQL's rule, a deployment
guide's root:trading-ops) pass; TRADING_OPS_SECRETS_MOUNTED=1 leaves the modes to an orchestrator. Real files, the real
CLI in-process; no server is needed (a refused service never starts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from secret_file import write_secret
from web_pki import make_pki, web_config

from trading_ops.cli import main
from trading_ops.secret_files import MOUNTED_ENV

CONTROL_TOKEN = "a-control-token-long-enough-0123"
TOO_OPEN = (0o644, 0o604, 0o660, 0o666)


@pytest.fixture(autouse=True)
def not_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MOUNTED_ENV, raising=False)


def config_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one line a refused command prints (it exits 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("mode", TOO_OPEN)
def test_config_check_refuses_a_token_file_others_can_read_naming_the_file_and_its_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    token = write_secret(tmp_path / "control-token", CONTROL_TOKEN)
    token.chmod(mode)
    path = config_file(tmp_path, {"bot": {"control_token_file": str(token)}})
    line = refused(capsys, ["--config", str(path), "config", "check"])
    assert line.startswith("trading-ops: config: bot.control_token_file: ")
    assert f"{token} is open to" in line and f"(mode {mode:04o})" in line and "chmod 600" in line, line
    assert MOUNTED_ENV in line


@pytest.mark.parametrize("mode", (0o600, 0o400, 0o640))
def test_a_secret_its_owners_alone_or_roots_for_its_group_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    if mode == 0o640 and os.geteuid() != 0:
        pytest.skip("0640 passes for a file root owns (PostgreSQL's rule): this test runs as another user")
    token = write_secret(tmp_path / "control-token", CONTROL_TOKEN)
    token.chmod(mode)
    path = config_file(tmp_path, {"bot": {"control_token_file": str(token)}})
    assert main(["--config", str(path), "config", "check"]) == 0, capsys.readouterr().err


def test_an_ssh_identity_others_can_read_is_refused_before_a_step_needs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = write_secret(tmp_path / "control-token", CONTROL_TOKEN)
    identity = write_secret(tmp_path / "backup-key", "-----BEGIN OPENSSH PRIVATE KEY-----\n")
    identity.chmod(0o644)
    data = {
        "bot": {"control_token_file": str(token)},
        "backup": {"remote": {"host": "backup.example.org", "identity_file": str(identity)}},
    }
    line = refused(capsys, ["--config", str(config_file(tmp_path, data)), "config", "check"])
    assert (
        "backup.remote.identity_file: " in line and f"{identity} is open to its group and others (mode 0644)" in line
    ), line


def test_a_tls_key_others_can_read_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path / "pki", "127.0.0.1")
    key = Path(pki.path("server.key"))
    key.chmod(0o644)
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump(web_config(pki)))
    token = write_secret(tmp_path / "control-token", CONTROL_TOKEN)
    data = {"bot": {"control_token_file": str(token), "listen": {"web_config_file": str(web)}}}
    line = refused(capsys, ["--config", str(config_file(tmp_path, data)), "config", "check"])
    assert "tls_server_config.key_file" in line and f"{key} is open to its group and others (mode 0644)" in line, line


@pytest.mark.parametrize(
    ("command", "section"),
    [
        (["paper-gateway"], {"gateway": {"api_key_file": "api-key", "api_secret_file": "api-secret"}}),
        (["reconciler"], {"reconciler": {"token_file": "api-secret"}}),
        (["paper-bot"], {"bot": {"control_token_file": "api-secret"}}),
    ],
)
def test_a_service_refuses_to_start_with_a_secret_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], section: dict[str, Any]
) -> None:
    write_secret(tmp_path / "api-key", "a-key")
    secret = write_secret(tmp_path / "api-secret", CONTROL_TOKEN)
    secret.chmod(0o644)
    line = refused(capsys, ["--config", str(config_file(tmp_path, section)), *command])
    assert f"{secret} is open to its group and others (mode 0644)" in line, line


def test_secrets_an_orchestrator_mounts_may_opt_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = write_secret(tmp_path / "control-token", CONTROL_TOKEN)
    token.chmod(0o444)  # Docker's secrets
    path = config_file(tmp_path, {"bot": {"control_token_file": str(token)}})
    assert main(["--config", str(path), "config", "check"]) == 2
    capsys.readouterr()
    monkeypatch.setenv(MOUNTED_ENV, "1")
    assert main(["--config", str(path), "config", "check"]) == 0, capsys.readouterr().err
