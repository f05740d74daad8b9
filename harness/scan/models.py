"""Which tables are tenant tables: from the team's metadata, or read from the mapped classes in the code.

A raw query naming ``products`` without a schema leaks only if ``products`` is a
tenant table, so the scan needs the tenant tables. They come from
``--models package.module:attr`` (a MetaData or a declarative Base) when the
models can be imported; otherwise from the source itself: mapped classes
(``__tablename__`` with ``__table_args__``, inherited from mixins and abstract
bases), ``Table("name", metadata, ..., schema=...)`` and ``MetaData(schema=...)``.

The translate map decides which schema is the tenant's: its string keys are the
placeholder schemas (``"tenant"`` when the code has no map), and a map keyed on
None makes the tables *without* a schema the tenant tables.

A model without a schema beside placeholder models is not necessarily a tenant
table that forgot the placeholder: the shared tables (plans, the tenant registry)
often live in ``public`` through search_path. Its intended scope is inferred from
evidence (:func:`_scope_evidence`), and only a model the evidence says is per
tenant is told to take the placeholder.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

from harness.errors import UsageError

DEFAULT_PLACEHOLDER = "tenant"
UNKNOWN_SCHEMA = "{}"  # a schema the scan cannot know (a name from outside the scanned code)
# Bases that say nothing about which declarative base a class belongs to.
_NEUTRAL_BASES = frozenset({"object", "ABC", "Generic", "Protocol"})
# Words of a module or package path that say its models are shared (app/models/shared/plans.py, models/public.py).
# No word says tenant: a "tenants" package usually holds the shared registry of tenants.
SHARED_PATH_WORDS = frozenset({"shared", "public", "common", "global"})


@dataclass
class MappedClass:
    """A class statement as the model reader needs it; ``tablename`` is None for bases and mixins."""

    path: str
    line: int
    name: str
    bases: tuple[str, ...]
    tablename: str | None = None
    has_table_args: bool = False
    table_args_schema: str | None = None
    table_args_name: str | None = None  # __table_args__ = NAME, NAME imported from another module
    metadata_schema: str | None = None
    foreign_keys: list[tuple[int, str]] = field(default_factory=list)
    snippet: str = ""


@dataclass
class CoreTable:
    """``Table("name", metadata, ..., schema=...)``."""

    path: str
    line: int
    name: str
    metadata: str | None
    schema: str | None
    has_schema: bool
    foreign_keys: list[tuple[int, str]] = field(default_factory=list)
    snippet: str = ""


@dataclass
class ModelFacts:
    """What one module says about models and the translate map."""

    classes: list[MappedClass] = field(default_factory=list)
    tables: list[CoreTable] = field(default_factory=list)
    #: module-level names bound to MetaData(schema=...) / declarative_base(metadata=MetaData(schema=...))
    metadata: dict[str, str | None] = field(default_factory=dict)
    declarative: dict[str, str | None] = field(default_factory=dict)
    #: module-level dicts and tuples (a shared ``__table_args__``): name -> their "schema"
    table_args: dict[str, str | None] = field(default_factory=dict)
    translate_keys: set[str | None] = field(default_factory=set)


@dataclass(frozen=True)
class ModelIssue:
    """A finding about models, before it is tagged: ``rule`` at ``path:line``."""

    path: str
    line: int
    rule: str
    values: dict[str, str]
    table: str
    snippet: str


class SharedModel(NamedTuple):
    """A model without a schema beside placeholder models that the evidence says is shared (``reason``):
    it follows search_path to the shared schema by design, so it is listed, not flagged."""

    path: str
    line: int
    name: str
    table: str
    reason: str


@dataclass
class TenantModels:
    """The project's tables and schemas, and what makes a schema the tenant's."""

    placeholders: frozenset[str]
    none_keyed: bool
    schemas: dict[str, set[str | None]]  # table name -> the schemas it is declared in
    issues: list[ModelIssue]
    mapped: int  # mapped classes and Core tables read from the source
    shared: list[SharedModel] = field(default_factory=list)

    def is_tenant(self, schema: str | None) -> bool:
        return schema in self.placeholders or (schema is None and self.none_keyed)

    def tenant_tables(self) -> set[str]:
        return {name for name, schemas in self.schemas.items() if any(self.is_tenant(s) for s in schemas)}


@dataclass
class _Model:
    """A mapped class or a Core table with its schema resolved: what the scope inference weighs."""

    path: str
    line: int
    name: str  # Invoice, Table('audit')
    label: str  # mapped class Invoice (table invoices), Table('audit')
    table: str
    schema: str | None
    roots: frozenset[str]  # its declarative bases, or its MetaData: the models it is a sibling of
    foreign_keys: list[tuple[int, str]]
    snippet: str
    fix: str  # how it names a schema: a template on {schema}
    inherited: str | None = None  # the mixin or base whose placeholder its own __table_args__ drops


def read_models(facts: Iterable[ModelFacts], sql_schemas: dict[str, set[str | None]] | None = None) -> TenantModels:
    """Resolve every module's facts together: schemas through inheritance, siblings, foreign keys.
    ``sql_schemas`` (table name -> the schemas raw SQL qualifies it with) is evidence of a model's scope."""
    facts = list(facts)
    keys = {key for fact in facts for key in fact.translate_keys}
    placeholders = frozenset(k for k in keys if isinstance(k, str)) or (
        frozenset() if None in keys else frozenset({DEFAULT_PLACEHOLDER}))
    none_keyed = None in keys
    classes: dict[str, MappedClass] = {}
    for fact in facts:
        for cls in fact.classes:
            classes.setdefault(cls.name, cls)
    declarative = {name: schema for fact in facts for name, schema in fact.declarative.items()}
    metadata = {name: schema for fact in facts for name, schema in fact.metadata.items()}
    shared_args = {name: schema for fact in facts for name, schema in fact.table_args.items()}
    for cls in (cls for fact in facts for cls in fact.classes):
        if cls.table_args_name is not None:
            # Not found anywhere: the schema is unknown, neither tenant nor missing.
            cls.table_args_schema = shared_args.get(cls.table_args_name, UNKNOWN_SCHEMA)
    hierarchy = _Hierarchy(classes, declarative)

    schemas: dict[str, set[str | None]] = {}
    found: list[_Model] = []
    for fact in facts:
        for cls in fact.classes:
            if cls.tablename is not None:
                found.append(_mapped_model(cls, hierarchy, placeholders))
        for table in fact.tables:
            schema = table.schema if table.has_schema else metadata.get(table.metadata or "")
            found.append(_Model(table.path, table.line, f"Table({table.name!r})", f"Table({table.name!r})",
                                table.name, schema, frozenset({f"MetaData {table.metadata}"} if table.metadata else ()),
                                table.foreign_keys, table.snippet, 'schema="{schema}"'))
    for model in found:
        schemas.setdefault(model.table, set()).add(model.schema)
    models = TenantModels(placeholders, none_keyed, schemas, [], len(found))
    models.issues.extend(_missing_placeholders(models, found, sql_schemas or {}))
    # A model judged per tenant (or unclear) is already told to name its schema: its keys into tenant
    # tables are that same finding, not a second one.
    judged = {(issue.path, issue.line) for issue in models.issues}
    models.issues.extend(_crossing_keys(models, [m for m in found if (m.path, m.line) not in judged]))
    return models


def _mapped_model(cls: MappedClass, hierarchy: _Hierarchy, placeholders: frozenset[str]) -> _Model:
    """A mapped class as a model: a class that already has ``__table_args__`` adds the schema to them."""
    fix = ('"schema": "{schema}" in its __table_args__' if cls.has_table_args
           else '__table_args__ = {{"schema": "{schema}"}}')
    return _Model(cls.path, cls.line, cls.name, f"mapped class {cls.name} (table {cls.tablename})",
                  cls.tablename or "", hierarchy.schema(cls), hierarchy.roots(cls), cls.foreign_keys, cls.snippet,
                  fix, hierarchy.placeholder_from(cls, placeholders))


class _Hierarchy:
    """Class inheritance by name across the scanned code (mixins, abstract bases, declarative bases)."""

    def __init__(self, classes: dict[str, MappedClass], declarative: dict[str, str | None]):
        self.classes, self.declarative = classes, declarative

    def ancestors(self, cls: MappedClass) -> Iterator[MappedClass]:
        """``cls`` and the classes it inherits from that are in the scanned code, depth first."""
        seen, stack = set(), [cls]
        while stack:
            current = stack.pop(0)
            if current.name in seen:
                continue
            seen.add(current.name)
            yield current
            stack[:0] = [self.classes[b] for b in current.bases if b in self.classes and b not in seen]

    def schema(self, cls: MappedClass) -> str | None:
        for ancestor in self.ancestors(cls):  # __table_args__ is inherited like any class attribute
            if ancestor.has_table_args:
                if ancestor.table_args_schema is not None:
                    return ancestor.table_args_schema
                break
        for ancestor in self.ancestors(cls):  # then the declarative base's MetaData(schema=...)
            if ancestor.metadata_schema is not None:
                return ancestor.metadata_schema
            for base in ancestor.bases:
                if self.declarative.get(base) is not None:
                    return self.declarative[base]
        return None

    def placeholder_from(self, cls: MappedClass, placeholders: frozenset[str]) -> str | None:
        """The mixin or base ``cls`` inherits a placeholder ``__table_args__`` from (its own then hides it)."""
        return next((ancestor.name for ancestor in self.ancestors(cls)
                     if ancestor is not cls and ancestor.table_args_schema in placeholders), None)

    def roots(self, cls: MappedClass) -> frozenset[str]:
        """The declarative bases ``cls`` belongs to: its siblings are the classes sharing one."""
        # A name bound to declarative_base(), or the in-project class that subclasses something from
        # outside the scanned code (Base(DeclarativeBase)); failing those, the outside bases themselves
        # (a Base imported from a module that was not scanned).
        inner: set[str] = set()
        for ancestor in self.ancestors(cls):
            inner.update(base for base in ancestor.bases if base in self.declarative)
            if ancestor is not cls and any(self._outside(base) for base in ancestor.bases):
                inner.add(ancestor.name)
        return frozenset(inner or (base for base in cls.bases if self._outside(base)))

    def _outside(self, base: str) -> bool:
        return base not in self.classes and base not in self.declarative and base not in _NEUTRAL_BASES


def _missing_placeholders(models: TenantModels, found: list[_Model],
                          sql_schemas: dict[str, set[str | None]]) -> Iterator[ModelIssue]:
    """Models without a schema whose declarative base (or MetaData) has placeholder models: told to take the
    placeholder only when the evidence says per tenant; listed as shared when it says shared; otherwise told
    that the scan cannot tell, and to name either schema."""
    if models.none_keyed:
        return  # schema-less models are this code base's tenant tables
    root = _common_folder(found)
    for model in found:
        if model.schema is not None or not any(
                other.schema in models.placeholders and other.roots & model.roots for other in found):
            continue
        tenant, shared, weak = _scope_evidence(model, found, models, sql_schemas, root)
        placeholder = tenant[0][1] if tenant else min(models.placeholders)
        values = {"model": model.label, "fix": model.fix.format(schema=placeholder), "schema": placeholder}
        if weak and tenant and not shared:  # only its package says per tenant: not enough to gate
            evidence = f"only its package says per tenant: {'; '.join(reason for reason, _ in tenant)}"
            yield ModelIssue(model.path, model.line, "model-scope-unclear", dict(values, evidence=evidence),
                             model.table, model.snippet)
        elif tenant and not shared:
            yield ModelIssue(model.path, model.line, "model-missing-placeholder",
                             dict(values, evidence="; ".join(reason for reason, _ in tenant)),
                             model.table, model.snippet)
        elif shared and not tenant:
            models.shared.append(SharedModel(model.path, model.line, model.name, model.table, "; ".join(shared)))
        else:
            evidence = (f"per tenant: {'; '.join(reason for reason, _ in tenant)}; shared: {'; '.join(shared)}"
                        if tenant else "nothing in its module, package, path or foreign keys says which")
            yield ModelIssue(model.path, model.line, "model-scope-unclear", dict(values, evidence=evidence),
                             model.table, model.snippet)


def _scope_evidence(model: _Model, found: list[_Model], models: TenantModels,
                    sql_schemas: dict[str, set[str | None]], root: str
                    ) -> tuple[list[tuple[str, str]], list[str], bool]:
    """What says ``model`` is per tenant ((reason, placeholder) pairs), what says it is shared (reasons), and
    whether that is only its package's models: weak evidence, weighed only when nothing about the model
    itself speaks (a folder of tenant models may well hold the one shared table; a flat folder says little)."""
    beside_tenant, beside_shared, weak = _sibling_evidence(model, found, models.placeholders)
    tenant, shared = ([], []) if weak else (list(beside_tenant), list(beside_shared))
    if model.inherited is not None:
        tenant.append((f"inherits {model.inherited}'s placeholder, which its own __table_args__ hides",
                       min(models.placeholders)))
    keys_tenant, keys_shared = _key_evidence(model, found, models)
    tenant += keys_tenant
    shared += keys_shared
    for schema in sorted(s for s in sql_schemas.get(model.table, ()) if s not in (None, UNKNOWN_SCHEMA)):
        if schema in models.placeholders:
            tenant.append((f"raw SQL names {schema}.{model.table}", schema))
        else:
            shared.append(f"raw SQL names {schema}.{model.table}")
    relative = os.path.relpath(os.path.abspath(model.path), root)
    if {word for part in os.path.splitext(relative)[0].split(os.sep)
            for word in re.split(r"[_.\-]", part.lower())} & SHARED_PATH_WORDS:
        shared.append(f"its path {relative} says shared")
    if tenant or shared:
        return tenant, shared, False
    return beside_tenant, beside_shared, True


def _sibling_evidence(model: _Model, found: list[_Model],
                      placeholders: frozenset[str]) -> tuple[list[tuple[str, str]], list[str], bool]:
    """The models beside it, and whether that evidence is weak. Its module's models speak first: one using
    the placeholder makes it a tenant module, one in a named schema (public) a shared one. Failing those, its
    package (the other modules of its folder) speaks the same way, weakly; and beside schema-less models
    only, with no placeholder model in the module or package, it is (weakly) shared like them."""
    module = [m for m in found if m is not model and m.path == model.path]
    package = [m for m in found if m.path != model.path and os.path.dirname(m.path) == os.path.dirname(model.path)]
    for where, siblings in (("module", module), ("package", package)):
        tenant = next((m for m in siblings if m.schema in placeholders), None)
        if tenant is not None:
            return [(f"same {where} as {tenant.name}", tenant.schema or "")], [], where == "package"
        named = next((m for m in siblings if m.schema not in (None, UNKNOWN_SCHEMA)), None)
        if named is not None:
            return [], [f"same {where} as {named.name}, in {named.schema}"], where == "package"
    if module + package and all(m.schema is None for m in module + package):
        return [], ["its module and package hold schema-less models only"], True
    return [], [], False


def _key_evidence(model: _Model, found: list[_Model],
                  models: TenantModels) -> tuple[list[tuple[str, str]], list[str]]:
    """Foreign keys. A shared table cannot point into per-tenant tables, so a key of its own to a tenant table
    says tenant; tenant tables pointing at it (while it points at none) say shared; a key naming it in the
    placeholder schema says tenant."""
    targets: dict[str, str] = {}  # its keys into tenant tables: target -> that table's placeholder
    for _, target in model.foreign_keys:
        schema, table = _key_target(target)
        tenant_schemas = sorted(s for s in ({schema} if schema else models.schemas.get(table, set()))
                                if s in models.placeholders)
        if tenant_schemas:
            targets.setdefault(target, tenant_schemas[0])
    tenant = [(f"ForeignKey to {', '.join(targets)}", next(iter(targets.values())))] if targets else []
    own_keys, pointing = bool(tenant), []
    for other in found:
        if other is model or not models.is_tenant(other.schema):
            continue
        for _, target in other.foreign_keys:
            schema, table = _key_target(target)
            if table != model.table or schema == UNKNOWN_SCHEMA:
                continue
            if schema in models.placeholders:
                tenant.append((f"{other.name}'s ForeignKey names {target}", schema))
            else:
                pointing.append(other.name)
    shared = [f"tenant table {', '.join(dict.fromkeys(pointing))} points at it"] if pointing and not own_keys else []
    return tenant, shared


def _key_target(target: str) -> tuple[str | None, str]:
    """``schema.table.column`` or ``table.column``: its schema (None when it names none) and its table."""
    parts = target.split(".")
    return (parts[-3] if len(parts) >= 3 else None), (parts[-2] if len(parts) >= 2 else "")


def _common_folder(found: list[_Model]) -> str:
    """The folder every model file sits in: only the path below it says anything about a model (the checkout
    may well sit in /srv/shared/)."""
    folders = {os.path.dirname(os.path.abspath(model.path)) for model in found}
    return os.path.commonpath(list(folders)) if folders else os.getcwd()


def _crossing_keys(models: TenantModels, found: list[_Model]) -> Iterator[ModelIssue]:
    """Foreign keys from a tenant table to a shared one (or back): information for the report."""
    for model in found:
        for line, target in model.foreign_keys:
            parts = target.split(".")
            if len(parts) >= 3:
                target_schemas: set[str | None] = {parts[-3]}
            else:
                target_schemas = models.schemas.get(parts[0], set()) if len(parts) == 2 else set()
            if not target_schemas:
                continue  # a table the scan does not know
            if model.schema == UNKNOWN_SCHEMA or UNKNOWN_SCHEMA in target_schemas:
                continue
            source_tenant = models.is_tenant(model.schema)
            if any(models.is_tenant(s) != source_tenant for s in target_schemas):
                yield ModelIssue(model.path, line, "tenant-fk-to-public", {"table": model.table, "target": target},
                                 model.table, model.snippet)


def load_metadata(spec: str):
    """The MetaData of ``package.module:attr`` (a MetaData or a declarative Base), imported from the working folder."""
    from sqlalchemy import MetaData

    from harness.config import put_first_on_sys_path

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--models {spec!r} is not of the form package.module:attr.",
                         fix=["for example --models app.models:Base"])
    put_first_on_sys_path([os.getcwd()])
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - any import-time failure is the user's to fix
        raise UsageError(f"--models {spec!r} could not be imported: {type(exc).__name__}: {exc}.",
                         fix=["run the scan from the folder your application is imported from",
                              "or leave --models out: the scan then reads the mapped classes from the source"]) from exc
    found = getattr(target, "metadata", target)
    if not isinstance(found, MetaData):
        raise UsageError(f"--models {spec!r} is a {type(target).__name__}, not a MetaData or a declarative base.",
                         fix=["point it at a MetaData or a declarative Base"])
    return found


def metadata_schemas(metadata) -> dict[str, set[str | None]]:
    """Table name -> schemas, from a MetaData."""
    schemas: dict[str, set[str | None]] = {}
    for table in metadata.tables.values():
        schemas.setdefault(table.name, set()).add(table.schema)
    return schemas
