"""Named tokens and their scopes: the ladder read < operate < destructive with approve beside it, one match per
request in constant time, and the bot's control API (the library's server) answering each scope as the contract says.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from trading_ops.bot.control import COMMAND_SCOPES, REQUIRED_COMMANDS
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.scopes import APPROVE, DESTRUCTIVE, OPERATE, READ, SCOPES, TokenSet, refusal

SECRETS = {"oncall-read": "r-secret", "rec-operate": "o-secret", "rec-destructive": "d-secret", "ops-approve": "a-s"}
SCOPE_OF = {"oncall-read": READ, "rec-operate": OPERATE, "rec-destructive": DESTRUCTIVE, "ops-approve": APPROVE}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}"}


def named_tokens(legacy: str | None = None) -> TokenSet:
    tokens = [(name, SCOPE_OF[name], secret) for name, secret in SECRETS.items()]
    return TokenSet(tokens, legacy=("control_token", DESTRUCTIVE, legacy) if legacy else None)


# -- the model ------------------------------------------------------------------------------------------------------


def test_the_ladder_and_approve_beside_it() -> None:
    tokens = named_tokens()
    allowed = {t.name: sorted(s for s in SCOPES if t.allows(s)) for t in tokens.tokens}
    assert allowed == {
        "oncall-read": ["read"],
        "rec-operate": ["operate", "read"],
        "rec-destructive": ["destructive", "operate", "read"],
        # An approver reads what they approve, and may do nothing else; whoever may flatten may not approve.
        "ops-approve": ["approve", "read"],
    }


def test_every_required_command_has_a_scope_and_the_destructive_ones_are_the_four() -> None:
    assert set(REQUIRED_COMMANDS) <= set(COMMAND_SCOPES)
    assert sorted(c for c, s in COMMAND_SCOPES.items() if s == DESTRUCTIVE) == [
        "cancel_all",
        "clear_halt",
        "flatten",
        "halt",
    ]
    # The reads: the bot's status, and its journaled control commands the reconciler's audit pulls.
    assert [c for c, s in COMMAND_SCOPES.items() if s == READ] == ["status", "control_events"]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Bearer r-secret", "oncall-read"),
        ("bearer  d-secret ", "rec-destructive"),
        ("Bearer legacy", "control_token"),
        ("Bearer r-secretx", None),
        ("Bearer r-secre", None),
        ("Basic r-secret", None),
        ("Bearer", None),
        ("", None),
        (None, None),
        ("Bearer caf\udce9", None),  # bytes that are not UTF-8, as aiohttp hands them over
    ],
)
def test_a_header_matches_exactly_one_token_or_none(header: str | None, name: str | None) -> None:
    token = named_tokens(legacy="legacy").match(header)
    assert (token.name if token else None) == name
    if token is not None:
        assert token.legacy is (name == "control_token")


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ([("a", "read", "x"), ("a", "operate", "y")], "token name 'a' is given twice"),
        ([("a", "read", "x"), ("b", "operate", "x")], "tokens 'a' and 'b' have the same value; give each its own"),
        ([("a", "admin", "x")], "token 'a': unknown scope 'admin' (known: read, operate, destructive, approve)"),
        ([("a", "read", "")], "token 'a' is empty"),
    ],
)
def test_a_set_that_cannot_tell_callers_apart_is_refused(tokens: list[tuple[str, str, str]], problem: str) -> None:
    with pytest.raises(ValueError) as exc:
        TokenSet(tokens)
    assert str(exc.value) == problem


def test_the_refusal_is_one_line_naming_the_scope_needed_and_the_tokens() -> None:
    token = named_tokens().match("Bearer r-secret")
    assert token is not None
    assert (
        refusal("flatten", DESTRUCTIVE, token)
        == "flatten needs the 'destructive' scope; token 'oncall-read' has 'read'"
    )


# -- the bot's control API ------------------------------------------------------------------------------------------


@pytest.fixture
def inst(registry: CollectorRegistry, tmp_path: Any) -> Instrumentation:
    instrumentation = Instrumentation(
        venue="paper", token=named_tokens(), registry=registry, data_dir=tmp_path, heartbeat_timeout=5
    )

    async def nothing(_args: dict[str, Any]) -> dict[str, Any]:
        return {"done": True}

    for command in ("cancel_all", "reconnect", "resubscribe", "reconcile"):
        instrumentation.control.register(command, nothing)
    instrumentation.control.register("wipe_cache", nothing)  # a bot's own command, registered without a scope
    instrumentation.control.register("debug_dump", nothing, scope=READ)
    return instrumentation


@pytest.fixture
async def client(aiohttp_client: Any, inst: Instrumentation) -> Any:
    return await aiohttp_client(inst.create_app())


async def post(client: Any, command: str, name: str, **body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post(f"/control/{command}", headers=auth(name), json=body)
    return response.status, await response.json()


def counted(registry: CollectorRegistry, command: str, source: str) -> float | None:
    return registry.get_sample_value("tradingbot_control_commands_total", {"command": command, "source": source})


# What each token may do on a bot; every other command of REQUIRED_COMMANDS is a 403 for it.
MAY = {
    "oncall-read": {"status"},
    "rec-operate": {"status", "pause", "resume", "reduce_only", "reconnect", "resubscribe", "reconcile"},
    "rec-destructive": set(REQUIRED_COMMANDS),
    "ops-approve": {"status"},  # approve is the reconciler's; on a bot it reads
}


@pytest.mark.parametrize("name", sorted(MAY))
async def test_each_scope_may_send_exactly_its_commands(client: Any, inst: Instrumentation, name: str) -> None:
    # Commands in an order each state allows (halt before clear_halt, flatten from active, ...).
    order = ["status", "reconnect", "resubscribe", "reconcile", "reduce_only", "pause", "resume", "cancel_all"]
    order += ["flatten", "halt", "clear_halt"]
    for command in order:
        status, body = await post(client, command, name)
        if command in MAY[name]:
            assert status == 200, (command, body)
        else:
            assert status == 403, (command, body)
            assert body["error"] == f"{command} needs the '{COMMAND_SCOPES[command]}' scope; token '{name}' has " + (
                f"'{SCOPE_OF[name]}'"
            )
    if name == "oncall-read":
        assert inst.state.state.value == "active"  # nothing it was refused happened


async def test_read_can_status_but_not_pause_operate_can_pause_but_not_flatten_destructive_can_flatten(
    client: Any, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    assert (await post(client, "status", "oncall-read"))[0] == 200
    status, body = await post(client, "pause", "oncall-read")
    assert (status, body) == (
        403,
        {"ok": False, "error": "pause needs the 'operate' scope; token 'oncall-read' has 'read'"},
    )
    assert inst.state.state.value == "active"
    assert (await post(client, "pause", "rec-operate"))[0] == 200
    status, body = await post(client, "flatten", "rec-operate")
    assert status == 403 and body["error"] == "flatten needs the 'destructive' scope; token 'rec-operate' has 'operate'"
    assert inst.state.state.value == "paused"
    status, body = await post(client, "flatten", "rec-destructive")
    assert status == 200 and body["state"] == "flattening", body
    # Refusals are counted as failures of their own reason, and as asked by the token that asked.
    forbidden = {"command": "pause", "reason": "forbidden"}
    assert registry.get_sample_value("tradingbot_control_command_failures_total", forbidden) == 1
    assert counted(registry, "pause", "oncall-read") == 1
    assert counted(registry, "pause", "rec-operate") == 1
    assert counted(registry, "flatten", "rec-operate") == 1
    assert counted(registry, "flatten", "rec-destructive") == 1


async def test_an_unknown_token_is_401_whatever_the_command(client: Any, registry: CollectorRegistry) -> None:
    for command in ("status", "pause", "flatten", "no_such_command"):
        response = await client.post(f"/control/{command}", headers={"Authorization": "Bearer r-secretx"})
        assert response.status == 401, command
    # The label stays bounded: an unknown token is `unauthenticated`, never what it sent or claimed.
    headers = {"Authorization": "Bearer guess", "X-Trading-Ops-Source": "rec-operate"}
    assert (await client.post("/control/pause", headers=headers)).status == 401
    assert counted(registry, "pause", "unauthenticated") == 2
    assert counted(registry, "pause", "rec-operate") == 0


async def test_a_bots_own_commands_need_destructive_unless_registered_with_a_scope(client: Any) -> None:
    status, body = await post(client, "wipe_cache", "rec-operate")
    assert (
        status == 403 and body["error"] == "wipe_cache needs the 'destructive' scope; token 'rec-operate' has 'operate'"
    )
    assert (await post(client, "wipe_cache", "rec-destructive"))[0] == 200
    assert (await post(client, "debug_dump", "oncall-read"))[0] == 200


async def test_the_source_label_is_the_tokens_name_and_names_a_caller_cannot_choose(
    client: Any, registry: CollectorRegistry
) -> None:
    # The state commands of every configured name are there at 0 from the start (increase() sees the first one)...
    for name in SECRETS:
        for command in ("pause", "resume", "reduce_only", "flatten", "halt", "clear_halt"):
            assert counted(registry, command, name) == 0, (command, name)
        assert counted(registry, "pause", "risk") == 0
    # ... and without the single token, the header's sources are no series at all: nobody can be counted under them.
    assert counted(registry, "pause", "reconciler") is None
    headers = {**auth("rec-operate"), "X-Trading-Ops-Source": "maintenance"}
    assert (await client.post("/control/pause", headers=headers)).status == 200
    assert counted(registry, "pause", "rec-operate") == 1
    assert counted(registry, "pause", "maintenance") is None


async def test_every_command_is_logged_with_the_tokens_name_and_the_peer(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trading_ops.bot.server")
    await post(client, "pause", "rec-operate")
    await post(client, "flatten", "oncall-read")
    lines = [r for r in caplog.records if r.name == "trading_ops.bot.server"]
    assert lines[0].getMessage().startswith("control pause by token 'rec-operate' from 127.0.0.1 ok in ")
    assert lines[1].getMessage() == (
        "control flatten by token 'oncall-read' from 127.0.0.1 refused: flatten needs the 'destructive' scope; "
        "token 'oncall-read' has 'read'"
    )
    # A JSON log has them as fields of their own.
    assert [(r.__dict__["token"], r.__dict__["peer"], r.__dict__["command"]) for r in lines] == [
        ("rec-operate", "127.0.0.1", "pause"),
        ("oncall-read", "127.0.0.1", "flatten"),
    ]


async def test_a_commands_log_line_has_its_short_fields_never_the_whole_answer(
    client: Any, inst: Instrumentation, caplog: pytest.LogCaptureFixture
) -> None:
    """A state command's line says the new state; `status` (which verification polls) has its state, not the whole
    status; lists are their lengths, long values cut."""
    caplog.set_level(logging.INFO, logger="trading_ops.bot.server")

    async def big(_args: dict[str, Any]) -> dict[str, Any]:
        return {"orders": [{"id": str(i)} for i in range(50)], "note": "x" * 500, "cancelled": 50}

    inst.control.register("cancel_all", big)
    assert (await post(client, "status", "oncall-read"))[0] == 200
    assert (await post(client, "pause", "rec-operate"))[0] == 200
    assert (await post(client, "cancel_all", "rec-destructive"))[0] == 200
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "trading_ops.bot.server"]
    assert [level for level, _ in lines] == [logging.INFO] * 3, lines
    status, pause, cancel = (message for _, message in lines)
    assert status.startswith("control status by token 'oncall-read' from 127.0.0.1 ok in "), status
    assert "{" not in status and "state=active " in status and len(status) < 320, status
    assert re.search(r"ok in [\d.]+ ms: .*state=paused", pause), pause
    assert "{" not in pause
    assert cancel.endswith(f" ms: orders=[50] note={'x' * 60}… cancelled=50"), cancel


async def test_the_single_token_keeps_every_right_and_its_callers_header(aiohttp_client: Any, tmp_path: Any) -> None:
    """A configuration from before named tokens: the single token may do everything, and the reconciler's and the
    maintenance windows' X-Trading-Ops-Source still say who it was, beside the named tokens."""
    registry = CollectorRegistry()
    inst = Instrumentation(venue="paper", token=named_tokens(legacy="old"), registry=registry, data_dir=tmp_path)
    client = await aiohttp_client(inst.create_app())
    old = {"Authorization": "Bearer old"}
    for command in ("pause", "flatten", "halt", "clear_halt"):
        response = await client.post(f"/control/{command}", headers={**old, "X-Trading-Ops-Source": "reconciler"})
        assert response.status == 200, command
    assert counted(registry, "halt", "reconciler") == 1
    assert counted(registry, "pause", "operator") == 0 and counted(registry, "pause", "rec-operate") == 0
    status = await (await client.post("/control/status", headers=old)).json()
    assert status["state"] == "paused" and status["state_by"] == "token 'control_token' (reconciler) from 127.0.0.1"


async def test_a_bot_on_the_runtime_journals_who_changed_its_state_and_from_where(tmp_path: Any) -> None:
    """The paper bot (the runtime, its journal on SQLite): a pause by a named token is a journaled transition naming
    the token and the peer; a refused flatten changes and journals nothing."""
    from paper_helpers import control, fast_config, wait_for

    from trading_ops.paper.bot import PaperBot

    bot = PaperBot(fast_config(tmp_path), token=named_tokens(), registry=CollectorRegistry())
    port = await bot.start("127.0.0.1", 0)
    try:
        status, body = await control(port, "pause", {"reason": "a test"}, auth("rec-operate"))
        assert status == 200, body
        journaled = await wait_for(bot.recovery_store.last_transition)
        assert journaled == {
            "before": "active",
            "after": "paused",
            "reason": "a test",
            "by": "token 'rec-operate' from 127.0.0.1",
        }
        status, body = await control(port, "flatten", {}, auth("oncall-read"))
        assert (
            status == 403 and body["error"] == "flatten needs the 'destructive' scope; token 'oncall-read' has 'read'"
        )
        assert bot.recovery_store.last_transition() == journaled
        # The bot's own changes name nobody.
        bot.inst.state.apply("halt", reason="kill switch")
        assert await wait_for(lambda: (bot.recovery_store.last_transition() or {}).get("after") == "halted")
        assert "by" not in (bot.recovery_store.last_transition() or {})
    finally:
        await bot.stop()
