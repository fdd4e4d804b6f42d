"""A small, safe arithmetic grammar for user-defined x axes (overlays). Never eval.

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('+' | '-') unary | power
    power  := atom (('^' | '**') unary)?          # right-associative: 2^3^2 = 2^(3^2)
    atom   := NUMBER | NAME | FUNC '(' expr ')' | '(' expr ')'
    NAME   := t | eta | gamma | L | N              FUNC := log | exp | sqrt

Anything else (attribute access, indexing, strings, other names or functions, keywords) raises
ExpressionError naming what was found and what is allowed. Evaluation is vectorized over numpy arrays.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

NAMES = ("t", "eta", "gamma", "L", "N")
FUNCTIONS = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt}
MAX_LENGTH = 200
MAX_DEPTH = 40

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<op>\*\*|[-+*/^()]))"
)


class ExpressionError(ValueError):
    """The x expression is not in the allowed grammar."""


Node = tuple[Any, ...]  # ("num", float) | ("name", str) | ("neg", n) | ("call", f, n) | (op, a, b)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            bad = text[pos:].lstrip()[:1]
            raise ExpressionError(
                f"x: unexpected {bad!r} at position {len(text) - len(text[pos:].lstrip())}; allowed are numbers, "
                f"{', '.join(NAMES)}, + - * / ^ **, parentheses and {', '.join(FUNCTIONS)}()"
            )
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise ExpressionError(f"x: expression ends early{f'; expected {value!r}' if value else ''}")
        if value is not None and tok[1] != value:
            raise ExpressionError(f"x: expected {value!r} at position {tok[2]}, found {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.tokens:
            raise ExpressionError("x: empty expression")
        node = self.expr()
        tok = self.peek()
        if tok is not None:
            raise ExpressionError(f"x: unexpected {tok[1]!r} at position {tok[2]}")
        return node

    def _nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"x: nested more than {MAX_DEPTH} levels deep")

    def expr(self) -> Node:
        node = self.term()
        while (tok := self.peek()) is not None and tok[1] in "+-" and tok[0] == "op":
            self.take()
            node = (tok[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while (tok := self.peek()) is not None and tok[1] in ("*", "/"):
            self.take()
            node = (tok[1], node, self.unary())
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok is not None and tok[1] in ("+", "-"):
            self._nest()
            self.take()
            inner = self.unary()
            self.depth -= 1
            return ("neg", inner) if tok[1] == "-" else inner
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        tok = self.peek()
        if tok is not None and tok[1] in ("^", "**"):
            self.take()
            self._nest()
            exponent = self.unary()
            self.depth -= 1
            return ("^", base, exponent)
        return base

    def atom(self) -> Node:
        kind, value, pos = self.take()
        if kind == "num":
            return ("num", float(value))
        if kind == "name":
            nxt = self.peek()
            if nxt is not None and nxt[1] == "(":
                if value not in FUNCTIONS:
                    raise ExpressionError(
                        f"x: unknown function {value!r} at position {pos}; allowed are {', '.join(FUNCTIONS)}")
                self.take("(")
                self._nest()
                arg = self.expr()
                self.depth -= 1
                self.take(")")
                return ("call", value, arg)
            if value not in NAMES:
                raise ExpressionError(f"x: unknown name {value!r} at position {pos}; allowed are {', '.join(NAMES)}")
            return ("name", value)
        if value == "(":
            self._nest()
            node = self.expr()
            self.depth -= 1
            self.take(")")
            return node
        raise ExpressionError(f"x: unexpected {value!r} at position {pos}")


def parse(text: str) -> Node:
    """Parse an x expression into a tree (raises ExpressionError)."""
    if not isinstance(text, str):
        raise ExpressionError(f"x: must be a string (got {type(text).__name__})")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"x: at most {MAX_LENGTH} characters (got {len(text)})")
    return _Parser(text).parse()


def evaluate(node: Node, env: dict[str, np.ndarray | float]) -> np.ndarray:
    """Evaluate a parsed tree over arrays (broadcasting). NaN where undefined (log of a negative)."""
    with np.errstate(all="ignore"):
        return np.asarray(_eval(node, env), dtype=np.float64)


def _eval(node: Node, env: dict[str, np.ndarray | float]) -> Any:
    op = node[0]
    if op == "num":
        return node[1]
    if op == "name":
        return np.asarray(env[node[1]], dtype=np.float64)
    if op == "neg":
        return -_eval(node[1], env)
    if op == "call":
        return FUNCTIONS[node[1]](_eval(node[2], env))
    a, b = _eval(node[1], env), _eval(node[2], env)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return np.divide(a, b)
    if op == "^":
        return np.power(np.asarray(a, dtype=np.float64), b)
    raise ExpressionError(f"x: internal: unknown node {op!r}")


def compile_expression(text: str) -> Any:
    """Parse once; returns f(env) -> array."""
    tree = parse(text)
    return lambda env: evaluate(tree, env)
