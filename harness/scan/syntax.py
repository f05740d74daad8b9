"""Python source of any recent version into an ``ast`` tree the scan can walk.

Parser choice, measured on 258 files (8.6 MB) of SQLAlchemy's own source:
the running interpreter's ``ast`` took 4.3 ms a file, tree-sitter-python 3.0 ms,
libcst 30 ms (107 ms with the positions a finding needs); parso 0.8 rejects
PEP 701 f-strings and PEP 695 type parameters. So every file is read with
``ast`` first: it is exact, and the fastest way to a tree the scan can use. A
file the running interpreter rejects (the harness runs on 3.11; the code under
scan may be written for 3.12-3.14) is parsed with **tree-sitter-python**, which
knows the newer grammar, and the newer constructs are *lowered* to 3.11 syntax
with every line kept in place:

- PEP 695/696 type parameters (``def f[T](x: T)``, ``class C[T = int]``) are
  removed, and ``type X = ...`` becomes ``X = ...``;
- PEP 701 f-string fields (``f"{x["k"]}"``, fields over several lines, with
  comments) become ``{_}``: the scan reads an f-string's fields as unknown
  values anyway, so nothing it judges is lost; PEP 750 t-strings become
  f-strings;
- PEP 758 ``except A, B:`` gets its parentheses.

The lowered text is parsed with ``ast`` again. A file that still does not parse
is :class:`Unreadable`: a limit of the scan, reported apart from findings.
"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import dataclass
from typing import Any


class Unreadable(Exception):
    """A file the scan cannot read as Python; ``reason`` says why, for the report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedModule:
    """A module's tree and the text its positions refer to (``lowered`` when newer syntax was lowered)."""

    tree: ast.Module
    text: str
    lowered: bool = False


def parse_module(source: str, path: str) -> ParsedModule:
    """Parse ``source`` with the running interpreter, lowering newer syntax when it is refused."""
    try:
        return ParsedModule(ast.parse(source, filename=path), source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        first = error
    lowered = lower_newer_syntax(source)
    if lowered is not None and lowered != source:
        try:
            return ParsedModule(ast.parse(lowered, filename=path), lowered, lowered=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
    detail = getattr(first, "msg", None) or str(first) or type(first).__name__
    where = f" at line {first.lineno}" if getattr(first, "lineno", None) else ""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    raise Unreadable(f"{detail}{where}: neither Python {version}'s parser nor the lowering of newer syntax "
                     f"(tree-sitter-python) could read it") from None


@functools.cache
def _parser() -> Any:
    import tree_sitter
    import tree_sitter_python

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))


def lower_newer_syntax(source: str) -> str | None:
    """``source`` with PEP 695/696/701/750/758 syntax written for Python 3.11, lines kept (None: no tree-sitter)."""
    try:
        parser = _parser()
    except ImportError:
        return None
    data = source.encode(errors="surrogatepass")
    edits: list[tuple[int, int, bytes]] = []
    stack = [parser.parse(data).root_node]
    while stack:
        node = stack.pop()
        kind = node.type
        children = node.children
        if kind == "string":
            edits.extend(_lower_string(node))
            continue
        if kind == "type_alias_statement" and len(children) >= 2:
            keyword, name = children[0], children[1]
            edits.append((keyword.start_byte, name.start_byte, b""))
            for part in name.children:
                for parameter in part.children if part.type == "generic_type" else ():
                    if parameter.type == "type_parameter":
                        edits.append(_removal(parameter))
            stack.extend(children[2:])
            continue
        if kind in ("function_definition", "class_definition"):
            removed = [child for child in children if child.type == "type_parameter"]
            edits.extend(_removal(child) for child in removed)
            children = [child for child in children if child.type != "type_parameter"]
        elif kind == "except_clause":
            edits.extend(_parenthesize_exceptions(children))
        stack.extend(children)
    if not edits:
        return source
    for start, end, replacement in sorted(edits, reverse=True):
        data = data[:start] + replacement + data[end:]
    return data.decode(errors="replace")


def _removal(node: Any) -> tuple[int, int, bytes]:
    # A backslash continuation per removed line break keeps every later line where it was.
    return node.start_byte, node.end_byte, b"\\\n" * node.text.count(b"\n")


def _lower_string(node: Any) -> list[tuple[int, int, bytes]]:
    edits: list[tuple[int, int, bytes]] = []
    start = node.children[0] if node.children else None
    if start is None or start.type != "string_start":
        return edits
    prefix = start.text.rstrip(b"'\"")
    triple = start.text.endswith((b"'''", b'"""'))
    if b"t" in prefix.lower():
        edits.append((start.start_byte, start.start_byte + len(prefix),
                      prefix.replace(b"t", b"f").replace(b"T", b"F")))
    lost = 0
    for child in node.children:
        if child.type != "interpolation" or len(child.children) < 2:
            continue
        opening, closing = child.children[0], child.children[-1]
        breaks = node.text[opening.end_byte - node.start_byte:closing.start_byte - node.start_byte].count(b"\n")
        # Triple-quoted f-strings may hold line breaks in a field on 3.11 too; others get them after the string.
        edits.append((opening.end_byte, closing.start_byte, b"_" + (b"\n" * breaks if triple else b"")))
        lost += 0 if triple else breaks
    if lost:
        edits.append((node.end_byte, node.end_byte, b"\\\n" * lost))
    return edits


def _parenthesize_exceptions(children: list[Any]) -> list[tuple[int, int, bytes]]:
    """``except A, B:`` (PEP 758) as ``except (A, B):``."""
    if not any(child.type == "," for child in children):
        return []
    inner = [child for child in children if child.type not in ("except", "except*", "*", ":", "block", "as")]
    if not inner or any(child.type == "as" for child in children):
        return []
    return [(inner[0].start_byte, inner[0].start_byte, b"("), (inner[-1].end_byte, inner[-1].end_byte, b")")]
