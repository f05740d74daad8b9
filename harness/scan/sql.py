"""What a SQL string does to tenancy: search_path changes and the tables it names.

Parser choice: **pglast** (libpg_query: PostgreSQL's own grammar, compiled from
the server's source). A statement it accepts is a statement the server accepts,
and every table reference comes back as a ``RangeVar`` with its schema (or none)
and its offset, so ``FROM vinted_products vp JOIN products p`` yields exactly two
tables and ``EXTRACT(day FROM created)``, ``IS DISTINCT FROM``, CTE names and
function calls in FROM yield none. sqlglot (pure Python, multi-dialect) was
measured on the same statements: about 0.5 ms a statement against 0.01 ms for
pglast's JSON output, and it parses ``SET``/``DO`` only as opaque "Command"s.
pglast ships wheels for Linux and macOS (not Windows); without it the scan falls
back to the token-level check below.

Every string is also read by a small PostgreSQL lexer of our own that never
fails (an unterminated quote just runs to the end). It drops comments (so a
comment mentioning ``FROM products`` or ``SET search_path`` is not a finding),
finds ``SET [LOCAL|SESSION] search_path``, ``SET SCHEMA`` and
``set_config('search_path', ...)`` at statement level, reads dollar-quoted
bodies (PL/pgSQL ``DO``/``CREATE FUNCTION``) and the strings they ``EXECUTE``,
and is the fallback for table references when a statement does not parse (for
example because an f-string field stands where the grammar wants a keyword).
Bind parameters (``:name``, ``%s``, ``%(name)s``, ``$1``) and unknown values
(``{}``) are replaced by placeholders of the same length before parsing, so
every offset the parser reports is an offset in the original text.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator


SET_SEARCH_PATH = "set_search_path"
SET_CONFIG = "set_config"
SET_CONFIG_PARAM = "set_config_param"  # set_config(:name, ...): the name is bound in the parameters
TABLE = "table"

_TOKEN = re.compile(r"""
 (?P<space>\s+)
|(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
|(?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$(?P<body>.*?)(?:\$(?P=tag)\$|\Z))
|(?P<param>\$\d+|%\((?P<pname>[^)]*)\)s|%s|(?<![:\w]):(?P<cname>[A-Za-z_]\w*))
|(?P<string>[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z)|[bBxXnN]?'(?:[^']|'')*(?:'|\Z))
|(?P<qident>"(?:[^"]|"")*(?:"|\Z))
|(?P<unknown>\{[^{}]*\})
|(?P<word>[^\W\d]\w*(?:\$\w*)*)
|(?P<number>\d[\w.]*)
|(?P<punct>::|.)
""", re.S | re.X)

# After these a statement starts (in plain SQL a ";", in PL/pgSQL also the block words).
_STATEMENT_LEAD = frozenset({"begin", "then", "else", "loop", "declare", "do"})
_TARGETS = frozenset({"from", "join", "into", "update", "table", "truncate"})
_MODIFIERS = frozenset({"only", "if", "not", "exists", "lateral"})
_NOT_A_NAME = frozenset({"select", "set", "values", "default", "with", "where", "on", "using", "as"})
_NAMES = frozenset({"word", "qident", "unknown"})


@dataclass(frozen=True)
class Token:
    """A lexeme at ``text[start:end]``; ``value`` is its meaning (a name folded to lower case, a string's
    content), which starts at ``inner`` for strings and dollar-quoted bodies."""

    kind: str
    start: int
    end: int
    value: str
    inner: int = 0


@dataclass(frozen=True)
class SqlFact:
    """One thing a SQL string does, at ``offset`` in it.

    ``kind`` is SET_SEARCH_PATH, SET_CONFIG, SET_CONFIG_PARAM (``param`` names
    the bind parameter: a name, or a position for ``%s``/``$n``) or TABLE
    (``table`` and its ``schema``, None when unqualified; ``"{}"`` for a part the
    scan cannot know).
    """

    kind: str
    offset: int
    table: str | None = None
    schema: str | None = None
    param: str | int | None = None


def tokens(text: str, base: int = 0) -> list[Token]:
    """The tokens of ``text`` without white space and comments; offsets shifted by ``base``."""
    found: list[Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("space", "comment"):
            continue
        start, end, inner = match.start() + base, match.end() + base, 0
        if kind == "word":
            value = match.group().lower()
        elif kind == "qident":
            value = match.group()[1:].removesuffix('"').replace('""', '"')
        elif kind == "string":
            raw = match.group()
            inner = start + raw.index("'") + 1
            value = raw[raw.index("'") + 1:].removesuffix("'").replace("''", "'")
        elif kind == "dollar":
            value, inner = match.group("body"), match.start("body") + base
        elif kind == "param":
            value = match.group("pname") or match.group("cname") or match.group()
        else:
            value = match.group()
        found.append(Token(kind or "punct", start, end, value, inner))
    return found


@functools.lru_cache(maxsize=4096)
def analyse(text: str) -> tuple[SqlFact, ...]:
    """Every search_path change and table reference in ``text``, in order of offset."""
    facts: list[SqlFact] = []
    all_tokens = tokens(text)
    params = {t.start: n for n, t in enumerate(t for t in all_tokens if t.kind == "param" and t.value == "%s")}
    for statement in _statements(all_tokens):
        facts.extend(_statement_facts(statement, params))
        if any(t.kind == "word" and t.value in _TARGETS for t in statement):
            parsed = _parsed_tables(text, statement)
            facts.extend(parsed if parsed is not None else _token_tables(statement))
        for token in statement:
            if token.kind == "dollar":
                facts.extend(_body_facts(token.value, token.inner, depth=0))
    return tuple(sorted(facts, key=lambda f: f.offset))


def _statements(found: list[Token]) -> Iterator[list[Token]]:
    statement: list[Token] = []
    for token in found:
        if token.kind == "punct" and token.value == ";":
            if statement:
                yield statement
            statement = []
        else:
            statement.append(token)
    if statement:
        yield statement


def _statement_facts(statement: list[Token], params: dict[int, int]) -> Iterator[SqlFact]:
    """search_path changes: SET ... search_path / SET SCHEMA at a statement's start, set_config(...)."""
    for i, token in enumerate(statement):
        if token.kind != "word":
            continue
        if token.value == "set" and (i == 0 or (statement[i - 1].kind == "word"
                                                and statement[i - 1].value in _STATEMENT_LEAD)):
            j = i + 1
            if j < len(statement) and statement[j].value in ("local", "session"):
                j += 1
            if j < len(statement):
                name = statement[j]
                follows = statement[j + 1].value if j + 1 < len(statement) else ""
                if name.kind in ("word", "qident") and name.value == "search_path":
                    yield SqlFact(SET_SEARCH_PATH, name.start)
                elif name.kind == "word" and name.value == "schema" and follows != "=":
                    yield SqlFact(SET_SEARCH_PATH, name.start)
        elif token.value == "set_config" and i + 2 < len(statement) and statement[i + 1].value == "(":
            argument = statement[i + 2]
            if argument.kind == "string" and argument.value.strip().lower() == "search_path":
                yield SqlFact(SET_CONFIG, argument.start)
            elif argument.kind == "param":
                value: str | int = argument.value
                if value == "%s":
                    value = params.get(argument.start, 0)
                elif value.startswith("$"):
                    value = int(value[1:]) - 1
                yield SqlFact(SET_CONFIG_PARAM, argument.start, param=value)


def _body_facts(body: str, base: int, depth: int) -> Iterator[SqlFact]:
    """A dollar-quoted body (PL/pgSQL): its statements, tables (token level) and the strings it EXECUTEs."""
    found = tokens(body, base)
    for statement in _statements(found):
        yield from _statement_facts(statement, {})
        yield from _token_tables(statement)
        for token in statement:
            if depth < 3 and token.kind in ("string", "dollar") and (
                    "search_path" in token.value.lower() or "set_config" in token.value.lower()):
                yield from _body_facts(token.value, token.inner, depth + 1)


def _token_tables(statement: list[Token]) -> Iterator[SqlFact]:
    """Table references read from tokens: the name after FROM/JOIN/INTO/UPDATE/TABLE/TRUNCATE (and FROM lists)."""
    ctes = {t.value for i, t in enumerate(statement[:-2]) if t.kind in ("word", "qident")
            and statement[i + 1].value == "as" and statement[i + 2].value == "("}
    size = len(statement)
    for i, token in enumerate(statement):
        if token.kind != "word" or token.value not in _TARGETS:
            continue
        if token.value == "from" and i and statement[i - 1].value == "distinct":
            continue
        j = i + 1
        while j < size and statement[j].kind == "word" and statement[j].value in _MODIFIERS:
            j += 1
        while j < size and statement[j].kind in _NAMES and statement[j].value not in _NOT_A_NAME:
            first = statement[j]
            if j + 2 < size and statement[j + 1].value == "." and statement[j + 2].kind in _NAMES:
                schema: str | None = _name(statement[j])
                first, j = statement[j + 2], j + 3
            else:
                schema, j = None, j + 1
            table = _name(first)
            if not (schema is None and table in ctes):
                yield SqlFact(TABLE, first.start, table=table, schema=schema)
            if token.value not in ("from", "truncate", "table"):
                break
            if j < size and statement[j].value == "as":
                j += 2
            elif j < size and statement[j].kind in ("word", "qident") and statement[j].value not in _NOT_A_NAME:
                j += 1
            if j < size and statement[j].value == ",":
                j += 1
            else:
                break


def _name(token: Token) -> str:
    return "{}" if token.kind == "unknown" else token.value


@functools.cache
def _parser() -> tuple[Any, type[Exception]] | None:
    """pglast's parser, imported on first use; None where it is not installed (no wheel for the platform)."""
    try:
        from pglast.parser import ParseError, parse_sql_json
    except ImportError:  # pragma: no cover - depends on the platform
        return None
    return parse_sql_json, ParseError


def _parsed_tables(text: str, statement: list[Token]) -> list[SqlFact] | None:
    """The statement's table references from PostgreSQL's own parser; None when it does not parse."""
    parser = _parser()
    if parser is None:
        return None
    parse_sql_json, parse_error = parser
    start, end = statement[0].start, statement[-1].end
    pieces, position = [], start
    for token in statement:  # same-length stand-ins, so the parser's offsets are offsets in ``text``
        if token.kind in ("param", "unknown"):
            pieces.append(text[position:token.start])
            width = token.end - token.start
            pieces.append("$1".ljust(width) if token.kind == "param" else "_" * width)
            position = token.end
    pieces.append(text[position:end])
    sql = "".join(pieces)
    ranges: list[dict[str, Any]] = []
    ctes: set[str] = set()
    try:
        _walk(json.loads(parse_sql_json(sql)), ranges, ctes)
    except (parse_error, ValueError, RecursionError):
        return None
    encoded = None if sql.isascii() else sql.encode(errors="surrogatepass")
    facts = []
    for ref in ranges:
        table, schema = ref.get("relname", ""), ref.get("schemaname")
        if schema is None and table in ctes:
            continue
        location = ref.get("location", 0)
        if encoded is not None:  # the parser counts bytes of UTF-8
            location = len(encoded[:location].decode(errors="ignore"))
        facts.append(SqlFact(TABLE, start + location, table="{}" if not table.strip("_") else table,
                             schema=None if schema is None else ("{}" if not schema.strip("_") else schema)))
    return facts


def _walk(node: Any, ranges: list[dict[str, Any]], ctes: set[str]) -> None:
    # A RangeVar is a table reference; in libpg_query's JSON a field typed RangeVar (``relation``) is not
    # wrapped in {"RangeVar": ...} as list items are, so it is known by its fields.
    if isinstance(node, dict):
        if "relname" in node and "relpersistence" in node:
            ranges.append(node)
        elif "ctename" in node:
            ctes.add(node["ctename"])
        for value in node.values():
            if isinstance(value, (dict, list)):
                _walk(value, ranges, ctes)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _walk(item, ranges, ctes)
