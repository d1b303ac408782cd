"""E-mail as a first-class path, proved against a real SMTP server (aiosmtpd) on loopback: the shipped Alertmanager
e-mail receiver (a real prometheus-alertmanager, SMTP AUTH with the password from a file) and apprise mailto://
for the reconciler's own notifications. The messages are read back and checked."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from alertmanager_server import run_alertmanager
from ops_setup import ops_config
from ports import free_port
from prometheus_client import CollectorRegistry
from secret_file import write_secret
from server_process import stop
from smtp_sink import Mailbox, SMTPServer
from system_binaries import ALERTMANAGER_BIN

from trading_ops.clients.notify import Notifier
from trading_ops.config import resolve_secret
from trading_ops.reconciler.deadman import DeadMansSwitch
from trading_ops.reconciler.metrics import ReconcilerMetrics

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "alertmanager" / "alertmanager.yml"
SECRETS_DIR = "/etc/alertmanager/secrets/"
SMTP_USER = "trading-ops@example.com"
SMTP_PASSWORD = "s3cret-from-a-file"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LoginPromptSMTP(SMTP):
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"


class LoginPromptController(Controller):
    def factory(self) -> SMTP:
        return LoginPromptSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def authenticating_smtp() -> Iterator[tuple[SMTPServer, list[tuple[str, str, bool]]]]:
    """A real SMTP server that requires AUTH (without TLS: loopback only) and checks the password. Alertmanager 0.25
    authenticates with LOGIN, whose prompts it expects as "Username:" and "Password:"."""
    logins: list[tuple[str, str, bool]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        login, password = (_text(data.login), _text(data.password)) if isinstance(data, LoginPassword) else ("", "")
        ok = (login, password) == (SMTP_USER, SMTP_PASSWORD)
        logins.append((mechanism, login, ok))
        return AuthResult(success=ok)

    mailbox = Mailbox()
    port = free_port()
    controller = LoginPromptController(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        yield SMTPServer("127.0.0.1", port, mailbox, controller), logins
    finally:
        controller.stop()


def shipped_email_only(tmp: Path, smtp: SMTPServer) -> Path:
    """The shipped configuration with only its e-mail path: every alert to the pager receiver's email_configs (its
    PagerDuty part would call the internet), the global SMTP settings pointed at the local server without TLS."""
    config = yaml.safe_load(SHIPPED.read_text())
    secrets = tmp / "secrets"
    secrets.mkdir()
    # Without a trailing newline: Alertmanager 0.25 sends the file's bytes as they are (a newline would be part of
    # the password; secrets/README.md says so).
    write_secret(secrets / "smtp-password", SMTP_PASSWORD)
    assert config["global"]["smtp_auth_password_file"] == f"{SECRETS_DIR}smtp-password"
    config["global"].update(
        smtp_smarthost=f"{smtp.host}:{smtp.port}",
        smtp_require_tls=False,
        smtp_auth_password_file=str(secrets / "smtp-password"),
    )
    (pager,) = [r for r in config["receivers"] if r["name"] == "pager"]
    (email_config,) = pager["email_configs"]
    config["receivers"] = [{"name": "pager", "email_configs": [email_config]}]
    config["route"] = {"receiver": "pager", "group_by": ["alertname", "instance"], "group_wait": "0s"}
    config["inhibit_rules"] = []
    config["templates"] = [str(REPO / "alertmanager" / "templates" / "*.tmpl")]
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.alertmanager
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_alertmanager_pages_by_email_through_the_shipped_receiver(
    tmp_path: Path, authenticating_smtp: tuple[SMTPServer, list[tuple[str, str, bool]]]
) -> None:
    smtp, logins = authenticating_smtp
    if ALERTMANAGER_BIN is None or shutil.which("amtool") is None:
        pytest.fail("prometheus-alertmanager and amtool are required (apt-get install prometheus-alertmanager)")
    config = shipped_email_only(tmp_path, smtp)
    check = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    am = run_alertmanager(config, tmp_path / "data", free_port(), tmp_path / "am.log")
    try:
        am.post_alerts(
            [
                {
                    "labels": {"alertname": "TradingBotDown", "instance": "bot-1", "severity": "critical"},
                    "annotations": {
                        "summary": "The trading bot is down.",
                        "description": "bot-1 has not been scraped for 1m.",
                        "runbook_url": "https://example.com/runbooks/TradingBotDown.md",
                    },
                }
            ]
        )
        try:
            (message,) = smtp.mailbox.wait(1)
        except AssertionError as exc:
            log = (tmp_path / "am.log").read_text()[-1500:]
            raise AssertionError(f"{exc}; logins {logins}; Alertmanager says: {log}") from exc
    finally:
        stop(am.proc)
    assert message["Subject"] == "[FIRING:1] TradingBotDown on bot-1"
    assert message["To"] == "oncall@example.com" and message["From"] == "trading-ops@example.com"
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "*The trading bot is down.* (critical)" in text and "bot-1 has not been scraped for 1m." in text
    assert "Runbook: https://example.com/runbooks/TradingBotDown.md" in text
    assert (SMTP_USER, True) in [(login, ok) for _, login, ok in logins]  # the password from the file


async def test_the_reconcilers_own_notifications_go_out_by_apprise_mailto(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    config = ops_config(tmp_path, "sqlite://", notify_urls=[smtp_server.mailto("oncall@example.com")])
    # As the reconciler builds it (trading_ops.reconciler.app.workers_ctx): the URLs from notifications.urls_file.
    notifier = Notifier.from_text(resolve_secret(config, config.notifications, "urls", "notifications.urls"))
    now = [1_000.0]
    deadman = DeadMansSwitch(60, 1, notifier, ReconcilerMetrics(CollectorRegistry()), clock=lambda: now[0])
    now[0] += 61  # no Watchdog for longer than the window
    assert await deadman.check() is True
    (message,) = await smtp_server.mailbox.await_messages(1)
    assert message["Subject"] == "[trading-ops] alerting pipeline broken"
    assert message["To"] == "oncall@example.com" and message["From"] == "trading-ops@example.com"
    body = message.get_body(preferencelist=("plain", "html")).get_content()
    assert "No Watchdog alert reached the reconciler for 61s" in body


async def test_an_unreachable_mail_server_is_a_false_not_an_exception(tmp_path: Path) -> None:
    url = f"mailto://127.0.0.1:{free_port()}?from=a@example.com&to=b@example.com&mode=insecure"
    assert await Notifier([url]).notify("subject", "body") is False
