"""The text a Python string expression builds, and the source line of every character of it.

A SQL string is often spread over many source lines: a triple-quoted constant, an
implicit concatenation, an f-string, ``"..." + name``, ``sql.SQL("...").format(...)``.
A finding must point at the line of *its* part of the string, so a resolved
string (:class:`SqlText`) keeps its parts and the ast node each came from. The
text is cheap (it comes from the ast's values); the lines are found only when a
finding needs one, by lexing that node's source segment again
(:func:`literal_marks`), because Python 3.11 gives the parts of an f-string the
position of the whole f-string.
"""

from __future__ import annotations

import ast
import bisect
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

UNKNOWN = "{}"  # stands for a value the scan cannot know (an f-string field, a parameter)

# Calls that hand their first argument on unchanged as SQL: the text stays the same string.
TRANSPARENT_CALLS = frozenset({"text", "SQL", "DDL"})
# psycopg's sql.Identifier("x") renders as "x"; sql.SQL / sql.Literal of a constant as its text.
_IDENTIFIER_CALLS = frozenset({"Identifier"})
_FORMAT_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_STRING_START = re.compile(r"([rRbBuUfFtT]{0,2})('''|\"\"\"|'|\")")


class Names(Protocol):
    """The names in scope: ``value(name)`` is what a name is bound to (a string, a dict literal, or
    something else), ``attribute(receiver, name)`` a class constant (``self.SQL``, ``Repo.SQL``)."""

    def value(self, name: str) -> object: ...

    def attribute(self, receiver: str, name: str) -> object: ...


def split_lines(source: str) -> list[str]:
    """Physical lines as Python's tokenizer counts them (form feeds and other separators are not breaks)."""
    return _LINE_BREAK.split(source)


def snippet(lines: list[str], line: int) -> str:
    """Source line ``line`` (1-based) without its indentation, cut to 120 characters, for a finding."""
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class Part:
    """A run of a resolved string: ``text`` is ``node``'s text from ``start`` on (or an unknown, at ``line``)."""

    text: str
    node: ast.expr | None
    start: int
    line: int


@dataclass(frozen=True)
class SqlText:
    """A resolved string: its parts in order, each able to say which source line it sits on."""

    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.parts)

    @classmethod
    def of_node(cls, node: ast.expr, text: str) -> SqlText:
        return cls((Part(text, node, 0, node.lineno),))

    @classmethod
    def unknown(cls, line: int, text: str = UNKNOWN) -> SqlText:
        return cls((Part(text, None, 0, line),))

    def __add__(self, other: SqlText) -> SqlText:
        return SqlText(self.parts + other.parts)

    def slice(self, start: int, end: int) -> SqlText:
        """The parts covering ``text[start:end]``, cut at both ends."""
        parts: list[Part] = []
        offset = 0
        for part in self.parts:
            low, high = max(start, offset), min(end, offset + len(part.text))
            if low < high:
                cut = low - offset
                parts.append(Part(part.text[cut:high - offset], part.node, part.start + cut, part.line))
            offset += len(part.text)
        return SqlText(tuple(parts))

    def locate(self, offset: int) -> tuple[Part, int]:
        """The part holding ``text[offset]`` and the offset inside that part's node text."""
        for part in self.parts:
            if offset < len(part.text):
                return part, part.start + offset
            offset -= len(part.text)
        last = self.parts[-1]
        return last, last.start + len(last.text)


class Resolver:
    """Resolves string expressions of one module to :class:`SqlText`, and their offsets to source lines."""

    def __init__(self, source: str):
        self.source = source
        self._lines: list[str] | None = None
        self._marks: dict[int, list[tuple[int, int]] | None] = {}

    # -- text -------------------------------------------------------------------------------
    def resolve(self, node: ast.AST, names: Names | None = None) -> SqlText | None:
        """The string ``node`` builds, ``{}`` standing for unknown values; None if it is not a string."""
        if isinstance(node, ast.Constant):
            return SqlText.of_node(node, node.value) if isinstance(node.value, str) else None
        if isinstance(node, ast.JoinedStr):
            return SqlText.of_node(node, joined_text(node))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.resolve(node.left, names), self.resolve(node.right, names)
            if left is None and right is None:
                return None
            return ((left or SqlText.unknown(node.left.lineno))
                    + (right or SqlText.unknown(getattr(node.right, "lineno", node.lineno))))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self.resolve(node.left, names)  # the %-template carries the SQL
        if names is None:
            return None
        if isinstance(node, ast.Name):
            return _string(names.value(node.id))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return _string(names.attribute(node.value.id, node.attr))
        if isinstance(node, ast.Subscript):  # QUERIES["report"], self.QUERIES["report"]
            key = node.slice
            mapping = (names.value(node.value.id) if isinstance(node.value, ast.Name) else
                       names.attribute(node.value.value.id, node.value.attr)
                       if isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name) else None)
            if isinstance(mapping, ast.Dict) and isinstance(key, ast.Constant):
                item = next((v for k, v in zip(mapping.keys, mapping.values)
                             if isinstance(k, ast.Constant) and k.value == key.value), None)
                return None if item is None else self.resolve(item, names)
            return None
        if isinstance(node, ast.Call):
            name = call_name(node)
            if name == "format" and isinstance(node.func, ast.Attribute):
                template = self.resolve(node.func.value, names)
                return None if template is None else self._format(template, node, names)
            if name in TRANSPARENT_CALLS and node.args:
                return self.resolve(node.args[0], names)
        return None

    def _format(self, template: SqlText, call: ast.Call, names: Names | None) -> SqlText:
        """``template.format(...)``: constant arguments (and psycopg Identifier/SQL) are put in their fields."""
        text = template.text
        result: list[SqlText] = []
        position, auto = 0, 0
        keywords = {k.arg: k.value for k in call.keywords if k.arg}
        for match in _FORMAT_FIELD.finditer(text):
            result.append(template.slice(position, match.start()))
            position = match.end()
            if match.group(1) is None:  # "{{" or "}}": one brace of text
                result.append(template.slice(match.start(), match.start() + 1))
                continue
            field = re.split(r"[.\[!:]", match.group(1), maxsplit=1)[0]
            if field == "":
                field, auto = str(auto), auto + 1
            argument = (call.args[int(field)] if field.isdigit() and int(field) < len(call.args)
                        else keywords.get(field))
            value = None if argument is None else self._format_argument(argument, names)
            result.append(value or template.slice(match.start(), match.end()))
        result.append(template.slice(position, len(text)))
        return SqlText(tuple(part for piece in result for part in piece.parts))

    def _format_argument(self, node: ast.expr, names: Names | None) -> SqlText | None:
        if isinstance(node, ast.Call) and call_name(node) in _IDENTIFIER_CALLS and node.args:
            inner = self.resolve(node.args[0], names)
            if inner is not None and UNKNOWN not in inner.text:
                quote = SqlText.unknown(node.lineno, '"')
                return quote + inner + quote
            return None
        return self.resolve(node, names)

    # -- lines ------------------------------------------------------------------------------
    def line_of(self, text: SqlText, offset: int) -> int:
        """The source line of ``text.text[offset]``."""
        part, inner = text.locate(offset)
        if part.node is None:
            return part.line
        marks = self._marks.get(id(part.node), ())
        if marks == ():
            marks = self._marks[id(part.node)] = self._node_marks(part.node)
        if not marks:
            return part.line
        index = bisect.bisect_right(marks, (inner, float("inf"))) - 1
        return marks[max(index, 0)][1]

    def _node_marks(self, node: ast.expr) -> list[tuple[int, int]] | None:
        """(offset, line) marks of a Constant or JoinedStr, from its source; None when they cannot be found."""
        expected = node.value if isinstance(node, ast.Constant) else joined_text(node)  # type: ignore[union-attr]
        if node.end_lineno == node.lineno:
            return [(0, node.lineno)]
        segment = self.segment(node)
        marks = None if segment is None else literal_marks(segment, node.lineno, expected)
        if marks is None and expected.count("\n") == node.end_lineno - node.lineno:  # type: ignore[operator]
            # No escapes to get wrong: every newline of the value is a newline of the source.
            marks = [(0, node.lineno)] + [(m.end(), node.lineno + i + 1)
                                          for i, m in enumerate(re.finditer("\n", expected))]
        return marks

    def segment(self, node: ast.expr) -> str | None:
        """``ast.get_source_segment`` without splitting the whole source again for every node."""
        if self._lines is None:
            self._lines = [line + "\n" for line in split_lines(self.source)]
        lines = self._lines
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        if last >= len(lines) or node.end_col_offset is None:
            return None
        if first == last:
            return lines[first].encode()[node.col_offset:node.end_col_offset].decode(errors="replace")
        return (lines[first].encode()[node.col_offset:].decode(errors="replace") + "".join(lines[first + 1:last])
                + lines[last].encode()[:node.end_col_offset].decode(errors="replace"))


def _string(value: object) -> SqlText | None:
    return value if isinstance(value, SqlText) else None


def joined_text(node: ast.JoinedStr) -> str:
    return "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else UNKNOWN
                   for v in node.values)


def call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def literal_marks(segment: str, first_line: int, expected: str) -> list[tuple[int, int]] | None:
    """(offset in the value, line) for each physical line of the string literals in ``segment``.

    ``segment`` is the source of one string expression: one literal or an implicit
    concatenation, plain or f-strings. Returns None when what it reads does not
    add up to ``expected`` (the value the ast holds), so a caller falls back.
    """
    marks: list[tuple[int, int]] = []
    value: list[str] = []
    size, line, i = 0, first_line, 0

    def add(raw: str, decode: Callable[[str], str]) -> None:
        nonlocal size, line
        chunks = raw.split("\n")
        for n, chunk in enumerate(chunks):
            text = decode(chunk + ("\n" if n < len(chunks) - 1 else ""))
            if text:
                marks.append((size, line + n))
                value.append(text)
                size += len(text)
        line += len(chunks) - 1

    try:
        while i < len(segment):
            char = segment[i]
            if char == "\n":
                line, i = line + 1, i + 1
            elif char in " \t\f\\()":
                i += 1
            elif char == "#":
                end = segment.find("\n", i)
                i = len(segment) if end < 0 else end
            else:
                start = _STRING_START.match(segment, i)
                if start is None:
                    return None
                prefix, quote = start.group(1).lower(), start.group(2)
                raw = "r" in prefix
                decode = _identity if raw else _unescape
                i = start.end()
                if "f" in prefix or "t" in prefix:
                    for kind, chunk, i in _fstring_body(segment, i, quote, raw):
                        if kind == "text":
                            add(chunk, decode)
                        else:
                            add(UNKNOWN, _identity)
                            line += chunk.count("\n")
                else:
                    end = _string_end(segment, i, quote)
                    add(segment[i:end], decode)
                    i = end + len(quote)
    except (ValueError, UnicodeError, IndexError):
        return None
    return marks if "".join(value) == expected else None


def _identity(text: str) -> str:
    return text


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    with warnings.catch_warnings():  # "\d" and friends: kept as they are, as Python does
        warnings.simplefilter("ignore")
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _string_end(source: str, i: int, quote: str) -> int:
    """Index of the closing ``quote`` of a literal whose body starts at ``i``."""
    while True:
        if source.startswith(quote, i):
            return i
        if i >= len(source):
            raise ValueError("unterminated string")
        i += 2 if source[i] == "\\" else 1


def _fstring_body(source: str, i: int, quote: str, raw: bool):
    """Yield ("text", run, end) and ("field", source of the field, end) for an f-string body from ``i``.

    Fields may hold nested strings with the same quotes (Python 3.12) and nested
    fields in their format spec; each whole field stands for one unknown value.
    """
    run: list[str] = []
    while not source.startswith(quote, i):
        char = source[i]
        if char == "\\" and not raw:
            run.append(source[i:i + 2])
            i += 2
        elif source.startswith("{{", i) or source.startswith("}}", i):
            run.append(char)
            i += 2
        elif char == "{":
            if run:
                yield "text", "".join(run), i
                run = []
            end = _field_end(source, i + 1)
            yield "field", source[i:end], end
            i = end
        else:
            run.append(char)
            i += 1
        if i >= len(source):
            raise ValueError("unterminated f-string")
    if run:
        yield "text", "".join(run), i
    yield "text", "", i + len(quote)


def _field_end(source: str, i: int) -> int:
    """Index just after the ``}`` closing the replacement field whose expression starts at ``i``."""
    depth = 1
    while depth:
        char = source[i]
        start = _STRING_START.match(source, i) if char in "'\"rRbBuUfFtT" else None
        if start and (i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_")):
            prefix, quote = start.group(1).lower(), start.group(2)
            i = start.end()
            if "f" in prefix or "t" in prefix:
                for _kind, _chunk, i in _fstring_body(source, i, quote, "r" in prefix):
                    pass
            else:
                i = _string_end(source, i, quote) + len(quote)
            continue
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
        i += 1
    return i
