"""The scan's rules, its findings, the files it could not read, and the record of one scan."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class Rule:
    """One kind of finding: ``title`` names it, ``message`` (one sentence, a template) says what to do."""

    id: str
    title: str
    message: str
    gates: bool = True  # False: information, listed but never failing a run


RULES: dict[str, Rule] = {rule.id: rule for rule in (
    Rule("set-search-path-sql", "SQL sets search_path",
         "SQL sets search_path: session-level state leaks across pooled connections (and SET LOCAL is lost "
         "after COMMIT/ROLLBACK); bind the tenant with schema_translate_map or a per-transaction pin instead."),
    Rule("set-config-search-path", "set_config() changes search_path",
         "set_config() on search_path changes it like the legacy SET does; bind the tenant with "
         "schema_translate_map instead."),
    Rule("libpq-search-path-option", "libpq options set search_path",
         "the libpq option -c search_path sets it for the whole server connection, which PgBouncer hands to "
         "other clients (or refuses, or ignores, unless it tracks search_path); bind the tenant with "
         "schema_translate_map instead."),
    Rule("asyncpg-server-settings", "asyncpg server_settings set search_path",
         "asyncpg server_settings with search_path set it for the whole server connection, so a pooled "
         "connection carries one tenant's schema into the next request; bind the tenant with "
         "schema_translate_map instead."),
    Rule("django-tenancy-call", "a django-tenants call sets search_path",
         "{name}() binds the tenant by setting search_path on the shared database connection, which a pooler "
         "in transaction mode hands to other clients; run it on a session route only, or pin the schema per "
         "transaction."),
    Rule("search-path-helper", "a legacy search_path helper",
         "{name}() is a legacy search_path helper; remove it and bind the tenant with schema_translate_map on "
         "the session's execution options."),
    Rule("search-path-function-call", "a call of a function that sets search_path",
         "{name}() sets search_path in its body ({where}), so this call binds the tenant on a pooled "
         "connection; bind it with schema_translate_map instead."),
    Rule("schema-manager", "the legacy SchemaManager",
         "SchemaManager belongs to the legacy search_path tenancy layer; replace its use with a session bound "
         "through schema_translate_map."),
    Rule("hardcoded-tenant-prefix", "raw SQL names the placeholder schema",
         "raw SQL names the '{schema}.' placeholder schema, which text() and exec_driver_sql() do not "
         "translate; qualify it with the tenant's real schema or run the query through the ORM/Core table "
         "objects."),
    Rule("unqualified-tenant-table", "raw SQL names a tenant table without a schema",
         "raw SQL names the tenant table {table} without a schema, so it reads whatever schema the pooled "
         "connection's search_path points at; qualify it with the tenant's schema or run the query through "
         "the mapped table."),
    Rule("unqualified-after-set-search-path", "raw SQL relies on a session SET search_path",
         "raw SQL names the tenant table {table} without a schema and relies on the SET search_path at {where}: "
         "it breaks (\"relation does not exist\") or reads another tenant's rows once that is removed or the "
         "pooled connection carries someone else's search_path; qualify it with the tenant's schema or run the "
         "query through the mapped table."),
    Rule("model-missing-placeholder", "a tenant model without the tenant placeholder",
         "{model} has no schema but looks per tenant ({evidence}), so the translate map never reaches it and it "
         "follows search_path; give it {fix}."),
    Rule("model-scope-unclear", "a model without a schema, neither clearly shared nor per tenant",
         "{model} has no schema, so it follows search_path, and the scan cannot tell whether it is shared or per "
         "tenant ({evidence}); name its schema: \"public\" (or your shared schema) if it is shared, the "
         "'{schema}' placeholder if it is per tenant.", gates=False),
    Rule("tenant-fk-to-public", "a foreign key between a tenant table and a shared one",
         "foreign key from {table} to {target} links a tenant table and a shared one, so every tenant's copy "
         "points into one shared table (information: it does not gate).", gates=False),
)}


def message(rule: str, **values: str) -> str:
    return RULES[rule].message.format(**values)


@dataclass(frozen=True)
class ScanFinding:
    """One finding at ``path:line``: its rule, what to do, the source line, where it sits and whether it gates."""

    path: str
    line: int
    rule: str
    message: str
    snippet: str = ""
    tag: str = "app"
    gating: bool = True
    table: str | None = None
    #: "path:line" of what the finding depends on: the def a call reaches, the SET a query relies on
    cites: str | None = None


@dataclass(frozen=True)
class NotScanned:
    """A file the scan could not read: a limit of the scan, not a finding, and never gating."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """Everything one scan found, over one or more PATHs."""

    paths: list[str]
    files: int = 0
    findings: list[ScanFinding] = field(default_factory=list)
    not_scanned: list[NotScanned] = field(default_factory=list)
    tenant_tables: list[str] = field(default_factory=list)
    #: where the tenant tables came from ("--models app.db:Base", "mapped classes in the scanned code"), or ""
    tables_from: str = ""
    #: the folder the relative paths are relative to (the working folder of the scan)
    base: str = ""
    #: mapped classes in the scanned code that --models does not import: "Name (path:line)"
    models_unseen: list[str] = field(default_factory=list)
    #: models without a schema beside placeholder models that the evidence says are shared: "Name (table,
    #: path:line: why)"
    shared_models: list[str] = field(default_factory=list)

    @property
    def gating(self) -> list[ScanFinding]:
        return [f for f in self.findings if f.gating]

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        return summarize(self.findings)

    def as_json(self) -> dict[str, Any]:
        return scan_json(self.paths, self.findings, self)


def scan_json(paths: list[str], findings: Iterable[ScanFinding], record: ScanResult | None = None) -> dict[str, Any]:
    """The ``scan`` value of results.json (and of ``harness scan --json``); ``record`` adds what the scan
    read: ``files``, ``base``, ``tenant_tables``, ``tables_from`` and ``not_scanned``."""
    findings = list(findings)
    data: dict[str, Any] = {"paths": list(paths), "findings": [dataclasses.asdict(f) for f in findings],
                            "summary": summarize(findings)}
    if record is not None:
        data.update(files=record.files, base=record.base, tenant_tables=list(record.tenant_tables),
                    tables_from=record.tables_from, not_scanned=[dataclasses.asdict(n) for n in record.not_scanned],
                    models_unseen=list(record.models_unseen), shared_models=list(record.shared_models))
    return data


def summarize(findings: Iterable[ScanFinding]) -> dict[str, dict[str, dict[str, int]]]:
    """Findings and gating findings counted per rule, per tag and per file, most first."""
    summary: dict[str, dict[str, dict[str, int]]] = {"rules": {}, "tags": {}, "files": {}}
    for finding in findings:
        for group, key in (("rules", finding.rule), ("tags", finding.tag), ("files", finding.path)):
            counts = summary[group].setdefault(key, {"findings": 0, "gating": 0})
            counts["findings"] += 1
            counts["gating"] += finding.gating
    return {group: dict(sorted(counts.items(), key=lambda item: (-item[1]["findings"], item[0])))
            for group, counts in summary.items()}
