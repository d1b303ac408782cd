"""Prometheus configuration and rules: promtool accepts them, and the alert catalogue keeps its conventions.

Integration tests need promtool (Debian package `prometheus`) and the long-term-support promtool (`make
monitoring-lts`); they run it themselves, on both generations (system_binaries.GENERATIONS).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from system_binaries import GENERATIONS, REPO_ROOT, SYSTEM, Generation, run_binary

PROMETHEUS_DIR = REPO_ROOT / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*_test.yml"))
RUNBOOK_URL_BASE = "https://github.com/trading-ops/trading-ops/blob/main/runbooks/"
SERVICES = {"tradingbot", "trading-ops", "alerting"}
ALERT_NAME = re.compile(r"^(TradingBot|TradingOps)[A-Z][A-Za-z0-9]+$|^Watchdog$")
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")
SCRAPE_JOBS = {"tradingbot", "freqtrade", "trading-ops-reconciler", "alertmanager", "prometheus", "node"}
ANNOTATIONS = {"summary", "description", "runbook_url"}
DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
# How promtool reports a failed probe (see classify_quiet_cases): the expression, quoted, then `got: nil`.
# The second test file of a rule file, for its cases that reach hours: <rule file>-long_test.yml.
LONG_SUFFIX = "-long"
PROBE_REPORT = re.compile(r'expr: ".*?promtool_probe!=\\"([\w-]+)\\"[^\n]*\n\s+exp: [^\n]*\n\s+got: nil')


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def all_alert_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for rule in rules_of(path) if "alert" in rule]


def alert_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (alert_rule_test case, its test) pair across the promtool test files."""
    return [
        (case, test)
        for path in RULE_TEST_FILES
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_there_are_rule_files_and_tests() -> None:
    assert len(RULE_FILES) >= 5 and len(RULE_TEST_FILES) >= 5


@pytest.mark.prometheus
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_promtool_accepts_the_prometheus_config(generation: Generation) -> None:
    # promtool resolves rule_files relative to the config file, so this also checks every rule file.
    result = run_binary("promtool", "check", "config", PROMETHEUS_DIR / "prometheus.yml", generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_config_scrapes_every_job_every_5s() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["evaluation_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == SCRAPE_JOBS
    # The bots and the freqtrade sidecars come from the file_sd files `trading-ops config targets` writes (one place
    # lists them: the bots: list).
    for job, file in (("tradingbot", "targets/tradingbot.yml"), ("freqtrade", "targets/freqtrade.yml")):
        assert jobs[job]["file_sd_configs"][0]["files"] == [file]
        targets = [t for group in load_yaml(PROMETHEUS_DIR / file) for t in group["targets"]]
        jobs[job] = {"static_configs": [{"targets": targets}]}
    # No freqtrade unless the compose stack runs its profile (trading-ops.docker.yaml lists it commented out).
    assert jobs.pop("freqtrade") == {"static_configs": [{"targets": []}]}
    ports = {name: job["static_configs"][0]["targets"][0].rsplit(":", 1)[1] for name, job in jobs.items()}
    assert ports == {
        "tradingbot": "9101",
        "trading-ops-reconciler": "9102",
        "alertmanager": "9093",
        "prometheus": "9090",
        "node": "9100",
    }
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["rule_files"] == ["rules/*.yml"]


@pytest.mark.prometheus
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rule_file: Path, generation: Generation) -> None:
    result = run_binary("promtool", "check", "rules", rule_file, generation=generation)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
@pytest.mark.slow  # a minute for the longest files: in lanes they go out first, side by side
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(
    test_file: Path, generation: Generation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The file's own cases, run by promtool beside the quiet cases' probes (one run of each file serves both; the
    # quiet cases are told apart on the system's generation).
    run = probed_run(test_file, tmp_path_factory, generation)
    assert run.original_cases_pass(), run.output


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_every_rule_file_has_its_test_file(rule_file: Path) -> None:
    test_file = RULE_TESTS_DIR / f"{rule_file.stem}_test.yml"
    assert test_file.exists(), f"{rule_file.name} has no promtool test file {test_file.name}"
    assert f"../rules/{rule_file.name}" in load_yaml(test_file)["rule_files"]


@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=lambda p: p.name)
def test_every_test_file_tests_its_rule_file(test_file: Path) -> None:
    # Beside <rule file>_test.yml, the cases of a rule file that reach hours may have a file of their own,
    # <rule file>-long_test.yml, with a coarser evaluation_interval: promtool evaluates every rule at every step from
    # 0 to a test's last eval_time, so hours at 5 s were most of the cost of the rule tests.
    stem = test_file.name.removesuffix("_test.yml")
    rule_file = stem.removesuffix(LONG_SUFFIX)
    assert (RULES_DIR / f"{rule_file}.yml").exists(), f"{test_file.name} names no rule file"
    document = load_yaml(test_file)
    assert f"../rules/{rule_file}.yml" in document["rule_files"]
    if stem.endswith(LONG_SUFFIX):
        sibling = load_yaml(RULE_TESTS_DIR / f"{rule_file}_test.yml")
        assert duration_seconds(document["evaluation_interval"]) > duration_seconds(sibling["evaluation_interval"])


@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=lambda p: p.name)
def test_every_eval_time_is_a_step_of_its_file(test_file: Path) -> None:
    # promtool checks a case against the last evaluation at or before its eval_time: between two steps of a coarse
    # `evaluation_interval` (a -long file's minute), "not firing 5 s before the onset" would be checked a minute early
    # and pass while testing less.
    document = load_yaml(test_file)
    step = duration_seconds(document.get("evaluation_interval", "1m"))  # promtool's default
    off_grid = [
        f"{test['name']} @ {case['eval_time']}"
        for test in document["tests"]
        for case in test.get("alert_rule_test", []) + test.get("promql_expr_test", [])
        if duration_seconds(case["eval_time"]) % step
    ]
    assert off_grid == [], f"eval_times between two steps of {document.get('evaluation_interval', '1m')}"


def test_every_test_group_is_named() -> None:
    unnamed = [
        f"{path.name} test #{index + 1}"
        for path in RULE_TEST_FILES
        for index, test in enumerate(load_yaml(path)["tests"])
        if not str(test.get("name", "")).strip()
    ]
    assert unnamed == [], "promtool test groups without a name"


def test_every_alert_tier_has_a_firing_case_with_exact_labels_and_annotations() -> None:
    fired = set()
    for case, _ in alert_cases():
        for alert in case["exp_alerts"]:
            # promtool compares exp_labels and exp_annotations with the alert's full sets: asking for every
            # annotation here makes a case that leaves them out (and would then fail in promtool) obvious.
            assert set(alert.get("exp_annotations", {})) == ANNOTATIONS, f"{case['alertname']} at {case['eval_time']}"
            assert {"severity", "service"} <= set(alert["exp_labels"]), case["alertname"]
            fired.add((case["alertname"], alert["exp_labels"]["severity"]))
    tiers = {(rule["alert"], rule["labels"]["severity"]) for rule in all_alert_rules()}
    assert tiers - fired == set(), "alert tiers without a firing promtool case"


# -- "not yet firing" and negative cases, told apart by promtool itself -----------------------------------------
#
# An alert_rule_test case with `exp_alerts: []` only says "not firing". Whether the condition already held (the
# alert is pending: a real "not yet firing" case) or did not hold (a negative case) is what promtool can answer:
# rule evaluation writes ALERTS{alertstate="pending"} series, which a promql_expr_test can query. So each test
# file is run once more with, for every quiet case and every tier of its alert, a probe expecting the tier to be
# pending at that eval_time; the probes promtool reports as failed are the tiers that were not pending.


@dataclass(frozen=True)
class QuietCase:
    """An alert_rule_test case expecting no firing alert, and which tiers of the alert were pending then."""

    where: str
    alertname: str
    eval_seconds: float
    pending: frozenset[str]


def duration_seconds(value: str | int) -> float:
    """A Prometheus duration ("1h5m30s", "0m", "15s") in seconds."""
    text = str(value)
    if text.isdigit():
        return float(text)
    parts = DURATION_PART.findall(text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text, f"not a duration: {value!r}"
    return float(sum(int(number) * DURATION_UNITS[unit] for number, unit in parts))


def alert_tiers() -> dict[str, dict[str, float]]:
    """alert name -> {severity: `for` in seconds}."""
    tiers: dict[str, dict[str, float]] = {}
    for rule in all_alert_rules():
        tiers.setdefault(rule["alert"], {})[rule["labels"]["severity"]] = duration_seconds(rule.get("for", "0s"))
    return tiers


def probe(alertname: str, severity: str, probe_id: str) -> str:
    # `promtool_probe!="<id>"` matches every series (no series has that label): it only tags the expression, so
    # promtool's report of a failed probe names it.
    return (
        f'max(ALERTS{{alertname="{alertname}", severity="{severity}", alertstate="pending", '
        f'promtool_probe!="{probe_id}"}})'
    )


@dataclass(frozen=True)
class ProbedRun:
    """`promtool test rules` on a test file with a pending probe added for every tier of each quiet case."""

    cases: list[tuple[str, str, float]]  # each quiet case: where, alertname, eval_time in seconds
    probes: dict[str, tuple[int, str]]  # probe id -> (quiet case's number, severity)
    returncode: int
    output: str

    def reported(self) -> list[str]:
        """The probes promtool reports as failed: found nothing pending."""
        return list(PROBE_REPORT.findall(self.output))

    def original_cases_pass(self) -> bool:
        """Whether only probes failed, and only by finding nothing: the file's own cases all passed (and promtool
        read every file). Anything else also makes the classification meaningless."""
        reported = self.reported()
        return (
            self.returncode in (0, 1)
            and self.output.count("expr:") == len(reported)
            and "alertname:" not in self.output.split("FAILED", 1)[-1]
            and (self.returncode == 1) == bool(reported)
        )

    def quiet_cases(self) -> list[QuietCase]:
        assert self.original_cases_pass(), self.output
        tiers = alert_tiers()
        not_pending = {self.probes[probe_id] for probe_id in self.reported()}
        return [
            QuietCase(
                where,
                alertname,
                eval_seconds,
                frozenset(s for s in tiers[alertname] if (number, s) not in not_pending),
            )
            for number, (where, alertname, eval_seconds) in enumerate(self.cases)
        ]


def run_with_probes(test_file: Path, workdir: Path, generation: Generation = SYSTEM) -> ProbedRun:
    document = load_yaml(test_file)
    document["rule_files"] = [str((test_file.parent / name).resolve()) for name in document["rule_files"]]
    tiers = alert_tiers()
    probes: dict[str, tuple[int, str]] = {}
    cases: list[tuple[str, str, float]] = []
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            if case["exp_alerts"]:
                continue
            assert case["alertname"] in tiers, f"{test_file.name}: {case['alertname']} is in no rule file"
            number = len(cases)
            cases.append(
                (
                    f"{test_file.name}: {test['name']} @ {case['eval_time']}",
                    case["alertname"],
                    duration_seconds(case["eval_time"]),
                )
            )
            for severity in tiers[case["alertname"]]:
                probe_id = f"c{number}-{severity}"
                probes[probe_id] = (number, severity)
                test.setdefault("promql_expr_test", []).append(
                    {
                        "expr": probe(case["alertname"], severity, probe_id),
                        "eval_time": case["eval_time"],
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                )
    derived = workdir / test_file.name
    derived.write_text(yaml.safe_dump(document, sort_keys=False))
    result = run_binary("promtool", "test", "rules", derived.name, cwd=workdir, generation=generation)
    return ProbedRun(cases, probes, result.returncode, result.stdout + result.stderr)


def classify_quiet_cases(test_file: Path, workdir: Path) -> list[QuietCase]:
    return run_with_probes(test_file, workdir).quiet_cases()


def probed_run(test_file: Path, tmp_path_factory: pytest.TempPathFactory, generation: Generation = SYSTEM) -> ProbedRun:
    """`run_with_probes` of a shipped test file on `generation`, once per pytest run: its lanes (xdist's workers)
    share the result through their common temporary folder, the first to ask runs promtool while the others wait on
    its lock."""
    shared = tmp_path_factory.getbasetemp().parent / f"promtool-probes-{generation.name}"
    shared.mkdir(exist_ok=True)
    # Keyed by the file's content too: a run without lanes shares pytest's folder with earlier runs, whose result of
    # an older version of the file must not stand for this one.
    digest = hashlib.sha256(test_file.read_bytes()).hexdigest()[:16]
    stored = shared / f"{test_file.name}.{digest}.json"
    with open(shared / f"{test_file.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stored.exists():
                data = json.loads(stored.read_text(encoding="utf-8"))
                return ProbedRun(
                    [(where, alertname, eval_seconds) for where, alertname, eval_seconds in data["cases"]],
                    {probe_id: (number, severity) for probe_id, (number, severity) in data["probes"].items()},
                    data["returncode"],
                    data["output"],
                )
            workdir = shared / test_file.stem
            workdir.mkdir(exist_ok=True)
            run = run_with_probes(test_file, workdir, generation)
            stored.write_text(json.dumps(run.__dict__), encoding="utf-8")
            return run
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Of session scope, not module: the module's tests need not share a lane (tests/conftest.py keeps a module with a
# fixture of module scope on one), as `probed_run` already runs each file once for all of them.
@pytest.fixture(scope="session")
def quiet_cases(tmp_path_factory: pytest.TempPathFactory) -> list[QuietCase]:
    return [case for path in RULE_TEST_FILES for case in probed_run(path, tmp_path_factory).quiet_cases()]


@pytest.mark.prometheus
def test_the_pending_probe_tells_pending_from_quiet(tmp_path: Path) -> None:
    # Guards the classification itself on a known timeline: a bot scraped until t=10s, then down.
    test_file = tmp_path / "probe_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES_DIR / "tradingbot-availability.yml")],
                "evaluation_interval": "5s",
                "tests": [
                    {
                        "name": "probe",
                        "interval": "5s",
                        "input_series": [{"series": 'up{job="tradingbot", instance="a:9101"}', "values": "1 1 0x10"}],
                        "alert_rule_test": [
                            {"eval_time": "5s", "alertname": "TradingBotDown", "exp_alerts": []},
                            {"eval_time": "15s", "alertname": "TradingBotDown", "exp_alerts": []},
                        ],
                    }
                ],
            }
        )
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    quiet, pending = classify_quiet_cases(test_file, workdir)
    assert (quiet.eval_seconds, quiet.pending) == (5.0, frozenset())
    assert (pending.eval_seconds, pending.pending) == (15.0, frozenset({"critical"}))


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("alertname", "severity"),
    sorted((name, severity) for name, tiers in alert_tiers().items() for severity, wait in tiers.items() if wait > 0),
)
def test_alert_tier_has_a_not_yet_firing_case(quiet_cases: list[QuietCase], alertname: str, severity: str) -> None:
    """A case at an eval_time before `for:` runs out, while the condition already holds (the tier is pending)."""
    assert any(case.alertname == alertname and severity in case.pending for case in quiet_cases), (
        f"no case where {alertname} ({severity}) is pending but not firing yet"
    )


@pytest.mark.prometheus
@pytest.mark.parametrize("alertname", sorted(name for name in alert_tiers() if name != "Watchdog"))
def test_alert_has_a_negative_case(quiet_cases: list[QuietCase], alertname: str) -> None:
    """A case where the condition is false for every tier, evaluated after the longest `for:` would have run out
    (so it is not quiet merely because it is early)."""
    longest_wait = max(alert_tiers()[alertname].values())
    negatives = [
        case.where
        for case in quiet_cases
        if case.alertname == alertname and not case.pending and case.eval_seconds >= longest_wait
    ]
    assert negatives, f"no negative case for {alertname} (condition false at an eval_time >= {longest_wait:g}s)"


def test_bot_alerts_keep_instance_and_job_when_they_fire() -> None:
    # The reconciler maps `instance` to the bot's control API: a bot alert without it cannot be remediated.
    # Only an absent() branch (no bot scraped at all) fires without an instance, as there is no bot to name, and a
    # venue-level alert names its venue (the playbook's target for it; its steps find the venue's bots themselves).
    rules = {rule["alert"]: rule for rule in all_alert_rules() if rule["labels"]["service"] == "tradingbot"}
    for case, _ in alert_cases():
        if case["alertname"] in rules:
            expr = rules[case["alertname"]]["expr"]
            for alert in case["exp_alerts"]:
                required = {"instance", "job"}
                if "absent(" in expr:
                    required = {"job"}
                elif expr.startswith("venue:"):
                    required = {"venue"}
                assert required <= set(alert["exp_labels"]), case["alertname"]


@pytest.mark.parametrize("rule", all_alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_conventions(rule: dict[str, Any]) -> None:
    """What the project adds to mixtool's rules (tests/monitoring/test_rule_lint.py: CamelCase, severity, summary,
    description, runbook_url): the shared prefix, the service label, a `for:`, the runbook URL from the name."""
    name = rule["alert"]
    assert ALERT_NAME.match(name), name
    labels, annotations = rule["labels"], rule["annotations"]
    if name == "Watchdog":
        assert labels == {"severity": "none", "service": "alerting"}
        assert rule["expr"] == "vector(1)"
    else:
        assert rule.get("for"), "every alert but Watchdog waits before firing"
    assert labels["service"] in SERVICES
    assert annotations["runbook_url"] == f"{RUNBOOK_URL_BASE}{name}.md"


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_has_a_comment_justifying_it(rule_file: Path) -> None:
    lines = rule_file.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- alert:"):
            assert lines[number - 1].strip().startswith("#"), f"{rule_file.name}:{number + 1} {line.strip()}"


def test_recording_rules_follow_level_metric_operations_and_aggregate_with_without() -> None:
    records = [rule for path in RULE_FILES for rule in rules_of(path) if "record" in rule]
    assert records
    expr_tests = " ".join(
        case["expr"]
        for path in RULE_TEST_FILES
        for test in load_yaml(path)["tests"]
        for case in test.get("promql_expr_test", [])
    )
    for rule in records:
        assert RECORD_NAME.match(rule["record"]), rule["record"]
        assert not re.search(r"\bby\s*\(", rule["expr"]), f"{rule['record']} aggregates with `by`"
        assert rule["record"] in expr_tests, f"{rule['record']} has no promql_expr_test"
