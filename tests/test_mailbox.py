"""`trading-ops mailbox` (trading_ops.mailbox), the compose stack's local mail receiver, as a process: a real SMTP
client (smtplib, as Alertmanager speaks it: EHLO, MAIL, RCPT, DATA) sends to it, the message lands in its Maildir and
its log says so in one line; SIGTERM stops it cleanly. And alertmanager/alertmanager-local.yml, which mails to it,
is what `config local-alertmanager` renders from the shipped file."""

from __future__ import annotations

import mailbox
import os
import signal
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from polling import until
from ports import free_port
from system_binaries import REPO_ROOT, run_binary

from trading_ops.commands.config_cmd import compose_local_alertmanager

LOCAL = REPO_ROOT / "alertmanager" / "alertmanager-local.yml"
SHIPPED = REPO_ROOT / "alertmanager" / "alertmanager.yml"


def send(port: int, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "alertmanager@localhost"
    message["To"] = "oncall@localhost"
    message["Subject"] = subject
    message.set_content("TradingBotDown is firing for paper-bot:9101.")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(message)


def test_the_mailbox_keeps_each_message_and_logs_it_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    maildir = tmp_path / "mail"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_OPS_")}
    argv = [sys.executable, "-m", "trading_ops", "mailbox", "--port", str(port), "--maildir", str(maildir)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        def sent() -> bool:
            try:
                send(port, "[pager] TradingBotDown paper-bot:9101")
            except OSError:
                return False
            return True

        until("the mailbox accepting mail", sent, deadline=30)
        send(port, "[chat] TradingBotHeartbeatStale paper-bot:9101")
        subjects = sorted(str(m["Subject"]) for m in mailbox.Maildir(maildir, create=False))
        assert subjects == ["[chat] TradingBotHeartbeatStale paper-bot:9101", "[pager] TradingBotDown paper-bot:9101"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    received = [line for line in lines if "mailbox: received" in line]
    assert len(received) == 2, out
    assert "for oncall@localhost: [pager] TradingBotDown paper-bot:9101" in received[0], out
    assert "stopped after 2 message(s)" in lines[-1], out
    # One line per message, as the help says: aiosmtpd's own line per SMTP command is not shown.
    assert len(lines) == 4 and "listening on" in lines[0], out


@pytest.mark.parametrize("existing", ["empty", "a Maildir"])
def test_an_existing_maildir_keeps_every_message(tmp_path: Path, existing: str) -> None:
    """`--maildir` naming a directory that exists: empty (made by hand, a volume mounted empty: every message failed,
    as Python's Maildir makes its folders only for a directory it creates), or a Maildir with a message already."""
    maildir = tmp_path / "mail"
    maildir.mkdir()
    if existing == "a Maildir":
        for folder in ("tmp", "new", "cur"):
            (maildir / folder).mkdir()
        earlier = EmailMessage()
        earlier["Subject"] = "earlier"
        mailbox.Maildir(maildir, create=False).add(earlier)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_OPS_")}
    argv = [sys.executable, "-m", "trading_ops", "mailbox", "--port", str(port), "--maildir", str(maildir)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        def sent() -> bool:
            try:
                send(port, "[pager] TradingBotDown paper-bot:9101")
            except OSError:
                return False
            return True

        until("the mailbox accepting mail", sent, deadline=30)
        send(port, "[chat] TradingBotHeartbeatStale paper-bot:9101")
        subjects = sorted(str(m["Subject"]) for m in mailbox.Maildir(maildir, create=False))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    kept = ["[chat] TradingBotHeartbeatStale paper-bot:9101", "[pager] TradingBotDown paper-bot:9101"]
    assert subjects == sorted([*kept, *(["earlier"] if existing == "a Maildir" else [])]), out
    assert proc.returncode == 0 and "Traceback" not in out and "stopped after 2 message(s)" in out, out


def test_a_maildir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "mail").write_text("not a directory")
    argv = [
        sys.executable,
        "-m",
        "trading_ops",
        "mailbox",
        "--port",
        str(free_port()),
        "--maildir",
        str(tmp_path / "mail"),
    ]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert (
        ran.returncode == 2
        and ran.stderr.strip() == f"trading-ops: mailbox: --maildir: {tmp_path / 'mail'} is not a directory"
    )


def test_a_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "trading_ops", "mailbox", "--port", "70000", "--maildir", str(tmp_path)]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 2 and ran.stderr.strip() == "trading-ops: --port: expected 1-65535, got 70000"


def test_the_local_alertmanager_file_is_rendered_from_the_shipped_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render again after a change to alertmanager.yml: `trading-ops config local-alertmanager
    alertmanager/alertmanager.yml -o alertmanager/alertmanager-local.yml` (from the repository's root)."""
    monkeypatch.chdir(REPO_ROOT)  # the header names the shipped file as the command was given it
    assert LOCAL.read_text() == compose_local_alertmanager(Path("alertmanager/alertmanager.yml"))
    shipped, local = yaml.safe_load(SHIPPED.read_text()), yaml.safe_load(LOCAL.read_text())
    assert local["route"] == shipped["route"] and local["inhibit_rules"] == shipped["inhibit_rules"]
    people = {r["name"]: r for r in local["receivers"] if r["name"] in ("pager", "chat", "deadman")}
    assert sorted(people) == ["chat", "deadman", "pager"]
    assert {r["email_configs"][0]["to"] for r in people.values()} == {"oncall@localhost"}
    assert [r for r in local["receivers"] if r["name"] == "reconciler"] == [
        r for r in shipped["receivers"] if r["name"] == "reconciler"
    ]
    checked = run_binary("amtool", "check-config", str(LOCAL))
    assert checked.returncode == 0, checked.stdout + checked.stderr
