"""A PromQL syntax tree for the dashboard linter: which selectors an expression reads, and what encloses each.

The shape follows Prometheus's `promql/parser` (VectorSelector, MatrixSelector, SubqueryExpr, Call, AggregateExpr,
BinaryExpr, UnaryExpr, ParenExpr, literals), as far as dashboard-linter's rules need it. Whether an expression is
valid PromQL (function names, argument types) is promtool's to say: this parser only has to accept what Prometheus
accepts and give its structure; it rejects what it cannot read with a `PromQLSyntaxError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

AGGREGATIONS = {
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
}
# Binary operators by precedence, lowest first (promql/parser/lex.go's precedence table).
PRECEDENCE = {
    "or": 1,
    "and": 2,
    "unless": 2,
    "==": 3,
    "!=": 3,
    "<=": 3,
    "<": 3,
    ">=": 3,
    ">": 3,
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
    "atan2": 5,
    "^": 6,
}
UNARY_PRECEDENCE = 5.5  # above * and /, below ^: -a^b is -(a^b)
DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<duration>"""
    + DURATION
    + r"""(?![\w.]))
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
    |(?P<op>==|!=|=~|!~|<=|>=|[-+*/%^<>=@(){}\[\],:])
    """,
    re.VERBOSE,
)


class PromQLSyntaxError(ValueError):
    """An expression this parser cannot read."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str


@dataclass
class Node:
    def children(self) -> list[Node]:
        return []


@dataclass
class NumberLiteral(Node):
    value: str


@dataclass
class StringLiteral(Node):
    value: str


@dataclass
class VectorSelector(Node):
    name: str | None
    matchers: list[Matcher]

    def all_matchers(self) -> list[Matcher]:
        """The matchers, the metric name included as Prometheus stores it (`__name__="..."`)."""
        named = [Matcher("__name__", "=", self.name)] if self.name else []
        return named + self.matchers


@dataclass
class MatrixSelector(Node):
    vector: VectorSelector
    range: str

    def children(self) -> list[Node]:
        return [self.vector]


@dataclass
class SubqueryExpr(Node):
    expr: Node
    range: str
    step: str | None

    def children(self) -> list[Node]:
        return [self.expr]


@dataclass
class Call(Node):
    func: str
    args: list[Node]

    def children(self) -> list[Node]:
        return list(self.args)


@dataclass
class AggregateExpr(Node):
    op: str
    expr: Node
    param: Node | None = None
    grouping: tuple[str, list[str]] | None = None  # ("by" | "without", labels)

    def children(self) -> list[Node]:
        return [self.expr] if self.param is None else [self.param, self.expr]


@dataclass
class BinaryExpr(Node):
    op: str
    lhs: Node
    rhs: Node
    matching: list[str] = field(default_factory=list)

    def children(self) -> list[Node]:
        return [self.lhs, self.rhs]


@dataclass
class UnaryExpr(Node):
    op: str
    expr: Node

    def children(self) -> list[Node]:
        return [self.expr]


@dataclass
class ParenExpr(Node):
    expr: Node

    def children(self) -> list[Node]:
        return [self.expr]


def walk(node: Node, parents: tuple[Node, ...] = ()) -> Iterator[tuple[Node, tuple[Node, ...]]]:
    """Every node with the chain of nodes enclosing it (outermost first), as parser.Walk visits them."""
    yield node, parents
    for child in node.children():
        yield from walk(child, (*parents, node))


def selectors(node: Node) -> list[VectorSelector]:
    """Every vector selector of the expression, those inside range selectors and subqueries included."""
    return [n for n, _ in walk(node) if isinstance(n, VectorSelector)]


def tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    position = 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if not match:
            raise PromQLSyntaxError(f"unexpected character {text[position]!r} at {position + 1}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group(), position))
        position = match.end()
    tokens.append(("end", "", len(text)))
    return tokens


def unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return bytes(token[1:-1], "utf-8").decode("unicode_escape")


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self, ahead: int = 0) -> tuple[str, str, int]:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def next(self) -> tuple[str, str, int]:
        token = self.peek()
        self.index += 1
        return token

    def fail(self, expected: str) -> PromQLSyntaxError:
        kind, value, position = self.peek()
        found = "end of input" if kind == "end" else repr(value)
        return PromQLSyntaxError(f"{position + 1}: unexpected {found}, expected {expected}")

    def expect(self, value: str) -> None:
        if self.peek()[1] != value or self.peek()[0] not in ("op", "ident"):
            raise self.fail(repr(value))
        self.index += 1

    def accept(self, value: str) -> bool:
        kind, text, _ = self.peek()
        if kind in ("op", "ident") and text == value:
            self.index += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.expression(0)
        if self.peek()[0] != "end":
            raise self.fail("an operator or end of input")
        return node

    def binary_operator(self) -> str | None:
        kind, text, _ = self.peek()
        if (kind == "op" or (kind == "ident" and text in ("and", "or", "unless", "atan2"))) and text in PRECEDENCE:
            return text
        return None

    def expression(self, minimum: float) -> Node:
        lhs = self.unary()
        while (op := self.binary_operator()) is not None and PRECEDENCE[op] > minimum:
            self.index += 1
            self.accept("bool")
            matching: list[str] = []
            if self.peek()[1] in ("on", "ignoring") and self.peek()[0] == "ident":
                self.index += 1
                matching = self.label_list()
                if self.peek()[1] in ("group_left", "group_right") and self.peek()[0] == "ident":
                    self.index += 1
                    if self.peek()[1] == "(":
                        self.label_list()
            # ^ is right-associative: its right side may hold another ^.
            rhs = self.expression(PRECEDENCE[op] if op != "^" else PRECEDENCE[op] - 0.5)
            lhs = BinaryExpr(op, lhs, rhs, matching)
        return lhs

    def unary(self) -> Node:
        if self.peek()[0] == "op" and self.peek()[1] in ("-", "+"):
            op = self.next()[1]
            return UnaryExpr(op, self.expression(UNARY_PRECEDENCE))
        return self.postfix(self.primary())

    def label_list(self) -> list[str]:
        self.expect("(")
        labels = []
        while not self.accept(")"):
            kind, text, _ = self.next()
            if kind != "ident":
                self.index -= 1
                raise self.fail("a label name")
            labels.append(text)
            if not self.accept(","):
                self.expect(")")
                break
        return labels

    def arguments(self) -> list[Node]:
        self.expect("(")
        args: list[Node] = []
        while not self.accept(")"):
            args.append(self.expression(0))
            if not self.accept(","):
                self.expect(")")
                break
        return args

    def primary(self) -> Node:
        kind, text, _ = self.peek()
        if kind == "op" and text == "(":
            return self.parenthesised()
        if kind in ("number", "string"):
            return self.literal()
        if kind == "op" and text == "{":
            return self.selector(None)
        if kind != "ident":
            raise self.fail("an expression")
        return self.named()

    def parenthesised(self) -> ParenExpr:
        self.index += 1
        inner = self.expression(0)
        self.expect(")")
        return ParenExpr(inner)

    def literal(self) -> Node:
        kind, text, _ = self.next()
        return NumberLiteral(text) if kind == "number" else StringLiteral(unquote(text))

    def named(self) -> Node:
        """What an identifier starts: Inf or NaN, an aggregation, a function call or a selector."""
        text = self.next()[1]
        if text.lower() in ("inf", "nan"):
            return NumberLiteral(text)
        if text in AGGREGATIONS and self.peek()[1] in ("(", "by", "without"):
            return self.aggregation(text)
        if self.peek()[1] == "(" and self.peek()[0] == "op":
            return Call(text, self.arguments())
        return self.selector(text)

    def aggregation(self, op: str) -> Node:
        grouping = None
        if self.peek()[1] in ("by", "without"):
            grouping = (self.next()[1], self.label_list())
        args = self.arguments()
        if self.peek()[1] in ("by", "without") and self.peek()[0] == "ident":
            if grouping is not None:
                raise self.fail("no second grouping")
            grouping = (self.next()[1], self.label_list())
        if len(args) == 1:
            return AggregateExpr(op, args[0], None, grouping)
        if len(args) == 2:
            return AggregateExpr(op, args[1], args[0], grouping)
        raise PromQLSyntaxError(f"{op} takes one or two arguments, got {len(args)}")

    def selector(self, name: str | None) -> VectorSelector:
        matchers = []
        if self.accept("{"):
            while not self.accept("}"):
                kind, label, _ = self.next()
                if kind not in ("ident", "string"):
                    self.index -= 1
                    raise self.fail("a label matcher")
                op_kind, op, _ = self.next()
                if op_kind != "op" or op not in ("=", "!=", "=~", "!~"):
                    self.index -= 1
                    raise self.fail("a matching operator")
                value_kind, value, _ = self.next()
                if value_kind != "string":
                    self.index -= 1
                    raise self.fail("a quoted label value")
                label = unquote(label) if kind == "string" else label
                matchers.append(Matcher(label, op, unquote(value)))
                if not self.accept(","):
                    self.expect("}")
                    break
        if name is None and not matchers:
            raise PromQLSyntaxError("a vector selector needs a metric name or a matcher")
        return VectorSelector(name, matchers)

    def duration(self) -> str:
        kind, text, _ = self.peek()
        if kind != "duration":
            raise self.fail("a duration")
        self.index += 1
        return text

    def postfix(self, node: Node) -> Node:
        while True:
            if self.accept("["):
                span = self.duration()
                if self.accept(":"):
                    step = self.duration() if self.peek()[0] == "duration" else None
                    self.expect("]")
                    node = SubqueryExpr(node, span, step)
                else:
                    self.expect("]")
                    if not isinstance(node, VectorSelector):
                        raise PromQLSyntaxError("a range needs a vector selector (or `:` for a subquery)")
                    node = MatrixSelector(node, span)
            elif self.peek()[:2] == ("ident", "offset"):
                self.index += 1
                self.accept("-")
                self.duration()
            elif self.accept("@"):
                kind, text, _ = self.next()
                if kind == "ident" and text in ("start", "end"):
                    self.expect("(")
                    self.expect(")")
                elif kind != "number":
                    self.index -= 1
                    raise self.fail("a timestamp, start() or end()")
            else:
                return node


def parse(text: str) -> Node:
    """The syntax tree of a PromQL expression; PromQLSyntaxError if it cannot be read."""
    return Parser(text).parse()
