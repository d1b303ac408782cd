"""The shipped Grafana dashboards linted with the rules of grafana/dashboard-linter, as mixtool lints a mixin's boards.

Each rule below re-implements the one of the same name in dashboard-linter's `lint/rule_*.go`; where a rule does not
fit a board, EXCEPTIONS says so with its reason, as dashboard-linter's `.lint` file would. Like mixtool, a warning
(the variables' labels) counts as a problem. Where the Go rule has a loophole, this one is stricter, and says so.
Whether PromQL is valid is promtool's answer (Debian package `prometheus`); what an expression reads is
tests/promql_syntax.py's.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_syntax import Call, MatrixSelector, PromQLSyntaxError, VectorSelector, parse, selectors, walk
from system_binaries import REPO_ROOT, run_binary

DASHBOARD_FILES = sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json"))
# dashboard-linter's lint/variables.go: Grafana's global variables replaced by sample values before parsing, the
# rate interval by a duration no one writes, so that a range of exactly that duration is `$__rate_interval`.
RATE_INTERVAL_SAMPLE = "8869990787ms"
GLOBAL_SAMPLES = {
    "__rate_interval": RATE_INTERVAL_SAMPLE,
    "__interval": "4867856611ms",
    "__interval_ms": "7781188786",
    "__range_ms": "6737667980",
    "__range_s": "9397795485",
    "__range": "6069770749ms",
    "__auto": "12345ms",
}
VARIABLE = re.compile(r"\$(\w+)|\$\{([^}]+)\}|\[\[([^\[\]]+)\]\]")
# lint/constants.go's panel types, as each rule lists them.
PANELS_WITH_TITLES_UNITS_AND_TARGETS = {"stat", "singlestat", "graph", "table", "timeseries", "gauge"}
PANELS_WITH_TEMPLATED_DATASOURCE = {"singlestat", "graph", "table", "timeseries"}
PANELS_WITH_QUERIES = {"singlestat", "gauge", "table", "stat", "state-timeline", "timeseries"}
TEMPLATE_QUERY = re.compile(r"^([a-z_]+)\((.+)\)$", re.DOTALL)
TEMPLATE_FUNCTIONS = {"label_names", "label_values", "metrics", "query_result"}
LABEL_VALUES_ARGS = re.compile(r"^(?:(.+),\s*)?(\w+)$", re.DOTALL)
RATE_FUNCTIONS = {"rate", "irate"}
COUNTER_FUNCTIONS = {"rate", "irate", "increase"}
# lint/rule_panel_units.go's list, enumerated there from Grafana's valueFormats/categories.ts.
VALID_UNITS = set(
    """
    none string short percent percentunit humidity dB hex0x hex sci locale pixel accMS2 accFS2 accG degree radian
    grad arcmin arcsec areaM2 areaF2 areaMI2 flops mflops gflops tflops pflops eflops zflops yflops ppm conppb
    conngm3 conngNm3 conμgm3 conμgNm3 conmgm3 conmgNm3 congm3 congNm3 conmgdL conmmolL currencyUSD currencyGBP
    currencyEUR currencyJPY currencyRUB currencyUAH currencyBRL currencyDKK currencyISK currencyNOK currencySEK
    currencyCZK currencyCHF currencyPLN currencyBTC currencymBTC currencyμBTC currencyZAR currencyINR currencyKRW
    currencyIDR currencyPHP currencyVND bytes decbytes bits decbits kbytes deckbytes mbytes decmbytes gbytes
    decgbytes tbytes dectbytes pbytes decpbytes pps binBps Bps binbps bps KiBs Kibits KBs Kbits MiBs Mibits MBs
    Mbits GiBs Gibits GBs Gbits TiBs Tibits TBs Tbits PiBs Pibits PBs Pbits dateTimeAsIso dateTimeAsIsoNoDateIfToday
    dateTimeAsUS dateTimeAsUSNoDateIfToday dateTimeAsLocal dateTimeAsLocalNoDateIfToday dateTimeAsSystem
    dateTimeFromNow watt kwatt megwatt gwatt mwatt Wm2 voltamp kvoltamp voltampreact kvoltampreact watth watthperkg
    kwatth kwattm amph kamph mamph joule ev amp kamp mamp volt kvolt mvolt dBm ohm kohm Mohm farad µfarad nfarad
    pfarad ffarad henry mhenry µhenry lumens flowgpm flowcms flowcfs flowcfm litreh flowlpm flowmlpm lux forceNm
    forcekNm forceN forcekN Hs KHs MHs GHs THs PHs EHs massmg massg masslb masskg masst lengthmm lengthin lengthft
    lengthm lengthkm lengthmi pressurembar pressurebar pressurekbar pressurepa pressurehpa pressurekpa pressurehg
    pressurepsi radbq radci radgy radrad radsv radmsv radusv radrem radexpckg radr radsvh radmsvh radusvh rotrpm
    rothz rotrads rotdegs celsius fahrenheit kelvin hertz ns µs ms s m h d dtdurationms dtdurations dthms dtdhms
    timeticks clockms clocks cps ops reqps rps wps iops cpm opm rpm wpm mps mpm velocityms velocitykmh velocitymph
    velocityknot mlitre litre m3 Nm3 dm3 gallons bool bool_yes_no bool_on_off
    """.split()
)


@dataclass(frozen=True)
class Problem:
    """One rule violation: where it is (dashboard title, panel title, target refId, the metric of the selector
    at fault), and what is wrong."""

    rule: str
    dashboard: str
    message: str
    panel: str | None = None
    target: str | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Exclusion:
    """An entry of dashboard-linter's `.lint` `exclusions`: the rule, why, and which violations (every field left
    None matches anything; `metric` narrows a target rule to the selectors of one metric, which `.lint` cannot)."""

    rule: str
    reason: str
    dashboard: str | None = None
    panel: str | None = None
    target: str | None = None
    metric: str | None = None

    def matches(self, problem: Problem) -> bool:
        return problem.rule == self.rule and all(
            mine is None or mine == theirs
            for mine, theirs in (
                (self.dashboard, problem.dashboard),
                (self.panel, problem.panel),
                (self.target, problem.target),
                (self.metric, problem.metric),
            )
        )


# The variables stay on these boards all the same: the dashboard links carry them from board to board.
RECONCILER_BOARD = (
    "the board shows the reconciler (job trading-ops-reconciler): its series carry the reconciler's job and "
    'instance, never a bot\'s, so the bots\' `job=~"$job"` and `instance=~"$instance"` would empty every '
    "panel; the one panel about bots (circuit breakers) selects them by its `target` label."
)
PIPELINE_BOARD = (
    "the board follows alerts from Prometheus through Alertmanager to the reconciler and shows every scrape "
    'target: it spans those jobs by design, and the bots\' `job=~"$job"` and `instance=~"$instance"` would '
    "empty every panel but the scrape targets."
)
SLO_CONSTANT = (
    "a per-SLO constant (recorded from vector(), one series per `slo`), not a bot's series: it has no job or "
    "instance, and the matchers would hide it; the bot's side of the expression carries them."
)
EXCEPTIONS = [
    Exclusion("target-job-rule", RECONCILER_BOARD, dashboard="Self-healing"),
    Exclusion("target-instance-rule", RECONCILER_BOARD, dashboard="Self-healing"),
    Exclusion("target-job-rule", PIPELINE_BOARD, dashboard="Alerting pipeline"),
    Exclusion("target-instance-rule", PIPELINE_BOARD, dashboard="Alerting pipeline"),
    Exclusion("target-job-rule", SLO_CONSTANT, dashboard="SLOs", metric="slo:objective:ratio"),
    Exclusion("target-instance-rule", SLO_CONSTANT, dashboard="SLOs", metric="slo:objective:ratio"),
    Exclusion("target-job-rule", SLO_CONSTANT, dashboard="SLOs", metric="slo:error_budget:ratio"),
    Exclusion("target-instance-rule", SLO_CONSTANT, dashboard="SLOs", metric="slo:error_budget:ratio"),
]


# -- the dashboard as the rules see it ------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside a collapsed row included (dashboard-linter's GetPanels)."""
    for panel in board.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return list((board.get("templating") or {}).get("list") or [])


def template_datasource(board: dict[str, Any]) -> dict[str, Any] | None:
    return next((v for v in variables(board) if v.get("type") == "datasource"), None)


def prometheus_board(board: dict[str, Any]) -> bool:
    """The target and template rules apply to a board whose templated datasource is Prometheus (as in Go)."""
    source = template_datasource(board)
    return source is not None and source.get("query") == "prometheus"


def expand(expr: str) -> str:
    """lint/variables.go's expandVariables: outside double quotes, Grafana's globals become sample values and a
    dashboard variable its own name; inside them (a matcher's value) the variable stays as written."""

    def sample(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None).split(":")[0]
        return GLOBAL_SAMPLES.get(name, "10s" if name.startswith("__auto_interval") else name)

    parts = expr.split('"')
    return '"'.join(part if index % 2 else VARIABLE.sub(sample, part) for index, part in enumerate(parts))


def promtool_errors(exprs: list[str]) -> list[str | None]:
    """promtool's parse error for each (expanded) expression, None where it accepts it: one `promtool check rules`
    over a rule file with one recording rule per expression."""
    document = {
        "groups": [{"name": "lint", "rules": [{"record": f"lint_{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    errors: list[str | None] = [None] * len(exprs)
    if not exprs:
        return errors
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lint.yml"
        path.write_text(yaml.safe_dump(document))
        result = run_binary("promtool", "check", "rules", path)
    output = result.stdout + result.stderr
    for number, message in re.findall(r'rule (\d+), "lint_\d+": (.*)', output):
        errors[int(number) - 1] = message
    assert (result.returncode == 0) == (errors == [None] * len(exprs)), output
    return errors


# -- dashboard rules --------------------------------------------------------------------------------------------


def template_datasource_rule(board: dict[str, Any]) -> Iterator[Problem]:
    title = board.get("title", "")
    sources = [v for v in variables(board) if v.get("type") == "datasource"]
    if not sources:
        yield Problem("template-datasource-rule", title, "does not have a templated data source")
    for source in sources:
        query = str(source.get("query", ""))
        names, labels = {f"{query.lower()}_datasource"}, {f"{query.title()} data source"}
        if len(sources) == 1:
            names.add("datasource")
            labels.add("Data source")
        if source.get("name") not in names:
            yield Problem("template-datasource-rule", title, f"data source variable {source.get('name')!r}: {names}")
        if source.get("label") not in labels:
            yield Problem("template-datasource-rule", title, f"data source variable labeled {source.get('label')!r}")


def check_template(board: dict[str, Any], name: str, rule: str) -> Iterator[Problem]:
    """lint/rule_template_job.go's checkTemplate."""
    title = board.get("title", "")
    if not prometheus_board(board):
        return
    template = next((v for v in variables(board) if v.get("name") == name), None)
    if template is None:
        yield Problem(rule, title, f"is missing the {name} template")
        return
    uid = (template.get("datasource") or {}).get("uid")
    if uid not in ("$datasource", "${datasource}", "$prometheus_datasource", "${prometheus_datasource}"):
        yield Problem(rule, title, f"{name} template should use datasource '$datasource', is {uid!r}")
    if template.get("type") != "query":
        yield Problem(rule, title, f"{name} template should be a Prometheus query, is {template.get('type')!r}")
    if template.get("label") != name.title():
        yield Problem(rule, title, f"{name} template should be labeled {name.title()!r}, is {template.get('label')!r}")
    if not template.get("multi"):
        yield Problem(rule, title, f"{name} template should be a multi select")
    if template.get("allValue") != ".+":
        yield Problem(rule, title, f"{name} template allValue should be '.+', is {template.get('allValue')!r}")


def template_job_rule(board: dict[str, Any]) -> Iterator[Problem]:
    yield from check_template(board, "job", "template-job-rule")


def template_instance_rule(board: dict[str, Any]) -> Iterator[Problem]:
    yield from check_template(board, "instance", "template-instance-rule")


def template_query_exprs(template: dict[str, Any]) -> list[str] | str:
    """The PromQL in a query variable (label_values' selector, query_result's expression), or why it has none
    that could be valid."""
    query = str(template.get("query", ""))
    found = TEMPLATE_QUERY.match(query.strip())
    if not found:
        return f"invalid query {query!r}"
    function, argument = found.groups()
    if function not in TEMPLATE_FUNCTIONS:
        return f"invalid function {function!r}"
    if function == "query_result":
        return [argument]
    if function == "label_values":
        args = LABEL_VALUES_ARGS.match(argument.strip())
        if not args:
            return f"label_values takes (selector, label) or (label), got {argument!r}"
        return [args.group(1)] if args.group(1) else []
    return []


def template_label_promql_rule(board: dict[str, Any]) -> Iterator[Problem]:
    """Stricter than Go's, which accepts whatever its parser read a part of: the selector must parse whole."""
    title = board.get("title", "")
    if not prometheus_board(board):
        return
    queries = [v for v in variables(board) if v.get("type") == "query"]
    checked: list[tuple[str, str]] = []
    for template in queries:
        exprs = template_query_exprs(template)
        if isinstance(exprs, str):
            yield Problem("template-label-promql-rule", title, f"template {template.get('name')!r}: {exprs}")
        else:
            checked += [(str(template.get("name")), expand(expr)) for expr in exprs]
    for (name, expr), error in zip(checked, promtool_errors([e for _, e in checked]), strict=True):
        if error is not None:
            yield Problem("template-label-promql-rule", title, f"template {name!r}: {error}")


def template_on_time_change_reload_rule(board: dict[str, Any]) -> Iterator[Problem]:
    for template in variables(board):
        if template.get("type") == "query" and template.get("refresh") != 2:
            yield Problem(
                "template-on-time-change-reload-rule",
                board.get("title", ""),
                f"variable {template.get('name')!r} should refresh on time range change (2), is "
                f"{template.get('refresh')!r}",
            )


# -- panel rules ----------------------------------------------------------------------------------------------


def panel_datasource_rule(board: dict[str, Any], panel: dict[str, Any]) -> Iterator[Problem]:
    if panel.get("type") not in PANELS_WITH_TEMPLATED_DATASOURCE:
        return
    templated = {
        form.format(v.get("name"))
        for v in variables(board)
        if v.get("type") == "datasource"
        for form in ("${}", "${{{}}}")
    }
    uid = (panel.get("datasource") or {}).get("uid")
    if uid not in templated:
        yield Problem("panel-datasource-rule", board.get("title", ""), f"uses {uid!r}", panel.get("title"))


def panel_title_description_rule(board: dict[str, Any], panel: dict[str, Any]) -> Iterator[Problem]:
    if panel.get("type") in PANELS_WITH_TITLES_UNITS_AND_TARGETS and not (
        panel.get("title") and panel.get("description")
    ):
        yield Problem(
            "panel-title-description-rule", board.get("title", ""), "has no title or description", panel.get("title")
        )


def configured_unit(panel: dict[str, Any]) -> str:
    """The unit an override sets, else the default's (lint/rule_panel_units.go's getConfiguredUnit)."""
    field = panel.get("fieldConfig") or {}
    unit = ""
    for override in field.get("overrides") or []:
        for prop in override.get("properties") or []:
            if prop.get("id") == "unit":
                unit = str(prop.get("value"))
    return unit or str((field.get("defaults") or {}).get("unit") or "")


def value_mappings(panel: dict[str, Any]) -> list[Any]:
    field = panel.get("fieldConfig") or {}
    for override in field.get("overrides") or []:
        for prop in override.get("properties") or []:
            if prop.get("id") == "mappings" and prop.get("value"):
                return list(prop["value"])
    return list((field.get("defaults") or {}).get("mappings") or [])


def panel_units_rule(board: dict[str, Any], panel: dict[str, Any]) -> Iterator[Problem]:
    """A panel that maps its values to text needs no unit, nor a stat showing non-numeric fields. Stricter than
    Go's, where any `mappings` key, even an empty list, excuses a panel."""
    if panel.get("type") not in PANELS_WITH_TITLES_UNITS_AND_TARGETS:
        return
    if panel.get("type") == "stat" and ((panel.get("options") or {}).get("reduceOptions") or {}).get("fields"):
        return
    if value_mappings(panel):
        return
    unit = configured_unit(panel)
    if unit not in VALID_UNITS:
        yield Problem(
            "panel-units-rule", board.get("title", ""), f"has no or invalid unit {unit!r}", panel.get("title")
        )


def panel_no_targets_rule(board: dict[str, Any], panel: dict[str, Any]) -> Iterator[Problem]:
    """Stricter than Go's, which accepts an empty `targets` list."""
    if panel.get("type") in PANELS_WITH_TITLES_UNITS_AND_TARGETS and not panel.get("targets"):
        yield Problem("panel-no-targets-rule", board.get("title", ""), "has no targets", panel.get("title"))


# -- target rules ----------------------------------------------------------------------------------------------


@dataclass
class Target:
    board: dict[str, Any]
    panel: dict[str, Any]
    target: dict[str, Any]
    expanded: str
    promtool_error: str | None

    def problem(self, rule: str, message: str, metric: str | None = None) -> Problem:
        return Problem(
            rule,
            self.board.get("title", ""),
            f"{message}: {self.target.get('expr', '')!r}",
            self.panel.get("title"),
            self.target.get("refId"),
            metric,
        )

    def tree(self) -> Any:
        """The syntax tree, None when the expression is not valid (target-promql-rule's to report)."""
        if self.promtool_error is not None or not self.target.get("expr"):
            return None
        try:
            return parse(self.expanded)
        except PromQLSyntaxError:
            return None


def target_promql_rule(t: Target) -> Iterator[Problem]:
    if not prometheus_board(t.board) or t.panel.get("type") not in PANELS_WITH_QUERIES:
        return
    if not t.target.get("expr"):
        ids = {p.get("id") for p in panels(t.board)}
        if not t.target.get("panelId") or t.target["panelId"] not in ids:
            yield t.problem("target-promql-rule", "empty query, and no panel it refers to")
        return
    if t.promtool_error is not None:
        yield t.problem("target-promql-rule", f"invalid PromQL ({t.promtool_error})")
        return
    try:
        parse(t.expanded)
    except PromQLSyntaxError as error:
        # The other target rules read the tree: one they cannot read is a problem, never a silent pass.
        yield t.problem("target-promql-rule", f"promtool accepts it but the linter cannot read it ({error})")


def target_rate_interval_rule(t: Target) -> Iterator[Problem]:
    """A range read by rate() or irate() is `$__rate_interval` (increase() over a fixed window, `per hour`, is
    allowed, as in Go)."""
    tree = t.tree()
    if tree is None or not prometheus_board(t.board) or t.panel.get("type") not in PANELS_WITH_QUERIES:
        return
    for node, parents in walk(tree):
        if isinstance(node, MatrixSelector) and node.range != RATE_INTERVAL_SAMPLE and parents:
            parent = parents[-1]
            if isinstance(parent, Call) and parent.func in RATE_FUNCTIONS:
                yield t.problem("target-rate-interval-rule", f"{parent.func}() should use $__rate_interval")


def required_matcher_rule(label: str) -> Callable[[Target], Iterator[Problem]]:
    """lint/rule_target_job_instance.go: every selector has `label=~"$label"` (another matcher on the same label
    may narrow it further)."""
    rule = f"target-{label}-rule"

    def check(t: Target) -> Iterator[Problem]:
        tree = t.tree()
        if tree is None or not prometheus_board(t.board):
            return
        for selector in selectors(tree):
            if not any(m.label == label and m.op == "=~" and m.value == f"${label}" for m in selector.matchers):
                yield t.problem(rule, f'{selector.name or "a selector"} has no {label}=~"${label}"', selector.name)

    check.__name__ = rule.replace("-", "_")
    return check


def target_counter_agg_rule(t: Target) -> Iterator[Problem]:
    """A counter (a `_total` name) is read through rate(), irate() or increase(). Go's compares the selector's text,
    so a selector with matchers escapes it; this one compares the metric name."""
    tree = t.tree()
    if tree is None:
        return
    for node, parents in walk(tree):
        if isinstance(node, VectorSelector) and (node.name or "").endswith("_total"):
            ranged = len(parents) >= 2 and isinstance(parents[-1], MatrixSelector)
            call = parents[-2] if ranged else None
            if not (isinstance(call, Call) and call.func in COUNTER_FUNCTIONS):
                yield t.problem("target-counter-agg-rule", f"counter {node.name} is not read by rate/irate/increase")


DASHBOARD_RULES = [
    template_datasource_rule,
    template_job_rule,
    template_instance_rule,
    template_label_promql_rule,
    template_on_time_change_reload_rule,
]
PANEL_RULES = [panel_datasource_rule, panel_title_description_rule, panel_units_rule, panel_no_targets_rule]
TARGET_RULES = [
    target_promql_rule,
    target_rate_interval_rule,
    required_matcher_rule("job"),
    required_matcher_rule("instance"),
    target_counter_agg_rule,
]
RULE_NAMES = {
    "template-datasource-rule",
    "template-job-rule",
    "template-instance-rule",
    "template-label-promql-rule",
    "template-on-time-change-reload-rule",
    "panel-datasource-rule",
    "panel-title-description-rule",
    "panel-units-rule",
    "panel-no-targets-rule",
    "target-promql-rule",
    "target-rate-interval-rule",
    "target-job-rule",
    "target-instance-rule",
    "target-counter-agg-rule",
}


def lint(board: dict[str, Any]) -> list[Problem]:
    """Every problem the rules find on one dashboard, exceptions not applied."""
    problems = [problem for rule in DASHBOARD_RULES for problem in rule(board)]
    for panel in panels(board):
        problems += [problem for rule in PANEL_RULES for problem in rule(board, panel)]
    pairs = [(panel, target) for panel in panels(board) for target in panel.get("targets") or []]
    expanded = [expand(str(target.get("expr") or "")) for _, target in pairs]
    errors = promtool_errors([e for e in expanded if e])
    by_expr = dict(zip([e for e in expanded if e], errors, strict=True))
    for (panel, target), expr in zip(pairs, expanded, strict=True):
        t = Target(board, panel, target, expr, by_expr.get(expr))
        problems += [problem for rule in TARGET_RULES for problem in rule(t)]
    return problems


def unexcepted(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not any(exception.matches(p) for exception in EXCEPTIONS)]


# -- the shipped dashboards -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_problems() -> dict[str, list[Problem]]:
    return {path.stem: lint(load(path)) for path in DASHBOARD_FILES}


@pytest.mark.prometheus
@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_shipped_dashboard_passes_the_dashboard_linter(path: Path, shipped_problems: dict[str, list[Problem]]) -> None:
    assert unexcepted(shipped_problems[path.stem]) == []


@pytest.mark.prometheus
def test_every_exception_is_needed_and_says_why(shipped_problems: dict[str, list[Problem]]) -> None:
    """An exception that matches no problem any more is stale (the board changed): it must go, or it would hide
    the next real problem there."""
    problems = [p for found in shipped_problems.values() for p in found]
    for exception in EXCEPTIONS:
        assert exception.rule in RULE_NAMES, exception
        assert len(exception.reason.split()) >= 8, exception
        assert any(exception.matches(p) for p in problems), f"stale exception: {exception}"


def test_the_linter_has_every_rule_of_dashboard_linter() -> None:
    names = {f.__name__.replace("_", "-") for f in DASHBOARD_RULES + PANEL_RULES + TARGET_RULES}
    assert names == RULE_NAMES


def test_the_parser_reads_every_shipped_expression() -> None:
    """What the target rules walk: every panel target and annotation of every board, and every rule's expression,
    parses into a tree with selectors (a rule file's are promtool-checked in
    tests/monitoring/test_prometheus_rules.py)."""
    exprs = []
    for path in DASHBOARD_FILES:
        board = load(path)
        exprs += [target["expr"] for panel in panels(board) for target in panel.get("targets") or []]
        exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    for path in sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml")):
        exprs += [rule["expr"] for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    assert len(exprs) > 200
    unread = [expr for expr in exprs if not selectors(parse(expand(expr))) and "vector(" not in expr]
    assert unread == []


def test_the_parser_gives_what_encloses_each_selector() -> None:
    tree = parse('-sum by (a) (rate(x_total{a="1", b!~"2"}[5m] offset 1m)) / on (a) group_left y ^ 2 or z[1h:1m]')
    enclosing = {
        node.name: [type(parent).__name__ for parent in parents]
        for node, parents in walk(tree)
        if isinstance(node, VectorSelector)
    }
    assert enclosing == {
        "x_total": ["BinaryExpr", "BinaryExpr", "UnaryExpr", "AggregateExpr", "Call", "MatrixSelector"],
        "y": ["BinaryExpr", "BinaryExpr", "BinaryExpr"],
        "z": ["BinaryExpr", "SubqueryExpr"],
    }
    (x,) = [s for s in selectors(tree) if s.name == "x_total"]
    assert [(m.label, m.op, m.value) for m in x.matchers] == [("a", "=", "1"), ("b", "!~", "2")]


@pytest.mark.parametrize(
    "expr",
    ["sum by (a (x)", "rate(x[5m]", "x{a=b}", "x + ", "x[5]", "{}", "x y", "sum(x) by (a) by (b)", 'x{a="1",,}'],
)
def test_the_parser_rejects_what_it_cannot_read(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        parse(expr)


# -- every rule can fail: a deliberately broken board, and the problem the linter reports -------------------------


def good_board() -> dict[str, Any]:
    """A minimal board every rule accepts."""
    template = {
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
    }
    return {
        "title": "Lint",
        "templating": {
            "list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
                {**template, "name": "job", "label": "Job", "query": "label_values(up, job)"},
                {
                    **template,
                    "name": "instance",
                    "label": "Instance",
                    "query": 'label_values(up{job=~"$job"}, instance)',
                },
            ]
        },
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "Requests",
                "description": "Requests per second.",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "fieldConfig": {"defaults": {"unit": "reqps"}, "overrides": []},
                "targets": [
                    {
                        "refId": "A",
                        "expr": 'sum by (instance) (rate(http_requests_total{job=~"$job", instance=~"$instance"}'
                        "[$__rate_interval]))",
                    }
                ],
            }
        ],
    }


def break_template(variable: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(board: dict[str, Any]) -> None:
        (template,) = [v for v in board["templating"]["list"] if v["name"] == variable]
        template.update(changes)

    return apply


def drop_template(name: str) -> Callable[[dict[str, Any]], None]:
    def apply(board: dict[str, Any]) -> None:
        board["templating"]["list"] = [v for v in board["templating"]["list"] if v["name"] != name]

    return apply


def break_panel(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(board: dict[str, Any]) -> None:
        board["panels"][0].update(changes)

    return apply


def break_expr(expr: str) -> Callable[[dict[str, Any]], None]:
    def apply(board: dict[str, Any]) -> None:
        board["panels"][0]["targets"][0]["expr"] = expr

    return apply


GOOD = 'job=~"$job", instance=~"$instance"'
BROKEN = {
    "template-datasource-rule: no datasource variable": ("template-datasource-rule", drop_template("datasource")),
    "template-datasource-rule: misnamed": ("template-datasource-rule", break_template("datasource", name="ds")),
    "template-datasource-rule: mislabeled": ("template-datasource-rule", break_template("datasource", label="DS")),
    "template-job-rule: missing": ("template-job-rule", drop_template("job")),
    "template-job-rule: single select": ("template-job-rule", break_template("job", multi=False)),
    "template-job-rule: allValue .*": ("template-job-rule", break_template("job", allValue=".*")),
    "template-job-rule: fixed datasource": (
        "template-job-rule",
        break_template("job", datasource={"type": "prometheus", "uid": "prometheus"}),
    ),
    "template-job-rule: custom": ("template-job-rule", break_template("job", type="custom")),
    "template-instance-rule: missing": ("template-instance-rule", drop_template("instance")),
    "template-instance-rule: labeled Bot": ("template-instance-rule", break_template("instance", label="Bot")),
    "template-label-promql-rule: bad selector": (
        "template-label-promql-rule",
        break_template("instance", query='label_values(up{job=~"$job", instance)'),
    ),
    "template-label-promql-rule: unknown function": (
        "template-label-promql-rule",
        break_template("instance", query="label_vals(up, instance)"),
    ),
    "template-on-time-change-reload-rule": (
        "template-on-time-change-reload-rule",
        break_template("job", refresh=1),
    ),
    "panel-datasource-rule": (
        "panel-datasource-rule",
        break_panel(datasource={"type": "prometheus", "uid": "prometheus"}),
    ),
    "panel-title-description-rule": ("panel-title-description-rule", break_panel(description="")),
    "panel-units-rule: none set": ("panel-units-rule", break_panel(fieldConfig={"defaults": {}, "overrides": []})),
    "panel-units-rule: invalid": (
        "panel-units-rule",
        break_panel(fieldConfig={"defaults": {"unit": "seconds"}, "overrides": []}),
    ),
    "panel-units-rule: empty mappings excuse nothing": (
        "panel-units-rule",
        break_panel(fieldConfig={"defaults": {"mappings": []}, "overrides": []}),
    ),
    "panel-no-targets-rule": ("panel-no-targets-rule", break_panel(targets=[])),
    "target-promql-rule: syntax": (
        "target-promql-rule",
        break_expr(f"sum by (instance (rate(x_total{{{GOOD}}}[$__rate_interval]))"),
    ),
    "target-promql-rule: types": ("target-promql-rule", break_expr(f"rate(x_total{{{GOOD}}})")),
    "target-promql-rule: empty": ("target-promql-rule", break_expr("")),
    "target-rate-interval-rule: rate": ("target-rate-interval-rule", break_expr(f"rate(x_total{{{GOOD}}}[5m])")),
    "target-rate-interval-rule: irate": ("target-rate-interval-rule", break_expr(f"irate(x_total{{{GOOD}}}[1m])")),
    "target-job-rule: none": ("target-job-rule", break_expr('up{instance=~"$instance"}')),
    "target-job-rule: fixed job": ("target-job-rule", break_expr('up{job="tradingbot", instance=~"$instance"}')),
    "target-job-rule: one side of a binary": (
        "target-job-rule",
        break_expr(f'up{{{GOOD}}} / on (instance) scrape_samples_scraped{{instance=~"$instance"}}'),
    ),
    "target-instance-rule: none": ("target-instance-rule", break_expr('up{job=~"$job"}')),
    "target-instance-rule: = not =~": ("target-instance-rule", break_expr('up{job=~"$job", instance="$instance"}')),
    "target-counter-agg-rule: raw counter": ("target-counter-agg-rule", break_expr(f"x_total{{{GOOD}}}")),
    "target-counter-agg-rule: wrong function": (
        "target-counter-agg-rule",
        break_expr(f"max_over_time(x_total{{{GOOD}}}[$__rate_interval])"),
    ),
}


# Breakages that rightly break a second rule too: a panel's `${datasource}` names a variable that no longer exists.
ALSO = {
    "template-datasource-rule: no datasource variable": {"panel-datasource-rule"},
    "template-datasource-rule: misnamed": {"panel-datasource-rule"},
}


@pytest.mark.prometheus
def test_the_good_board_passes() -> None:
    """The baseline the broken boards start from: without it, a broken board's problem could be another's."""
    assert lint(good_board()) == []


@pytest.mark.prometheus
@pytest.mark.parametrize("case", list(BROKEN))
def test_the_linter_reports_a_broken_board(case: str) -> None:
    rule, breakage = BROKEN[case]
    board = copy.deepcopy(good_board())
    breakage(board)
    assert {p.rule for p in lint(board)} == {rule, *ALSO.get(case, ())}


def test_every_rule_has_a_broken_board_it_reports() -> None:
    assert {rule for rule, _ in BROKEN.values()} == RULE_NAMES


@pytest.mark.prometheus
def test_an_exception_silences_only_what_it_names() -> None:
    board = good_board()
    board["title"] = "SLOs"
    board["panels"][0]["targets"] = [
        {"refId": "A", "expr": f"x{{{GOOD}}} / on () group_left slo:error_budget:ratio"},
        {"refId": "B", "expr": f'x{{{GOOD}}} / on () group_left y{{instance=~"$instance"}}'},
    ]
    problems = lint(board)
    assert {(p.rule, p.target, p.metric) for p in problems} == {
        ("target-job-rule", "A", "slo:error_budget:ratio"),
        ("target-instance-rule", "A", "slo:error_budget:ratio"),
        ("target-job-rule", "B", "y"),
    }
    assert [(p.rule, p.target) for p in unexcepted(problems)] == [("target-job-rule", "B")]
