"""`trading-ops reconciler [history|pause|resume|circuits]` and `trading-ops playbook test|explain`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trading_ops.cli import CONFIG_ENV, UsageError, add_schema_command, print_json_schema
from trading_ops.clients.reconciler import add_token_options
from trading_ops.config import Config, ConfigError
from trading_ops.db.states import APPROVAL_STATUSES, CLOSED_STATES, OPEN_STATES
from trading_ops.reconciler.packaged_playbooks import PACKAGED_PLAYBOOKS

if TYPE_CHECKING:
    from trading_ops.matchers import Pattern
    from trading_ops.reconciler.ledger import Ledger
    from trading_ops.reconciler.playbook import Playbook, Rule, StepSpec

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EPISODE_STATES = (*OPEN_STATES, *CLOSED_STATES)
PLAYBOOK_HELP = f"playbook file or packaged name ({', '.join(PACKAGED_PLAYBOOKS)}); default: the configured one"


# The largest id or count the ledger's databases hold (a signed 64-bit INTEGER in SQLite, a bigint in PostgreSQL):
# a larger one is no episode and no limit, and the drivers refuse to bind it.
MAX_INTEGER = 2**63 - 1


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    if value > MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_INTEGER}, got {text[:40]}")
    return value


def register(sub: Any) -> None:
    rec = sub.add_parser(
        "reconciler",
        help="run the reconciler (the default, without ACTION) or inspect and steer it",
        description="Without ACTION: serve the webhook intake and run the playbooks (reconciler.listen). "
        "The ACTIONs read and write the ledger in database.url directly, so they work while it runs or not.",
    )
    rec.set_defaults(handler=serve)
    inner = rec.add_subparsers(dest="reconciler_command", metavar="ACTION")
    hist = inner.add_parser(
        "history",
        help="episodes with their attempts and steps, newest first; or one episode whole (ID)",
        description="Without ID: a table of the newest episodes. With ID: that episode whole (labels, every "
        "attempt, step and output, why it waited, why it escalated, who acknowledged or retried it).",
    )
    hist.add_argument("id", nargs="?", type=positive_int, metavar="ID", help="one episode, whole (its ID column)")
    hist.add_argument("--json", action="store_true", help="print JSON (exactly as GET /api/v1/episodes[/ID])")
    hist.add_argument("--brief", action="store_true", help="one line per episode, without attempts and steps")
    hist.add_argument(
        "--payload",
        action="store_true",
        help="with ID: print the webhook notification that carried its alert, as received (save it to a file "
        "for `playbook explain`)",
    )
    hist.add_argument(
        "--limit", type=positive_int, default=50, help="how many episodes at most, newest first (default: 50)"
    )
    hist.add_argument(
        "--state",
        default=None,
        choices=EPISODE_STATES,
        metavar="STATE",
        help=f"only episodes in this state: open {', '.join(OPEN_STATES)}; closed {', '.join(CLOSED_STATES)}",
    )
    hist.set_defaults(handler=history)
    for verb, handler, text in (
        ("pause", pause, "stop acting (every replica); episodes are parked, recorded, and run on resume"),
        ("resume", resume, "act again after a pause (parked episodes are looked at at once)"),
    ):
        switch = inner.add_parser(
            verb,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. Asked through the reconciler's API (POST /api/v1/{verb}) with "
            "your own token of scope operate (--token-file, $TRADING_OPS_TOKEN_FILE or $TRADING_OPS_TOKEN): the audit "
            "entry names that token. Exit 0 done, 1 refused or no reconciler answered, 2 bad usage.",
        )
        add_token_options(switch)
        switch.set_defaults(handler=handler)
    retry = inner.add_parser(
        "retry",
        help="run an escalated or failed episode once more, if its alert still fires",
        description="Re-queue an escalated or failed episode whose alert has not resolved: the reconciler first "
        "asks Alertmanager whether the alert still fires (if not, the episode closes resolved, nothing executed), "
        "then runs the rule's steps once more, verifies, and escalates again if that fails. Gates still apply "
        "(pause, maintenance silences, open circuits, budgets). Asked through the reconciler's API (POST "
        "/api/v1/episodes/ID/retry) with your own token of scope operate (--token-file, $TRADING_OPS_TOKEN_FILE or "
        "$TRADING_OPS_TOKEN); recorded in the episode's history under that token's name.",
    )
    retry.add_argument("id", type=positive_int, metavar="ID", help="the episode (see `reconciler history`)")
    retry.add_argument(
        "--by", default=None, help="a comment beside your token's name in its history (the token decides, not this)"
    )
    add_token_options(retry)
    retry.set_defaults(handler=retry_episode)
    ack = inner.add_parser(
        "ack",
        help="record that a person has taken an episode (who, when, a note)",
        description="Acknowledge an episode: recorded in its history (who, when, the note) and shown by "
        "`reconciler history`. It changes nothing the reconciler does; to stop it acting, use `reconciler pause` "
        "or an Alertmanager silence. Asked through the reconciler's API (POST /api/v1/episodes/ID/ack) with your own "
        "token of scope operate (--token-file, $TRADING_OPS_TOKEN_FILE or $TRADING_OPS_TOKEN): who took it is that "
        "token's name.",
    )
    ack.add_argument("id", type=positive_int, metavar="ID", help="the episode (see `reconciler history`)")
    ack.add_argument(
        "--by", default=None, help="a comment beside your token's name in its history (the token takes it, not this)"
    )
    ack.add_argument("--note", default="", help="what you are doing about it")
    add_token_options(ack)
    ack.set_defaults(handler=ack_episode)

    _register_circuits(inner)
    _register_approvals(inner)

    pb = sub.add_parser("playbook", help="check and explain playbooks without side effects")
    pinner = pb.add_subparsers(dest="playbook_command", metavar="ACTION", required=True)
    test = pinner.add_parser("test", help="check alerts against expected rules and actions (as amtool routes test)")
    test.add_argument("cases", help="YAML file of cases")
    test.add_argument("--playbook", default=None, help=PLAYBOOK_HELP)
    test.set_defaults(handler=playbook_test)
    explain = pinner.add_parser(
        "explain",
        help="print the plan for a recorded webhook payload",
        description="Print what the reconciler would do with a webhook payload, without doing it. Get a received "
        "one with `trading-ops reconciler history ID --payload > payload.json`.",
    )
    explain.add_argument("payload", help="JSON file of an Alertmanager webhook payload")
    explain.add_argument("--playbook", default=None, help=PLAYBOOK_HELP)
    explain.set_defaults(handler=playbook_explain)
    route = pinner.add_parser(
        "route", help="print the rule and steps an alert with these labels would get (no payload needed)"
    )
    route.add_argument("--alertname", required=True, help="the alert's name, e.g. TradingBotBrokerDisconnected")
    route.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another label of the alert (repeatable), e.g. --label instance=127.0.0.1:9101",
    )
    route.add_argument("--playbook", default=None, help=PLAYBOOK_HELP)
    route.set_defaults(handler=playbook_route)
    add_schema_command(
        pinner,
        print_playbook_schema,
        help="print the JSON Schema of a playbook file (for an editor: docs/reconciler.md)",
        description="Print the JSON Schema (draft 2020-12) of a playbook file as it is written: its top-level keys, "
        "`defaults`, the rules, their steps (one kind of step per action, with its parameters). Editors check a "
        "playbook against it as it is typed, e.g. the YAML language server with a "
        "`# yaml-language-server: $schema=playbook.schema.json` line. It reads no configuration or playbook file.",
    )


def print_playbook_schema(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.reconciler.playbook_schema import playbook_schema

    try:
        print_json_schema(playbook_schema(), "a playbook", args.output)
    except ConfigError as exc:  # an option of this command, not the configuration: no "config:" before it
        raise UsageError(str(exc)) from None
    return 0


def serve(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.secret_files import refuse_loose_secrets

    refuse_loose_secrets(config)  # as ssh and PostgreSQL refuse a key others can read: at start, not mid-incident
    import logging

    from aiohttp import web

    from trading_ops.bot.sdnotify import SystemdNotifier
    from trading_ops.reconciler.app import create_app, freeze_startup_heap
    from trading_ops.webconfig import WEB_CONFIG_KEY, app_ssl_context, describe

    app = create_app(config)
    app.on_startup.append(freeze_startup_heap)
    environment_for_steps(args.config)
    listen = config.reconciler.listen
    tls = app_ssl_context(app)
    systemd = SystemdNotifier()

    def listening(*_banner: object) -> None:
        """run_app calls this once every startup hook ran (the ledger answered: database_ctx) and the socket listens:
        only then is the reconciler ready, to the log and to systemd (Type=notify: a database that does not answer
        leaves the unit activating, then failed, never active)."""
        logging.getLogger(__name__).info(
            "reconciler listening on %s://%s:%d (%s)",
            "https" if tls is not None else "http",
            listen.host,
            listen.port,
            describe(app.get(WEB_CONFIG_KEY)),
        )
        systemd.ready(f"listening on {listen.host}:{listen.port}")

    async def stopping(_app: web.Application) -> None:
        systemd.stopping("shutting down")

    app.on_shutdown.append(stopping)
    try:
        web.run_app(app, host=listen.host, port=listen.port, ssl_context=tls, print=listening, access_log=None)
    finally:
        systemd.close_socket()
    return EXIT_OK


def environment_for_steps(config_path: str | None) -> None:
    """Exec steps running `trading-ops ...` (the disk rule's cleanup) read this configuration and run this
    installation's trading-ops, even when its bin directory (a virtualenv's) is not on PATH."""
    if config_path:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    bindir = os.path.dirname(sys.executable)
    if shutil.which("trading-ops") is None and os.access(os.path.join(bindir, "trading-ops"), os.X_OK):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", os.defpath)


def _ledger(config: Config) -> Ledger:
    from trading_ops.db.base import make_engine
    from trading_ops.reconciler.ledger import Ledger

    return Ledger(make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous))


def history(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.reconciler.history import episode_view, history_json, history_table
    from trading_ops.reconciler.ledger import episode_json

    if args.id is None:
        if args.payload:
            raise UsageError("--payload needs an episode ID")
        ledger = _ledger(config)
        try:
            episodes = ledger.list_episodes(args.limit, args.state)
        finally:
            ledger.engine.dispose()
        print(history_json(episodes) if args.json else history_table(episodes, steps=not args.brief))
        return EXIT_OK
    from trading_ops.reconciler.approvals import ApprovalStore

    ledger = _ledger(config)
    try:
        episode = ledger.get_episode_full(args.id)
        payload = None
        if episode is not None and args.payload:
            payload = ledger.notification_for(episode["fingerprint"], episode["starts_at"])
        if episode is not None and not args.json:
            episode["approval_list"] = ApprovalStore(ledger).of_episode(args.id)  # as the console's episode page
    finally:
        ledger.engine.dispose()
    if episode is None:
        print(
            f"trading-ops: reconciler history: no episode {args.id} (pruned after retention_days, or never)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.payload:
        if payload is None:
            print(
                f"trading-ops: reconciler history: the notification of episode {args.id} is no longer stored "
                "(notifications are pruned after retention_days)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(json.dumps(json.loads(payload), indent=2))
        return EXIT_OK
    print(json.dumps(episode_json(episode), indent=2) if args.json else episode_view(episode))
    return EXIT_OK


def retry_episode(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.clients.reconciler import ask
    from trading_ops.reconciler.api_spec import RETRY_COMMENT_MAX

    comment = " ".join(str(args.by or "").split())
    if len(comment) > RETRY_COMMENT_MAX or not comment.isprintable():
        raise UsageError(f"reconciler retry: --by: printable text of {RETRY_COMMENT_MAX} characters at most")
    answer = ask(config, args, "reconciler retry", "POST", f"/api/v1/episodes/{args.id}/retry", {"comment": comment})
    if answer is None:
        return EXIT_FAILURE
    note = " (the reconciler is paused: it runs after `reconciler resume`)" if answer.get("paused") else ""
    print(f"episode {args.id} re-queued: one more run if its alert still fires{note}")
    return EXIT_OK


def ack_episode(args: argparse.Namespace, config: Config) -> int:
    """Acknowledge through the reconciler's API with the person's own token: who took the episode is that token's
    name (and address) in its history; --by is a comment beside it."""
    from trading_ops.clients.reconciler import ask
    from trading_ops.reconciler.api_spec import ACK_NOTE_MAX, RETRY_COMMENT_MAX

    comment, note = " ".join(str(args.by or "").split()), " ".join(str(args.note or "").split())
    if len(comment) > RETRY_COMMENT_MAX or not comment.isprintable():
        raise UsageError(f"reconciler ack: --by: printable text of {RETRY_COMMENT_MAX} characters at most")
    if len(note) > ACK_NOTE_MAX or not note.isprintable():
        raise UsageError(f"reconciler ack: --note: printable text of {ACK_NOTE_MAX} characters at most")
    body = {"comment": comment, "note": note}
    answer = ask(config, args, "reconciler ack", "POST", f"/api/v1/episodes/{args.id}/ack", body)
    if answer is None:
        return EXIT_FAILURE
    print(f"episode {args.id} acknowledged by {answer['recorded_as']}")
    return EXIT_OK


def pause(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.clients.reconciler import ask

    if ask(config, args, "reconciler pause", "POST", "/api/v1/pause") is None:
        return EXIT_FAILURE
    print("reconciler paused: nothing will be executed until `trading-ops reconciler resume`")
    return EXIT_OK


def resume(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.clients.reconciler import ask

    answer = ask(config, args, "reconciler resume", "POST", "/api/v1/resume")
    if answer is None:
        return EXIT_FAILURE
    print(f"reconciler resumed ({answer.get('episodes_woken', 0)} parked episode(s) looked at again now)")
    return EXIT_OK


def _playbook(args: argparse.Namespace, config: Config) -> Playbook:
    from trading_ops.reconciler.playbook import PlaybookError, load_configured_playbook

    try:
        if args.playbook:
            return load_configured_playbook(args.playbook)
        return load_configured_playbook(config.reconciler.playbook, config.path)
    except PlaybookError as exc:
        raise UsageError(f"playbook: {exc}") from exc


def step_refusal(rule: Rule, step: StepSpec, labels: dict[str, str], pattern: Pattern) -> str | None:
    """Why the engine would refuse this step for these labels (destructive, or a label value that fails the
    strict pattern, checked by the same function the actions use), or None."""
    from trading_ops.reconciler.actions import ACTIONS
    from trading_ops.reconciler.actions.base import Refused, checked_label

    if step.risk == "destructive" and not rule.allow_destructive:
        return "destructive not allowed"
    for name in ACTIONS[step.action].checked_labels(step.params):
        try:
            checked_label(labels, name, pattern)
        except Refused as exc:
            return str(exc)
    return None


def plan(rule: Rule | None, labels: dict[str, str], pattern: Pattern, on_recovery: bool = False) -> list[str]:
    """The steps a rule would run for these labels (its on_recovery steps with `on_recovery`), each with whether it
    would be refused."""
    if rule is None:
        return []
    out = []
    for step in rule.on_recovery if on_recovery else rule.steps:
        refusal = step_refusal(rule, step, labels, pattern)
        if refusal:
            out.append(f"{step.name} (refused: {refusal})")
        elif rule.needs_approval(step, labels):
            out.append(f"{step.name} (after approval; unanswered in {step.approval_timeout:g}s: {step.on_timeout})")
        else:
            out.append(step.name)
    return out


def playbook_test(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.matchers import compile_pattern

    path = Path(args.cases)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read cases: {exc.strerror}") from exc
    except yaml.YAMLError as exc:  # PyYAML's own message spans lines (the snippet, a caret): one line here
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UsageError(f"{path}: cannot read cases: {problem}{where}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise UsageError(f"{path}: expected a mapping with a `cases` list")
    named = data.get("playbook")
    if named and not args.playbook:
        args.playbook = named if named in PACKAGED_PLAYBOOKS else str(path.parent / str(named))
    playbook = _playbook(args, config)
    pattern = compile_pattern(config.reconciler.label_value_pattern)
    failures = 0
    for i, case in enumerate(data["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("labels"), dict) or "expect" not in case:
            raise UsageError(f"{path}: cases[{i}]: expected name, labels (a mapping) and expect")
        name = case.get("name") or f"case {i}"
        labels = {str(k): str(v) for k, v in case["labels"].items()}
        expect = case["expect"] or {}
        rule = playbook.match(labels)
        got_rule = rule.name if rule else None
        problems = []
        if "rule" in expect and expect["rule"] != got_rule:
            problems.append(f"rule: expected {expect['rule']!r}, got {got_rule!r}")
        steps = plan(rule, labels, pattern)
        if "actions" in expect and list(expect["actions"] or []) != steps:
            problems.append(f"actions: expected {expect['actions']!r}, got {steps!r}")
        undo = plan(rule, labels, pattern, on_recovery=True)
        if "on_recovery" in expect and list(expect["on_recovery"] or []) != undo:
            problems.append(f"on_recovery: expected {expect['on_recovery']!r}, got {undo!r}")
        if "target" in expect and rule and expect["target"] != rule.target(labels):
            problems.append(f"target: expected {expect['target']!r}, got {rule.target(labels)!r}")
        if problems:
            failures += 1
            print(f"FAIL  {name}: " + "; ".join(problems))
        else:
            print(f"ok    {name}")
    total = len(data["cases"])
    print(f"{total - failures}/{total} cases passed ({playbook.source})")
    return EXIT_FAILURE if failures else EXIT_OK


def playbook_explain(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.matchers import compile_pattern
    from trading_ops.reconciler.intake import Rejected, parse_body, validate

    path = Path(args.payload)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from exc
    try:
        validated = validate(parse_body(raw))
    except Rejected as exc:
        raise UsageError(f"{path}: {exc}") from exc
    playbook = _playbook(args, config)
    watchdog = config.reconciler.watchdog.alertname
    pattern = compile_pattern(config.reconciler.label_value_pattern)
    out = [f"notification: {validated.status}, receiver {validated.receiver!r}, {len(validated.alerts)} alert(s)"]
    for a in validated.alerts:
        labels = a["labels"]
        head = f"- {labels['alertname']} [{a['status']}] fingerprint {a['fingerprint']} startsAt {a['starts_at']}"
        out.append(head)
        if labels["alertname"] == watchdog:
            out.append("    feeds the dead man's switch; no episode")
            continue
        if a["status"] == "resolved":
            out.append("    closes episode (fingerprint, startsAt); cancels pending retries and verification")
            continue
        rule = playbook.match(labels)
        if rule is None:
            out.append("    no rule matches: recorded as skipped")
            continue
        out.extend(_rule_plan(rule, labels, pattern, _verify_expr(rule, a, pattern)))
    out += [f"- invalid alert, no episode (the others are stored): {problem}" for problem in validated.invalid]
    print("\n".join(out))
    return EXIT_OK


def _rule_plan(rule: Rule, labels: dict[str, str], pattern: Pattern, verify: str) -> list[str]:
    """What a rule does for an alert with these labels, as `playbook explain` and `playbook route` print it."""
    out = [f"    rule {rule.name} on target {rule.target(labels)} (one run per episode)"]
    if rule.wait_for:
        out.append(f"    wait {rule.wait_for:g}s, act only if Alertmanager still has it firing, not inhibited")
    for j, step in enumerate(plan(rule, labels, pattern), 1):
        spec = rule.steps[j - 1]
        out.append(
            f"    {j}. {step} [{spec.risk}, timeout {spec.timeout:g}s, if its outcome is unknown: "
            f"{rule.unknown_policy(spec)}]"
        )
    if rule.verify.enabled:
        out.append(f"    verify until clear within {rule.verify.deadline:g}s: {verify}")
    else:
        out.append("    no verification: success = steps succeeded")
    for undo in rule.on_recovery:
        refusal = step_refusal(rule, undo, labels, pattern)
        extra = f" (refused: {refusal})" if refusal else ""
        out.append(f"    once recovered: {undo.name}{extra} [{undo.risk}, timeout {undo.timeout:g}s]")
    out.append(
        f"    attempts {rule.max_attempts}, backoff {rule.backoff.initial:g}s x{rule.backoff.multiplier:g} "
        f"(max {rule.backoff.max:g}s, jitter {rule.backoff.jitter:.0%}), cooldown {rule.cooldown:g}s, "
        f"on failure: {rule.on_failure}"
    )
    return out


def playbook_route(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.matchers import compile_pattern

    labels = {"alertname": args.alertname}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r} is not KEY=VALUE")
        if key == "alertname":
            raise UsageError("give the alert's name with --alertname, not --label alertname=...")
        labels[key] = value
    playbook = _playbook(args, config)
    pattern = compile_pattern(config.reconciler.label_value_pattern)
    shown = ", ".join(f"{k}={v}" for k, v in labels.items())
    out = [f"alert {{{shown}}} ({playbook.source})"]
    if args.alertname == config.reconciler.watchdog.alertname:
        out.append("    feeds the dead man's switch; no episode")
    else:
        rule = playbook.match(labels)
        if rule is None:
            out.append("    no rule matches: recorded as skipped")
        else:
            verify = (
                _verify_expr(rule, {"labels": labels}, pattern)
                if rule.verify.expr
                else f"the expression of Prometheus's alerting rule {args.alertname} (read at verification)"
            )
            out.extend(_rule_plan(rule, labels, pattern, verify))
    print("\n".join(out))
    return EXIT_OK


def _verify_expr(rule: Rule, alert: dict[str, Any], pattern: Pattern) -> str:
    """The verification query as the engine would render it: label values only after validation."""
    from trading_ops.reconciler.actions.base import TEMPLATE_RE, Refused, checked_label

    expr = rule.verify.expr
    if not expr:
        return f"the expression of Prometheus's alerting rule {alert['labels']['alertname']} (read at verification)"
    try:
        return TEMPLATE_RE.sub(lambda m: checked_label(alert["labels"], m.group(1), pattern), expr)
    except Refused as exc:
        return f"refused ({exc}): {expr}"


# ---- circuits: list the open circuit breakers, reset one (recorded in the ledger's audit) ---------------------------


def _register_circuits(inner: Any) -> None:
    circuits = inner.add_parser("circuits", help="open circuit breakers; `circuits reset TARGET` closes one")
    circuits.add_argument("--json", action="store_true", help="print JSON")
    circuits.set_defaults(handler=circuits_list)
    cinner = circuits.add_subparsers(dest="circuits_command", metavar="ACTION")
    reset = cinner.add_parser(
        "reset",
        help="close a target's circuit and restart its action budget (audited)",
        description="Close a target's open circuit through the reconciler's API (POST /api/v1/circuits/TARGET/reset) "
        "with your own token of scope operate (--token-file, $TRADING_OPS_TOKEN_FILE or $TRADING_OPS_TOKEN): the "
        "audit entry names that token. Exit 0 closed, 1 not open, refused or no reconciler answered, 2 bad usage.",
    )
    reset.add_argument("target", help="the target (an alert's instance), or * for the global budget")
    add_token_options(reset)
    reset.set_defaults(handler=circuits_reset)


def circuits_list(args: argparse.Namespace, config: Config) -> int:
    import json

    from trading_ops.db.base import utcnow

    ledger = _ledger(config)
    try:
        circuits = ledger.open_circuits(utcnow())
    finally:
        ledger.engine.dispose()
    if args.json:
        print(json.dumps([{**c, "open_until": c["open_until"].isoformat()} for c in circuits], indent=2))
        return EXIT_OK
    if not circuits:
        print("no open circuits")
        return EXIT_OK
    limit = config.reconciler.budgets
    for c in circuits:
        cap = limit.max_actions_per_hour if c["target"] == "*" else limit.max_actions_per_target_per_hour
        print(
            f"{c['target']}: open until {c['open_until']:%Y-%m-%d %H:%M:%S} UTC "
            f"({c['actions_last_hour']} of {cap} actions in the last hour)"
        )
    print("close one with: trading-ops reconciler circuits reset TARGET")
    return EXIT_OK


def circuits_reset(args: argparse.Namespace, config: Config) -> int:
    from datetime import datetime
    from urllib.parse import quote

    from trading_ops.clients.reconciler import ask

    target = args.target
    if not target or len(target) > 255 or not target.isprintable():
        raise UsageError(f"circuits reset: not a target name: {target[:40]!r}")
    answer = ask(config, args, "circuits reset", "POST", f"/api/v1/circuits/{quote(target, safe='')}/reset")
    if answer is None:
        return EXIT_FAILURE
    until = datetime.fromisoformat(answer["was_open_until"])
    print(f"circuit of {target} closed (was open until {until:%Y-%m-%d %H:%M:%S} UTC); its action budget restarts now")
    return EXIT_OK


# ---- approvals: list them, approve or reject one (trading_ops.reconciler.approvals) ---------------------------------


def _register_approvals(inner: Any) -> None:
    listing = inner.add_parser(
        "approvals",
        help="approvals of playbook steps, newest first (pending ones wait for `approve` or `reject`)",
    )
    listing.add_argument("--status", default=None, choices=APPROVAL_STATUSES, help="only approvals in this status")
    listing.add_argument("--limit", type=positive_int, default=50, help="how many at most (default: 50)")
    listing.add_argument("--json", action="store_true", help="print JSON (as GET /api/v1/approvals)")
    listing.set_defaults(handler=approvals_list)
    for decision, verb in (("approve", "approve"), ("reject", "reject")):
        cmd = inner.add_parser(
            verb,
            help=f"{verb} a step that waits for a person (recorded: who, when, why)",
            description=f"{verb.capitalize()} a pending approval (see `reconciler approvals`). Refused when it is "
            "no longer pending (decided, expired), its episode is closed, or the configured playbook changed since "
            "it was asked. Decided through the reconciler's API with your own token (--token-file, "
            "$TRADING_OPS_TOKEN_FILE or $TRADING_OPS_TOKEN): the decision is recorded under that token's name; "
            "the requester never decides its own request; a kind needing more people waits for them (four eyes).",
        )
        cmd.add_argument("id", type=positive_int, metavar="ID", help="the approval (its ID column)")
        cmd.add_argument("--reason", required=True, help="why (recorded with the decision)")
        cmd.add_argument(
            "--as", dest="by", default=None, help="a comment beside your token's name (the token decides, not this)"
        )
        add_token_options(cmd)
        cmd.set_defaults(handler=decide_approval, decision=decision)


def approvals_list(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.reconciler.approvals import (
        ApprovalStore,
        approval_json,
        approvers_of,
        attribution,
        requester_of,
        was_decided,
    )

    ledger = _ledger(config)
    try:
        rows = ApprovalStore(ledger).recent(args.status, args.limit)
    finally:
        ledger.engine.dispose()
    if args.json:
        print(json.dumps({"approvals": [approval_json(r) for r in rows]}, indent=2))
        return EXIT_OK
    if not rows:
        print("no approvals")
        return EXIT_OK
    for r in rows:
        who = attribution(r["decided_by"], r.get("decided_token"))
        decided = f" by {who}: {r['reason']}" if was_decided(r) else ""
        approvers = ", ".join(approvers_of(r)) or "none yet"
        decided += f"  asked by {requester_of(r)}, approvers {approvers} (of {r.get('required', 1)} other)"
        print(
            f"{r['id']}  {r['status']:<10} episode {r['episode_id']} ({r['alertname']}, {r['episode_state']})  "
            f"rule {r['rule']} step {r['position'] + 1}: {r['step_name']}  on {r['target']}  "
            f"deadline {r['deadline']:%Y-%m-%d %H:%M:%S} UTC{decided}"
        )
    return EXIT_OK


def decide_approval(args: argparse.Namespace, config: Config) -> int:
    """Approve or reject through the reconciler's API (POST /api/v1/approvals/{id}) with the person's own token:
    the principal is that token's name; --as is a comment beside it."""
    from trading_ops.clients.reconciler import Unreachable, call, person_token, reconciler_url

    what = f"reconciler {args.decision}"
    reason = " ".join(str(args.reason).split())
    if not reason:
        raise UsageError(f"{what}: --reason must say why")
    token = person_token(args, what)
    body = {"decision": args.decision, "reason": reason, "by": " ".join(str(args.by or "").split())}
    try:
        status, answer = call("POST", f"{reconciler_url(config, args.url)}/api/v1/approvals/{args.id}", token, body)
    except Unreachable as exc:
        print(f"trading-ops: {what}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"trading-ops: {what}: {answer.get('error') or f'HTTP {status}'}", file=sys.stderr)
        return EXIT_FAILURE
    approvers = ", ".join(answer.get("approvers") or []) or "-"
    if answer["status"] == "pending":
        print(
            f"approval {args.id}: your approval is recorded (approvers so far: {approvers}); it needs "
            f"{answer['required']} other than its requester {answer['requested_by']}, and waits for more"
        )
        return EXIT_OK
    self_note = " (approved by its requester, allowed by configuration)" if answer.get("self_approved") else ""
    print(
        f"approval {args.id} {answer['status']} by {answer['decided_token']}{self_note} (approvers: {approvers}): "
        f"episode {answer['episode_id']} carries on at once (rule {answer['rule']}, step {answer['step']}: "
        f"{answer['step_name']})"
    )
    return EXIT_OK
