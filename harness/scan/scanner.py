"""An ``ast``-based scanner for leftovers of the legacy search_path tenancy pattern.

The migration replaced session/transaction ``SET search_path`` with
``execution_options(schema_translate_map={"tenant": schema})``. Code that still
changes search_path, calls the old helpers, or hard-codes the ``tenant.``
placeholder in raw SQL silently bypasses the translate map, so each such spot
is a finding. Working on the syntax tree (not on raw text) keeps comments and
docstrings out of the report and lets a finding point at the line of the match.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from harness.errors import UsageError

SKIPPED_DIRS = frozenset({".venv", "venv", ".git", "__pycache__", "node_modules", "site-packages"})

# Each pattern names the word a finding's line is anchored to ("anchor"): that
# word appears literally in the source, so it can be found again inside a
# multi-line string or an implicit concatenation spread over several lines.
SET_SEARCH_PATH = re.compile(r"\bSET\s+(?:(?:LOCAL|SESSION)\s+)?(?P<anchor>search_path)\b", re.I)
SET_CONFIG_SQL = re.compile(r"\bset_config\s*\(\s*['\"]\s*(?P<anchor>search_path)\s*['\"]", re.I)
# "{" follows the dot when the table name is an f-string expression: f"tenant.{table}".
TENANT_PREFIX = re.compile(r"\b(?P<anchor>tenant)\"?\s*\.\s*[A-Za-z_\"{]", re.I)

HELPER_NAMES = frozenset({"set_user_schema", "set_user_search_path", "commit_and_restore_path"})
HELPER_PREFIXES = ("set_search_path", "restore_search_path")
RAW_SQL_CALLS = frozenset({"text", "exec_driver_sql"})

MESSAGES = {
    "set-search-path-sql": "SQL sets search_path: session-level state leaks across pooled connections "
                           "(and SET LOCAL is lost after COMMIT/ROLLBACK); bind the tenant with "
                           "schema_translate_map or a per-transaction pin instead.",
    "set-config-search-path": "set_config() on search_path changes it like the legacy SET does; "
                              "bind the tenant with schema_translate_map instead.",
    "search-path-helper": "{name}() is a legacy search_path helper; remove it and bind the tenant with "
                          "schema_translate_map on the session's execution options.",
    "schema-manager": "SchemaManager belongs to the legacy search_path tenancy layer; replace its use with "
                      "a session bound through schema_translate_map.",
    "hardcoded-tenant-prefix": "raw SQL{via} names the 'tenant.' placeholder schema, which text() and "
                               "exec_driver_sql() do not translate; qualify it with the tenant's real schema "
                               "or run the query through the ORM/Core table objects.",
    "unparsable": "the file does not parse as Python ({error}), so the scan cannot see inside it; "
                  "fix the syntax or remove the file from the scanned paths.",
}


@dataclass(frozen=True)
class ScanFinding:
    """One leftover of the legacy pattern, at ``path:line``."""

    path: str
    line: int
    rule: str
    message: str
    snippet: str


def _string_text(node: ast.AST, names: dict[str, str] | None = None,
                 parts: list[ast.AST] | None = None) -> str | None:
    """The text a string expression builds, ``{}`` standing for unknown values; None if not a string.

    ``names`` resolves a bare Name bound to a string; ``parts`` collects the
    nodes that contributed text, so they are not judged again on their own.
    """
    text: str | None = None
    if isinstance(node, ast.Constant):
        text = node.value if isinstance(node.value, str) else None
    elif isinstance(node, ast.JoinedStr):
        text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
                       for v in node.values)
        if parts is not None:
            parts.extend(node.values)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_text(node.left, names, parts), _string_text(node.right, names, parts)
        if left is not None or right is not None:
            text = ("{}" if left is None else left) + ("{}" if right is None else right)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        text = _string_text(node.left, names, parts)  # the %-template carries the SQL
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "format"):
        text = _string_text(node.func.value, names, parts)
    elif isinstance(node, ast.Name) and names is not None:
        text = names.get(node.id)
    if text is not None and parts is not None:
        parts.append(node)
    return text


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_helper(name: str) -> bool:
    return name in HELPER_NAMES or name.startswith(HELPER_PREFIXES)


class _Scanner(ast.NodeVisitor):
    """Walks one module in source order and collects findings keyed by (line, rule)."""

    def __init__(self, source: str, path: str):
        self.source = source
        self.lines = source.splitlines()
        self.path = path
        self.findings: dict[tuple[int, str], ScanFinding] = {}
        self.judged: set[int] = set()  # ids of string nodes already judged (or docstrings)
        # Names bound to string text, innermost scope last; None marks a name rebound to a non-string.
        self.scopes: list[dict[str, str | None]] = [{}]

    # -- reporting ---------------------------------------------------------------------------
    def report(self, line: int, rule: str, message: str) -> None:
        snippet = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        if len(snippet) > 120:
            snippet = snippet[:117] + "..."
        self.findings.setdefault((line, rule), ScanFinding(self.path, line, rule, message, snippet))

    def match_line(self, node: ast.AST, text: str, match: re.Match[str]) -> int:
        """The source line where ``match`` starts, for strings that span several lines."""
        if getattr(node, "end_lineno", node.lineno) == node.lineno:
            return node.lineno
        anchor = match.group("anchor").lower()
        nth = text.lower().count(anchor, 0, match.start("anchor"))
        segment = (ast.get_source_segment(self.source, node) or "").lower()
        index = -1
        for _ in range(nth + 1):
            index = segment.find(anchor, index + 1)
            if index < 0:  # the word is spelled with escapes in the source: fall back to the start
                return node.lineno
        # Step back over newlines inside the match itself ("SET\n  search_path" starts at SET).
        inside = text.count("\n", match.start(), match.start("anchor"))
        return max(node.lineno, node.lineno + segment.count("\n", 0, index) - inside)

    # -- scopes and bindings -----------------------------------------------------------------
    def lookup(self) -> dict[str, str]:
        merged: dict[str, str | None] = {}
        for scope in self.scopes:
            merged.update(scope)
        return {name: text for name, text in merged.items() if text is not None}

    def bind(self, targets: list[ast.expr], value: ast.AST | None) -> None:
        text = None if value is None else _string_text(value, self.lookup())
        for target in targets:
            if isinstance(target, ast.Name):
                self.scopes[-1][target.id] = text

    def skip_docstring(self, body: list[ast.stmt]) -> None:
        # Documentation about the pattern is fine; only executable SQL counts.
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            self.judged.add(id(body[0].value))

    def visit_Module(self, node: ast.Module) -> None:
        self.skip_docstring(node.body)
        # Module constants are visible to functions defined above them, so bind them first.
        for stmt in node.body:
            if isinstance(stmt, ast.Assign):
                self.bind(stmt.targets, stmt.value)
            elif isinstance(stmt, ast.AnnAssign):
                self.bind([stmt.target], stmt.value)
        self.generic_visit(node)

    def visit_scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.skip_docstring(node.body)
        if not isinstance(node, ast.ClassDef) and _is_helper(node.name):
            self.report(node.lineno, "search-path-helper",
                        MESSAGES["search-path-helper"].format(name=node.name))
        if isinstance(node, ast.ClassDef) and node.name == "SchemaManager":
            self.report(node.lineno, "schema-manager", MESSAGES["schema-manager"])
        self.scopes.append({})
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_scope

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        self.bind(node.targets, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        self.bind([node.target], node.value)

    # -- strings -----------------------------------------------------------------------------
    def judge_string(self, node: ast.AST) -> None:
        """Check the largest string expression rooted at ``node`` once, then its sub-expressions."""
        if id(node) not in self.judged:
            parts: list[ast.AST] = []
            text = _string_text(node, None, parts)
            if text is not None:
                self.judged.update(id(part) for part in parts)
                for rule, pattern in (("set-search-path-sql", SET_SEARCH_PATH),
                                      ("set-config-search-path", SET_CONFIG_SQL)):
                    match = pattern.search(text)
                    if match:
                        self.report(self.match_line(node, text, match), rule, MESSAGES[rule])

    def visit_Constant(self, node: ast.Constant) -> None:
        self.judge_string(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self.judge_string(node)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self.judge_string(node)
        self.generic_visit(node)

    # -- names and calls ---------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if node.id == "SchemaManager":
            self.report(node.lineno, "schema-manager", MESSAGES["schema-manager"])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "SchemaManager":
            self.report(node.lineno, "schema-manager", MESSAGES["schema-manager"])
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if "SchemaManager" in (alias.name.rpartition(".")[2], alias.asname):
                self.report(node.lineno, "schema-manager", MESSAGES["schema-manager"])

    visit_ImportFrom = visit_Import

    def visit_Call(self, node: ast.Call) -> None:
        self.judge_string(node)  # "...".format(...)
        name = _call_name(node)
        first = node.args[0] if node.args else None
        if name and _is_helper(name):
            self.report(node.lineno, "search-path-helper", MESSAGES["search-path-helper"].format(name=name))
        if name == "set_config" and isinstance(first, ast.Constant) and isinstance(first.value, str) \
                and first.value.strip().lower() == "search_path":
            self.report(node.lineno, "set-config-search-path", MESSAGES["set-config-search-path"])
        if name in RAW_SQL_CALLS and first is not None:
            text = _string_text(first, self.lookup())
            match = TENANT_PREFIX.search(text) if text is not None else None
            if match and isinstance(first, ast.Name):
                self.report(node.lineno, "hardcoded-tenant-prefix",
                            MESSAGES["hardcoded-tenant-prefix"].format(via=f" bound to {first.id}"))
            elif match:
                self.report(self.match_line(first, text, match), "hardcoded-tenant-prefix",
                            MESSAGES["hardcoded-tenant-prefix"].format(via=""))
        self.generic_visit(node)


def _unparsable(source: str, path: str, error: Exception) -> ScanFinding:
    line = getattr(error, "lineno", None) or 1
    lines = source.splitlines()
    snippet = lines[line - 1].strip()[:120] if 0 < line <= len(lines) else ""
    detail = getattr(error, "msg", None) or str(error)
    return ScanFinding(path, line, "unparsable", MESSAGES["unparsable"].format(error=detail), snippet)


def scan_source(source: str, path: str = "<string>") -> list[ScanFinding]:
    """Findings in one module's source, sorted by line then rule."""
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as error:  # ValueError: NUL bytes on Python 3.11
        return [_unparsable(source, path, error)]
    scanner = _Scanner(source, path)
    scanner.visit(tree)
    return sorted(scanner.findings.values(), key=lambda f: (f.line, f.rule))


def _python_files(path: Path) -> Iterator[Path]:
    """``path`` itself if it is a file, else every ``*.py`` below it outside tool/vendor folders."""
    if path.is_file():
        yield path
        return
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(folder) / name


def _scan_files(files: list[Path]) -> list[ScanFinding]:
    findings: list[ScanFinding] = []
    for file in files:
        # utf-8-sig drops a BOM; undecodable bytes become U+FFFD instead of aborting the scan.
        source = file.read_bytes().decode("utf-8-sig", errors="replace")
        findings.extend(scan_source(source, str(file)))
    return sorted(findings, key=lambda f: (f.path, f.line, f.rule))


def scan_path(path: Path) -> list[ScanFinding]:
    """Findings in a file, or in every Python file of a folder tree, sorted by path and line."""
    return _scan_files(list(_python_files(Path(path))))


def main(argv: list[str] | None = None) -> int:
    """``harness scan PATH [PATH ...] [--json]``: 0 clean, 1 findings, 2 a path to fix."""
    parser = argparse.ArgumentParser(
        prog="harness scan",
        description="Find leftovers of the legacy search_path tenancy pattern in Python code.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a Python file or a folder to walk for *.py files")
    parser.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    args = parser.parse_args(argv)

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        for path in missing:
            print(UsageError(f"harness scan: {path} does not exist.", checked=[str(path.absolute())],
                             fix=["pass an existing Python file or folder (folders are walked for *.py)"]),
                  file=sys.stderr)
        return 2
    files = sorted({file for path in args.paths for file in _python_files(path)})
    if not files:
        # Scanning nothing proves nothing: say so instead of reporting a clean pass.
        print(UsageError(f"harness scan: no Python files under {', '.join(map(str, args.paths))}.",
                         fix=["point the scan at the application's source folder"]), file=sys.stderr)
        return 2
    findings = _scan_files(files)

    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            print(f"{finding.path}:{finding.line}: [{finding.rule}] {finding.message}")
        if findings:
            print(f"{len(findings)} finding(s) in {len(files)} file(s) scanned")
        else:
            print(f"no search_path leftovers in {len(files)} file(s) scanned")
    return 1 if findings else 0
