"""`trading-ops playbook schema`: the JSON Schema an editor checks a playbook with agrees with the loader, on every
playbook the package, the docs, the tests, the benchmarks and the examples hold, and on those playbooks changed."""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from schema_helpers import first_error_at, printed_validator, schema_errors

from trading_ops.cli import main
from trading_ops.matchers import RegexError
from trading_ops.reconciler.playbook import PlaybookError, parse_matcher, parse_playbook
from trading_ops.reconciler.playbook_schema import MATCHER_PATTERN

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = resources.files("trading_ops.reconciler").joinpath("playbooks")
SCHEMA_FILE = "playbook.schema.json"
MODELINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)
RULE_KEYS = {"name", "match", "steps"}
TOP_KEYS = {"version", "defaults", "rules"}  # not a group of Prometheus rules (name, rules)
# What the loader refuses and a JSON Schema cannot say (docs/reconciler.md lists them for the reader): a playbook
# the schema accepts loads, or the loader's one line is one of these.
LOADER_ONLY = {
    "duplicate rule name": r": duplicate rule name ",
    "a regular expression RE2 refuses": r"\(RE2 syntax\)",
    "a bot step's risk below its command's": r"\.risk: bot .* is \w+, not \w+$",
    "a duration of more than 100 years written as text": r"is longer than the 100 years a playbook duration may be$",
    "instance with instances, only_state without instances": r"\.instance: give either|only with instances$",
    "an http step's URL": r"\.url: ",
    "a defers_to naming no other rule": r"\.defers_to\.rules: .* is not another rule of this playbook$",
    # The escalation alerts the packaged routes send to people alone (trading_ops/reconciler/actions/escalate.py).
    "an escalate step's alertname that is no escalation alert": r"\.alertname: .* is not an escalation alert ",
    # JSON Schema counts 3.0 as an integer; msgspec and an action's `int` parameters do not.
    "a float of integral value where an integer goes": r"expected an integer, got -?\d+\.0$",
}


def schema_text(capsys: Any) -> str:
    assert main(["playbook", "schema"]) == 0
    return capsys.readouterr().out


@pytest.fixture
def validator() -> jsonschema.Draft202012Validator:
    return printed_validator("playbook")


def as_playbook(data: Any) -> dict[str, Any] | None:
    """`data` as a playbook if it looks like one: a mapping of `rules` (and `version`, `defaults`), a rule (name,
    match, steps) or a list of rules (a YAML block of the docs that shows a rule alone), else None."""
    if isinstance(data, dict) and isinstance(data.get("rules"), list) and set(data) <= TOP_KEYS:
        return data
    if isinstance(data, dict) and RULE_KEYS <= set(data):
        return {"rules": [data]}
    if isinstance(data, list) and data and all(isinstance(r, dict) and RULE_KEYS <= set(r) for r in data):
        return {"rules": data}
    return None


def from_yaml(text: str) -> dict[str, Any] | None:
    try:
        return as_playbook(yaml.safe_load(text))
    except (yaml.YAMLError, ValueError):  # not YAML, or a YAML date that is no date
        return None


def literal(node: ast.AST, names: dict[str, Any]) -> Any:
    """The value of an expression of literals, of the module's constants (`RULE`) and of `**` into a dict
    (`{**RULE, "name": "b"}`); ValueError for anything else (a call, a parameter)."""
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                out.update(literal(value, names))
            else:
                out[literal(key, names)] = literal(value, names)
        return out
    if isinstance(node, ast.List | ast.Tuple):
        return [literal(item, names) for item in node.elts]
    if isinstance(node, ast.Name) and node.id in names:
        return copy.deepcopy(names[node.id])
    return ast.literal_eval(node)


def in_module(module: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The playbooks a test or benchmark writes in its source: YAML strings, and dicts of literals and of the
    module's constants."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    names: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue
        if isinstance(target, ast.Name):
            with contextlib.suppress(ValueError, TypeError):
                names[target.id] = literal(value, names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "rules" in node.value:
            found = from_yaml(node.value)
        elif isinstance(node, ast.Dict):
            try:
                found = as_playbook(literal(node, names))
            except (ValueError, TypeError):  # a name or a call in it: not written out in the source
                continue
        else:
            continue
        if found is not None:
            yield node.lineno, found


def packaged_playbooks() -> list[tuple[str, str]]:
    """(name, text) of every playbook file of the package (not the `playbook test` cases beside them)."""
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in PACKAGED.iterdir()
        if entry.name.endswith(".yml") and not entry.name.endswith("-cases.yml")
    )


PACKAGED_DATA = [(name, yaml.safe_load(text)) for name, text in packaged_playbooks()]


def playbooks_in_use() -> list[tuple[str, dict[str, Any]]]:
    """Every playbook a reader or a test meets: the packaged ones, the YAML blocks of the docs, and the playbooks of
    the tests, benchmarks and examples (their YAML files and strings, their dicts of literals), as written: those
    the loader refuses (a test of its errors) included."""
    found = list(PACKAGED_DATA)
    for page in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        for i, block in enumerate(YAML_BLOCK.findall(page.read_text(encoding="utf-8"))):
            if (data := from_yaml(block)) is not None:
                found.append((f"{page.name}#{i}", data))
    for folder in ("tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".yml", ".yaml") and (data := from_yaml(path.read_text(encoding="utf-8"))):
                found.append((str(path.relative_to(ROOT)), data))
            elif path.suffix == ".py":
                found += [(f"{path.name}:{line}", data) for line, data in in_module(path)]
    return found


def loads(data: Any) -> str | None:
    """None when the loader loads `data`, else its one-line error."""
    try:
        parse_playbook(data)
    except PlaybookError as exc:
        return str(exc)
    except TypeError as exc:  # the loader's: a step whose `action` is a list or a mapping (unhashable) fails so
        return f"TypeError: {exc}"
    return None


PLAYBOOKS = playbooks_in_use()
LOADED = [(name, data) for name, data in PLAYBOOKS if loads(data) is None]


def loader_only(problem: str) -> bool:
    return any(re.search(pattern, problem) for pattern in LOADER_ONLY.values())


def test_the_playbooks_found_include_the_package_the_docs_and_the_tests() -> None:
    names = [name for name, _ in LOADED]
    assert {"default.yml", "docker.yml"} <= set(names)
    assert sum(name.startswith("reconciler.md#") for name in names) >= 3, names
    assert sum(name.startswith("test_reconciler_playbook.py:") for name in names) >= 5, names
    assert any(name.startswith("bench_") for name in names), names
    refused = [name for name, data in PLAYBOOKS if loads(data) is not None]
    assert len(refused) >= 3, "the tests' playbooks the loader refuses are half of the agreement"


@pytest.mark.parametrize(("name", "data"), LOADED, ids=[name for name, _ in LOADED])
def test_every_playbook_in_use_validates_against_the_schema(
    validator: jsonschema.Draft202012Validator, name: str, data: dict[str, Any]
) -> None:
    assert not schema_errors(validator, data), name


def test_every_playbook_in_use_the_schema_accepts_the_loader_loads(validator: jsonschema.Draft202012Validator) -> None:
    disagreements, refused_by_both = [], 0
    for name, data in PLAYBOOKS:
        problem, accepted = loads(data), validator.is_valid(data)
        if problem is not None and accepted and not loader_only(problem):
            disagreements.append(f"{name}: the schema accepts it, the loader says {problem}")
        refused_by_both += problem is not None and not accepted
    assert not disagreements, disagreements
    assert refused_by_both >= 3


@pytest.mark.parametrize(("name", "text"), packaged_playbooks())
def test_a_packaged_playbook_names_the_schema_shipped_beside_it(name: str, text: str, capsys: Any) -> None:
    assert text.splitlines()[0] == MODELINE
    shipped = PACKAGED.joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    assert shipped == schema_text(capsys), (
        f"run: trading-ops playbook schema --output trading_ops/reconciler/playbooks/{SCHEMA_FILE}"
    )


def test_the_docs_name_the_schema_where_they_show_a_whole_playbook() -> None:
    blocks = [b for page in sorted((ROOT / "docs").glob("*.md")) for b in YAML_BLOCK.findall(page.read_text())]
    whole = [b for b in blocks if isinstance(data := yaml.safe_load(b), dict) and "rules" in data]
    assert len(whole) >= 2 and all(b.startswith(MODELINE + "\n") for b in whole), whole


RULE = {"name": "r", "match": ['alertname="A"'], "steps": [{"action": "bot", "command": "reconnect"}]}


def with_rule(**changes: Any) -> dict[str, Any]:
    return {"version": 1, "rules": [{**RULE, **changes}]}


def with_step(**step: Any) -> dict[str, Any]:
    return with_rule(steps=[step])


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"version": 1, "rule": [RULE]}, ""),  # a top-level key misspelt
        ({"version": 1, "rules": []}, "rules"),
        ({"rules": [RULE], "defaults": {"timeout": "soon"}}, "defaults.timeout"),
        ({"rules": [RULE], "defaults": {"max_attempts": 0}}, "defaults.max_attempts"),
        ({"rules": [RULE], "defaults": {"backoff": {"jitter": 2}}}, "defaults.backoff.jitter"),
        (with_rule(name="no spaces"), "rules[0].name"),
        (with_rule(match=[]), "rules[0].match"),
        (with_rule(match=["alertname~A"]), "rules[0].match[0]"),
        (with_rule(steps=[]), "rules[0].steps"),
        (with_rule(cooldown="-5m"), "rules[0].cooldown"),
        (with_rule(defers_to={"rules": ["r"], "within": -1.0}), "rules[0].defers_to.within"),
        (with_rule(verify={"deadline": "1m", "expr": " "}), "rules[0].verify.expr"),
        (with_rule(verify={"dedline": "1m"}), "rules[0].verify"),
        (with_rule(on_failure="page"), "rules[0].on_failure"),
        (with_rule(summary="two\nlines"), "rules[0].summary"),
        (with_rule(approval_timeout="0s"), "rules[0].approval_timeout"),
        (with_rule(on_recovery=[{"action": "notify", "approval": "required"}]), "rules[0].on_recovery[0].approval"),
        (with_step(action="bott", command="reconnect"), "rules[0].steps[0].action"),
        (with_step(command="reconnect"), "rules[0].steps[0]"),  # no action
        (with_step(action="bot", command="reconect"), "rules[0].steps[0].command"),
        (with_step(action="bot", command="pause", timeot="5s"), "rules[0].steps[0]"),
        (with_step(action="exec", argv="trading-ops upkeep cleanup"), "rules[0].steps[0].argv"),
        (with_step(action="exec", argv=["true"], env={"lower": "instance"}), "rules[0].steps[0].env"),
        (with_step(action="systemd", verb="stop"), "rules[0].steps[0].verb"),
        (with_step(action="systemd", risk="safe"), "rules[0].steps[0].risk"),  # a restart is disruptive
        (with_step(action="silence", alertname="Trading Bot Down"), "rules[0].steps[0].alertname"),
        (with_step(action="docker", stop_timeout="10"), "rules[0].steps[0].stop_timeout"),
        (with_step(action="bot", command="reconnect", name=123), "rules[0].steps[0].name"),
        (with_rule(match={"job=~a": "x"}), "rules[0].match"),
        (with_rule(match={"alertname": True}), "rules[0].match.alertname"),
        (with_rule(hard_limit={"severity": ["critical"]}), "rules[0].hard_limit.severity"),
        ({"rules": [RULE], "defaults": {"steps": RULE["steps"]}}, "defaults"),
    ],
)
def test_the_schema_refuses_a_wrong_playbook_where_the_loader_does(
    validator: jsonschema.Draft202012Validator, data: dict[str, Any], where: str
) -> None:
    assert first_error_at(validator, data) == where, schema_errors(validator, data)
    problem = loads(data)
    assert problem is not None and problem.startswith(f"<memory>: {where}" if where else "<memory>: "), problem


# Values a change to a playbook may put anywhere: other types, the words of playbooks (durations, matchers, actions,
# commands, choices) in their right places and in wrong ones.
WORDS = [
    "5m", "1h30m", "2.5s", "0s", "200y", "-1s", "soon", "", " ", "two\nlines", 'alertname="A"', 'x=~"(a"', "job=~a",
    "bot", "exec", "systemd", "reconnect", "pause", "flatten", "restart", "stop", "safe", "disruptive", "required",
    "none", "escalate", "skip", "retry", "instance", "${instance}", "http://127.0.0.1:9/x", "TradingBotDown",
]  # fmt: skip
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 10**10)
    | st.floats(-1, 4e9, allow_nan=False)
    | st.sampled_from(WORDS)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(WORDS[6:] + ["a"]), inner, max_size=3),
    max_leaves=6,
)


def places(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value inside `data`."""
    yield path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield from places(value, (*path, key))


@settings(max_examples=150)
@given(data=st.data())
def test_a_changed_playbook_the_schema_accepts_the_loader_loads(data: st.DataObject) -> None:
    """Each packaged playbook with one value replaced, one key removed or one key added: whatever the schema accepts,
    the loader loads (or refuses it for a check of LOADER_ONLY), and whatever it refuses, the loader refuses."""
    name, playbook = data.draw(st.sampled_from(PACKAGED_DATA))
    changed = copy.deepcopy(playbook)
    path = data.draw(st.sampled_from(list(places(changed))[1:]))
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    change = data.draw(st.sampled_from(["replace", "remove", "add"]))
    if change == "replace":
        parent[path[-1]] = data.draw(VALUES)
    elif change == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.sampled_from([*WORDS[6:], "timeout", "max_attempts", "verify", "argv", "unit"]))] = (
            data.draw(VALUES)
        )
    validator = printed_validator("playbook")
    if validator.is_valid(changed):
        problem = loads(changed)
        assert problem is None or loader_only(problem), f"{name} at {path} ({change}): {problem}"
    else:
        # The same change is refused by the loader: neither is the stricter one.
        assert loads(changed) is not None, schema_errors(validator, changed)


@settings(max_examples=300)
@given(
    name=st.sampled_from(["alertname", "job", "_x", "1x", ""]),
    space=st.sampled_from(["", " "]),
    op=st.sampled_from(["=", "!=", "=~", "!~", "==", "~"]),
    value=st.text(alphabet='ab"\\ .*n', max_size=6),
)
def test_the_matcher_pattern_is_the_loaders(name: str, space: str, op: str, value: str) -> None:
    text = f"{name}{space}{op}{space}{value}"
    try:
        parse_matcher(text)
    except RegexError:
        return  # RE2's refusals are the loader's (LOADER_ONLY)
    except ValueError:
        assert re.search(MATCHER_PATTERN, text) is None, text
    else:
        assert re.search(MATCHER_PATTERN, text) is not None, text


def test_playbook_schema_prints_json_without_reading_the_configuration(tmp_path: Path, capsys: Any) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("bot: {\n")  # does not load: the schema is what helps write a playbook regardless
    assert main(["--config", str(broken), "playbook", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "trading-ops playbook" and schema["$ref"] == "#/$defs/Playbook"
    assert schema["$defs"]["Rule"]["required"] == ["name", "match", "steps"]
    assert schema["$defs"]["Defaults"]["properties"]["max_attempts"]["default"] == 2
    assert schema["$defs"]["ExecStep"]["required"] == ["action", "argv"]


def test_playbook_schema_output_to_an_unwritable_place_is_one_line_exit_2(tmp_path: Path, capsys: Any) -> None:
    assert main(["playbook", "schema", "--output", str(tmp_path / "no" / "such" / "dir" / SCHEMA_FILE)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trading-ops: --output: cannot write"), err
    assert captured.out == ""
