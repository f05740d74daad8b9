"""`harness scan`: every module walked once, then judged together.

The first pass walks each file (:mod:`harness.scan.visitor`) and keeps what it
binds, the tables its SQL names, the models it declares, its defs and classes,
its imports and the calls it makes. The second pass judges them together: the
tenant tables (from ``--models``, plus the mapped classes it does not import,
or from every module's mapped classes), models missing the placeholder, every
call that reaches a def binding search_path (resolved through scopes and
imports by :mod:`harness.scan.calls`, citing that def), strings handed to a def
that runs them as SQL, and raw SQL run after a session-level binding in the
same def (citing the SET it relies on). Each finding is tagged
app/scripts/tests/migrations by its path; only app code (and the team's own
tags) gates by default.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness.errors import UsageError
from harness.scan.findings import RULES, NotScanned, ScanFinding, ScanResult, message
from harness.scan.literals import snippet, split_lines
from harness.scan.models import UNKNOWN_SCHEMA, TenantModels, load_metadata, metadata_schemas, read_models
from harness.scan.sarif import write_sarif
from harness.scan.syntax import Unreadable, parse_module
from harness.scan.tags import NOT_GATING, Tags
from harness.scan.calls import Project, Target, module_names
from harness.scan.visitor import CallSite, ModuleReport, ModuleScan

__all__ = ["ScanFinding", "NotScanned", "ScanResult", "main", "python_files", "scan_paths", "scan_source"]

SKIPPED_DIRS = frozenset({".venv", "venv", ".git", "__pycache__", "node_modules", "site-packages", ".tox", ".nox"})


@dataclass
class _Module:
    path: str  # as shown in findings
    tag: str
    source: str
    scan: ModuleScan
    names: list[str]  # its dotted module names

    @property
    def report(self) -> ModuleReport:
        return self.scan.report


def python_files(path: Path) -> Iterator[Path]:
    """``path`` itself if it is a file, else every ``*.py`` below it outside tool/vendor folders."""
    if path.is_file():
        yield path
        return
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(folder) / name


def _entries(paths: Sequence[Path]) -> list[tuple[Path, tuple[str, ...]]]:
    """Each file once, with the paths its tag is matched on (relative to the folder given, and to its parent)."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"harness scan: {', '.join(map(str, missing))} does not exist.",
                         checked=[str(Path(p).absolute()) for p in missing],
                         fix=["pass an existing Python file or folder (folders are walked for *.py)"])
    seen: set[Path] = set()
    entries = []
    for root in map(Path, paths):
        for file in python_files(root):
            key = file.resolve()
            if key in seen:
                continue
            seen.add(key)
            if root.is_file():
                relative: tuple[str, ...] = (root.as_posix() if not root.is_absolute() else root.name,
                                             f"{root.resolve().parent.name}/{root.name}")
            else:
                inside = file.relative_to(root).as_posix()
                relative = (inside, f"{root.resolve().name}/{inside}")
            entries.append((file, relative + _alembic_relative(file)))
    if not entries:
        # Scanning nothing proves nothing: say so instead of reporting a clean pass.
        raise UsageError(f"harness scan: no Python files under {', '.join(map(str, paths))}.",
                         fix=["point the scan at the application's source folder"])
    return entries


def _alembic_relative(file: Path) -> tuple[str, ...]:
    """A revision of an Alembic folder (``versions/`` beside ``env.py``) as ``FOLDER/versions/NAME``, however
    the scan was pointed at it (``alembic/versions`` itself, or one revision by its absolute path)."""
    versions = file.parent
    if versions.name != "versions" or not (versions.parent / "env.py").is_file():
        return ()
    return (f"{versions.parent.resolve().name}/versions/{file.name}",)


def read_source(file: Path) -> str:
    # utf-8-sig drops a BOM; undecodable bytes become U+FFFD instead of aborting the scan.
    return file.read_bytes().decode("utf-8-sig", errors="replace")


def scan_paths(paths: Sequence[Path], *, models: str | None = None, tags: Tags | None = None) -> ScanResult:
    """Scan every Python file under ``paths`` together; ``models`` names the team's metadata
    (package.module:attr, imported from the working folder), else the tenant tables come from the source."""
    entries = _entries(paths)
    tags = tags or Tags.from_options()
    metadata = load_metadata(models) if models else None
    result = _scan(((str(file), tags.tag(*relative), read_source(file), relative) for file, relative in entries),
                   metadata, f"--models {models}", tags)
    result.paths = [str(p) for p in paths]
    result.files = len(entries)
    return result


def scan_source(source: str, path: str = "<string>", *, tag: str = "app") -> list[ScanFinding]:
    """Findings of one module's source on its own (its own mapped classes give the tenant tables)."""
    return _scan([(path, tag, source, (path,))], None, "", Tags.from_options()).findings


def _scan(entries: Any, metadata: Any, metadata_name: str, tags: Tags) -> ScanResult:
    # Every module's facts stay alive until all are judged together and the walk makes no garbage cycles
    # worth collecting: without the collector's full passes over them the scan takes about a third less time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _scan_together(entries, metadata, metadata_name, tags)
    finally:
        if enabled:
            gc.enable()


def _scan_together(entries: Any, metadata: Any, metadata_name: str, tags: Tags) -> ScanResult:
    modules: list[_Module] = []
    result = ScanResult(paths=[], base=os.getcwd())
    for path, tag, source, relatives in entries:
        try:
            parsed = parse_module(source, path)
            scan = ModuleScan(parsed, source, path)
            scan.run(parsed.tree)
        except Unreadable as unreadable:
            result.not_scanned.append(NotScanned(path, unreadable.reason))
            continue
        except (RecursionError, MemoryError) as error:  # a pathologically deep or large module
            result.not_scanned.append(NotScanned(path, f"too deep or too large to walk ({type(error).__name__})"))
            continue
        modules.append(_Module(path, tag, source, scan, module_names(relatives)))
    calls = Project((m.path, m.names, m.report) for m in modules)
    resolved = list(calls.calls())
    _judge_helper_arguments(modules, resolved)
    # Raw SQL of the application naming a table with a schema: evidence of its scope (a test or a script may
    # name a tenant's own schema; what the application runs says where it means the table to live).
    qualified: dict[str, set[str | None]] = {}
    for module in modules:
        if module.tag in NOT_GATING:
            continue
        for ref in module.report.refs:
            if ref.schema is not None and ref.schema != UNKNOWN_SCHEMA:
                qualified.setdefault(ref.table, set()).add(ref.schema)
    project = read_models((m.report.models for m in modules), qualified)
    result.shared_models = [f"{m.name} ({m.table}, {m.path}:{m.line}: {m.reason})" for m in project.shared]
    if metadata is not None:
        schemas = metadata_schemas(metadata)
        tenant = {name for name, found in schemas.items() if any(project.is_tenant(s) for s in found)}
        result.tables_from = f"{metadata_name}: {len(tenant)} tenant table(s)"
        # Mapped classes and Core tables the team's Base never imported: their tables are judged from the source.
        unseen = [(cls.name, cls.tablename, cls.path, cls.line) for m in modules for cls in m.report.models.classes
                  if cls.tablename is not None and cls.tablename not in schemas]
        unseen += [(f"Table({table.name!r})", table.name, table.path, table.line) for m in modules
                   for table in m.report.models.tables if table.name not in schemas]
        result.models_unseen = [f"{name} ({path}:{line})" for name, _, path, line in unseen]
        from_source = {table for _, table, _, _ in unseen} & project.tenant_tables()
        if unseen:
            result.tables_from += (f"; {len(unseen)} mapped class(es) or table(s) in the scanned code it does not "
                                   f"import, read from the source ({len(from_source)} more tenant table(s))")
        tenant |= from_source
    else:
        tenant = project.tenant_tables()
        result.tables_from = "models in the scanned code" if tenant else ""
    result.tenant_tables = sorted(tenant)
    gates = tags.gating
    tag_of = {m.path: m.tag for m in modules}

    def add(path: str, line: int, rule: str, text: str, source_line: str, table: str | None,
            cites: str | None = None) -> None:
        tag = tag_of[path]
        result.findings.append(ScanFinding(path, line, rule, text, source_line, tag,
                                           RULES[rule].gates and tag in gates, table, cites))

    relied = _bindings_before(calls, resolved)
    for module in modules:
        for hit in module.report.hits.values():
            add(module.path, hit.line, hit.rule, hit.message, hit.snippet, hit.table)
        for ref in _judged_refs(module.path, module.report, tenant, project, relied):
            add(module.path, *ref)
    for issue in project.issues:
        add(issue.path, issue.line, issue.rule, message(issue.rule, **issue.values), issue.snippet, issue.table)
    lines: dict[str, list[str]] = {}
    sources = {m.path: m.source for m in modules}
    for path, call, target in resolved:
        if target.facts.binds is None:
            continue
        source_lines = lines.get(path)
        if source_lines is None:
            source_lines = lines[path] = split_lines(sources[path])
        add(path, call.line, "search-path-function-call",
            message("search-path-function-call", name=target.qualified, where=target.where),
            snippet(source_lines, call.line), None, target.where)
    result.findings.sort(key=lambda f: (f.path, f.line, f.rule, f.table or ""))
    return result


def _judge_helper_arguments(modules: list[_Module], resolved: list[tuple[str, CallSite, Target]]) -> None:
    """A string handed to a def that runs that parameter as SQL is judged as SQL at the call."""
    by_path = {m.path: m for m in modules}
    for path, call, target in resolved:
        facts = target.facts
        if not facts.sql_params or not call.strings:
            continue
        # self/cls is not among a bound method's arguments at the call
        shift = 1 if facts.owner is not None and facts.params[:1] in (("self",), ("cls",)) else 0
        strings = dict(call.strings)
        for position, name in facts.sql_params:
            text = strings.get(position - shift, strings.get(name))
            if text is not None:
                by_path[path].scan.judge_sql(text, scope=call.scope, ran_at=call.line)


def _bindings_before(calls: Project, resolved: list[tuple[str, CallSite, Target]]
                     ) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """(module, def) -> its session-level bindings in line order: (line, where the SET is), its own SETs
    and its calls of defs that run one."""
    found: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for path, report in calls.reports.items():
        for scope, ran_at, line in report.bindings:
            found.setdefault((path, scope), []).append((ran_at, f"{path}:{line}"))
    for path, call, target in resolved:
        binding = calls.binding(target)
        if binding is not None:
            found.setdefault((path, call.scope), []).append((call.line, f"{binding[0]}:{binding[1]}"))
    for events in found.values():
        events.sort()
    return found


def _judged_refs(path: str, report: ModuleReport, tenant: set[str], project: TenantModels,
                 relied: dict[tuple[str, str], list[tuple[int, str]]]) -> Iterator[tuple[Any, ...]]:
    """One finding per table named at a line. A tenant table without a schema run after a session-level
    binding in the same def relies on it: the finding cites the SET it relies on (the last one before)."""
    judged: dict[tuple[int, str, str], tuple[Any, ...]] = {}
    for ref in report.refs:
        cites = None
        if ref.schema is None and ref.table in tenant:
            before = [where for line, where in relied.get((path, ref.scope), ()) if line <= ref.ran_at]
            if before:
                cites = before[-1]
                rule, values = "unqualified-after-set-search-path", {"table": ref.table, "where": cites}
            else:
                rule, values = "unqualified-tenant-table", {"table": ref.table}
            table, kind = ref.table, "unqualified"
        elif ref.schema in project.placeholders:
            rule, values = "hardcoded-tenant-prefix", {"schema": ref.schema or ""}
            table, kind = (None if ref.table == "{}" else ref.table), "placeholder"
        else:
            continue
        key = (ref.line, kind, table or "")
        if key not in judged or (cites is not None and judged[key][-1] is None):
            judged[key] = (ref.line, rule, message(rule, **values), ref.snippet, table, cites)
    yield from judged.values()


def main(argv: list[str] | None = None) -> int:
    """``harness scan PATH... [--models SPEC] [--json] [--sarif FILE]``: 0 clean, 1 gating findings, 2 usage errors."""
    parser = argparse.ArgumentParser(
        prog="harness scan",
        description="Find code that binds tenants through search_path, raw SQL naming tenant tables without a "
                    "schema, and tenant models missing the placeholder schema.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a Python file or a folder to walk for *.py files")
    parser.add_argument("--models", metavar="SPEC",
                        help="the team's MetaData or declarative Base (package.module:attr), imported from the "
                             "working folder; without it the tenant tables are read from the mapped classes "
                             "in the scanned code")
    parser.add_argument("--tag", action="append", metavar="NAME=GLOB[,GLOB]",
                        help="which files carry a tag, as globs relative to PATH or to its parent (replaces "
                             "that tag's defaults: migrations=**/migrations/**,**/alembic/** "
                             "tests=**/tests/**,**/test_*.py,... scripts=**/scripts/**,**/bin/**,...); repeatable")
    parser.add_argument("--gate", metavar="TAGS",
                        help="the tags whose findings fail the scan, comma-separated (default: app and the tags "
                             "you add; findings in migrations, tests and scripts are listed and counted, not "
                             "gating)")
    parser.add_argument("--json", action="store_true", help="print the scan as JSON (the results.json 'scan' value)")
    parser.add_argument("--sarif", metavar="FILE", type=Path, help="also write the findings as SARIF 2.1.0")
    args = parser.parse_args(argv)
    try:
        tags = Tags.from_options(args.tag, args.gate)
        result = scan_paths(args.paths, models=args.models, tags=tags)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    if args.sarif:
        write_sarif(result.as_json(), args.sarif)
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(_text(result))
    return 1 if result.gating else 0


def _text(result: ScanResult) -> str:
    lines = []
    for f in result.findings:
        where = "" if f.tag == "app" else f" [{f.tag}]"
        lines.append(f"{f.path}:{f.line}: [{f.rule}] {f.message}{where}{'' if f.gating else ' (not gating)'}")
    lines.extend(f"{n.path}: not scanned: {n.reason}" for n in result.not_scanned)
    if result.tenant_tables:
        lines.append(f"tenant tables ({result.tables_from}): {', '.join(result.tenant_tables)}")
    else:
        lines.append("no tenant tables known, so raw SQL naming tables without a schema was not judged: "
                     "pass --models package.module:attr, or scan the folder holding the mapped classes")
    if result.shared_models:
        lines.append(f"models without a schema judged shared ({len(result.shared_models)}), not flagged: "
                     f"{', '.join(result.shared_models)}")
    if result.models_unseen:
        lines.append(f"mapped classes the --models Base does not import ({len(result.models_unseen)}): "
                     f"{', '.join(result.models_unseen)}; import them where the Base is defined")
    summary = result.summary()
    if result.findings:
        lines.append("by rule: " + ", ".join(_counted(name, c) for name, c in summary["rules"].items()))
        lines.append("by tag: " + ", ".join(_counted(name, c) for name, c in summary["tags"].items()))
        files = list(summary["files"].items())
        lines.append("by file: " + ", ".join(_counted(name, c) for name, c in files[:_FILES_SHOWN])
                     + (f" and {len(files) - _FILES_SHOWN} more file(s)" if len(files) > _FILES_SHOWN else ""))
    scanned = result.files - len(result.not_scanned)
    tail = f"; {len(result.not_scanned)} file(s) not scanned" if result.not_scanned else ""
    if result.findings:
        lines.append(f"{len(result.findings)} finding(s), {len(result.gating)} gating, in {scanned} file(s) "
                     f"scanned{tail}")
    else:
        lines.append(f"no search_path leftovers in {scanned} file(s) scanned{tail}")
    return "\n".join(lines)


_FILES_SHOWN = 10  # files named in the text summary, most findings first


def _counted(name: str, counts: dict[str, int]) -> str:
    gating = counts["gating"]
    return f"{name} {counts['findings']} ({'not gating' if not gating else f'{gating} gating'})"
