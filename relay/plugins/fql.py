"""A small, safe subset of Segment's FQL (filter query language): tokenized, parsed into
closures once, never eval'd.

    expression := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := ("not" | "!") unary | comparison
    comparison := operand (("=" | "==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
    operand    := literal | path | function "(" operand ("," operand)* ")" | "(" expression ")"
    literal    := "string" | 'string' | number | true | false | null
    path       := name ("." name)*       e.g. event, properties.total, context.library.name
    function   := contains(value, part) | match(value, "glob")

``=`` and ``!=`` compare JSON values (``1 = 1.0``; ``true`` is not ``1``); ``<``, ``<=``, ``>``,
``>=`` hold only when both sides are numbers or both are strings. A missing path is null.
``contains(a, b)``: b is a substring of the string a, or an item of the array a.
``match(a, "glob")``: the string a matches the glob (``*`` any run, ``?`` one character).
An operand alone (a path, say) is a condition that holds when its value is ``true``.
A character in a name can be escaped with a backslash: ``properties.order\\ id``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_LENGTH = 4096
MAX_DEPTH = 64

Value = Callable[[Any], Any]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<number>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<op>!=|<=|>=|==|=|<|>|!|\(|\)|,)
    |(?P<name>(?:[A-Za-z_$]|\\.)(?:[\w$\-]|\\.)*(?:\.(?:[\w$\-]|\\.)+)*)
    """,
    re.VERBOSE,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "null"})
_COMPARISONS = frozenset({"=", "==", "!=", "<", "<=", ">", ">="})
FUNCTIONS = ("contains", "match")


class FQLError(ValueError):
    """The expression does not parse; the message names the place."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number | string | op | name | keyword
    text: str
    at: int


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled expression: ``condition.matches(message)``."""

    source: str
    _evaluate: Value

    def matches(self, message: Any) -> bool:
        return self._evaluate(message) is True


def compile_condition(source: str) -> Condition:
    """Parse ``source``; raise FQLError naming what is wrong and where."""
    if len(source) > MAX_LENGTH:
        raise FQLError(f"the expression is longer than {MAX_LENGTH} characters")
    return Condition(source, _Parser(source).parse())


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(source):
        found = _TOKEN.match(source, at)
        if found is None:
            if source[at] in "\"'":
                raise FQLError(f"unterminated string at position {at}")
            raise FQLError(f"unexpected `{source[at]}` at position {at}")
        kind = found.lastgroup or ""
        text = found.group()
        if kind == "name" and text.lower() in _KEYWORDS:
            kind, text = "keyword", text.lower()
        if kind != "space":
            tokens.append(_Token(kind, text, at))
        at = found.end()
    return tokens


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokenize(source)
        self.i = 0
        self.depth = 0

    def parse(self) -> Value:
        if not self.tokens:
            raise FQLError("the expression is empty")
        value = self._or()
        if self.i < len(self.tokens):
            raise self._unexpected(self.tokens[self.i])
        return value

    # --- grammar ---------------------------------------------------------------------------

    def _or(self) -> Value:
        left = self._and()
        while self._accept("keyword", "or"):
            left = _either(left, self._and())
        return left

    def _and(self) -> Value:
        left = self._unary()
        while self._accept("keyword", "and"):
            left = _both(left, self._unary())
        return left

    def _unary(self) -> Value:
        if self._accept("keyword", "not") or self._accept("op", "!"):
            with _Nested(self):
                inner = self._unary()
            return lambda m: inner(m) is not True
        return self._comparison()

    def _comparison(self) -> Value:
        left = self._operand()
        token = self._peek()
        if token is not None and token.kind == "op" and token.text in _COMPARISONS:
            self.i += 1
            return _compare(token.text, left, self._operand())
        return left

    def _operand(self) -> Value:
        token = self._next("a value, a path or `(`")
        if token.kind == "op" and token.text == "(":
            with _Nested(self):
                inner = self._or()
            self._expect(")")
            return inner
        if token.kind == "string":
            return _constant(_unquote(token.text))
        if token.kind == "number":
            text = token.text
            number = float(text) if any(c in text for c in ".eE") else int(text)
            return _constant(number)
        if token.kind == "keyword" and token.text in ("true", "false", "null"):
            return _constant({"true": True, "false": False, "null": None}[token.text])
        if token.kind == "name":
            if self._accept("op", "("):
                return self._function(token)
            return _path(token.text)
        raise self._unexpected(token)

    def _function(self, name: _Token) -> Value:
        if name.text not in FUNCTIONS:
            raise FQLError(f"unknown function `{name.text}` at position {name.at}; "
                           f"known: {', '.join(FUNCTIONS)}")
        with _Nested(self):
            args = [self._operand()]
            while self._accept("op", ","):
                args.append(self._operand())
        self._expect(")")
        if len(args) != 2:
            raise FQLError(f"{name.text}() at position {name.at} takes 2 arguments, got {len(args)}")
        if name.text == "contains":
            return _contains(args[0], args[1])
        pattern = args[1](None)
        if not isinstance(pattern, str):
            raise FQLError(f"match() at position {name.at} takes a string pattern as its second argument")
        return _match(args[0], pattern)

    # --- tokens ----------------------------------------------------------------------------

    def _peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self, wanted: str) -> _Token:
        token = self._peek()
        if token is None:
            raise FQLError(f"the expression ends where {wanted} was expected")
        self.i += 1
        return token

    def _accept(self, kind: str, text: str) -> bool:
        token = self._peek()
        if token is not None and token.kind == kind and token.text == text:
            self.i += 1
            return True
        return False

    def _expect(self, text: str) -> None:
        token = self._next(f"`{text}`")
        if token.kind != "op" or token.text != text:
            raise FQLError(f"expected `{text}` at position {token.at}, found `{token.text}`")

    @staticmethod
    def _unexpected(token: _Token) -> FQLError:
        return FQLError(f"unexpected `{token.text}` at position {token.at}")


class _Nested:
    """Bounds the nesting of parentheses, `not` and function calls."""

    def __init__(self, parser: _Parser) -> None:
        self.parser = parser

    def __enter__(self) -> None:
        self.parser.depth += 1
        if self.parser.depth > MAX_DEPTH:
            raise FQLError(f"the expression nests deeper than {MAX_DEPTH} levels")

    def __exit__(self, *exc: object) -> None:
        self.parser.depth -= 1


def _unquote(text: str) -> str:
    return _UNESCAPE.sub(lambda m: _STRING_ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


# --- evaluation: each node is a closure over its children ------------------------------------


def _constant(value: Any) -> Value:
    return lambda m: value


def _path(text: str) -> Value:
    parts = tuple(_UNESCAPE.sub(r"\1", p) for p in re.split(r"(?<!\\)\.", text))
    if len(parts) == 1:
        key = parts[0]
        return lambda m: m.get(key) if isinstance(m, dict) else None

    def value(m: Any) -> Any:
        for part in parts:
            if isinstance(m, dict):
                m = m.get(part)
            elif isinstance(m, list) and part.isdigit() and int(part) < len(m):
                m = m[int(part)]
            else:
                return None
        return m

    return value


def _either(left: Value, right: Value) -> Value:
    return lambda m: left(m) is True or right(m) is True


def _both(left: Value, right: Value) -> Value:
    return lambda m: left(m) is True and right(m) is True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, booleans only equal booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _ordered(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _compare(op: str, left: Value, right: Value) -> Value:
    if op in ("=", "=="):
        return lambda m: equal(left(m), right(m))
    if op == "!=":
        return lambda m: not equal(left(m), right(m))

    def ordered(m: Any) -> bool:
        a, b = left(m), right(m)
        if not _ordered(a, b):
            return False
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)

    return ordered


def _contains(left: Value, right: Value) -> Value:
    def contains(m: Any) -> bool:
        whole, part = left(m), right(m)
        if isinstance(whole, str):
            return isinstance(part, str) and part in whole
        if isinstance(whole, list):
            return any(equal(item, part) for item in whole)
        return False

    return contains


def _match(left: Value, glob: str) -> Value:
    pattern = re.compile(fnmatch.translate(glob), re.DOTALL)

    def match(m: Any) -> bool:
        value = left(m)
        return isinstance(value, str) and pattern.match(value) is not None

    return match
