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
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from harness.errors import UsageError

DEFAULT_PLACEHOLDER = "tenant"
UNKNOWN_SCHEMA = "{}"  # a schema the scan cannot know (a name from outside the scanned code)
# Bases that say nothing about which declarative base a class belongs to.
_NEUTRAL_BASES = frozenset({"object", "ABC", "Generic", "Protocol"})


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


@dataclass
class TenantModels:
    """The project's tables and schemas, and what makes a schema the tenant's."""

    placeholders: frozenset[str]
    none_keyed: bool
    schemas: dict[str, set[str | None]]  # table name -> the schemas it is declared in
    issues: list[ModelIssue]
    mapped: int  # mapped classes and Core tables read from the source

    def is_tenant(self, schema: str | None) -> bool:
        return schema in self.placeholders or (schema is None and self.none_keyed)

    def tenant_tables(self) -> set[str]:
        return {name for name, schemas in self.schemas.items() if any(self.is_tenant(s) for s in schemas)}


def read_models(facts: Iterable[ModelFacts]) -> TenantModels:
    """Resolve every module's facts together: schemas through inheritance, siblings, foreign keys."""
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
    mapped: list[tuple[MappedClass, str | None, frozenset[str]]] = []
    for fact in facts:
        for cls in fact.classes:
            if cls.tablename is not None:
                schema = hierarchy.schema(cls)
                schemas.setdefault(cls.tablename, set()).add(schema)
                mapped.append((cls, schema, hierarchy.roots(cls)))
        for table in fact.tables:
            schema = table.schema if table.has_schema else metadata.get(table.metadata or "")
            schemas.setdefault(table.name, set()).add(schema)
    models = TenantModels(placeholders, none_keyed, schemas, [], len(mapped) + sum(len(f.tables) for f in facts))
    models.issues.extend(_missing_placeholders(models, mapped, [t for f in facts for t in f.tables], metadata))
    models.issues.extend(_crossing_keys(models, mapped, [t for f in facts for t in f.tables], metadata))
    return models


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


def _missing_placeholders(models: TenantModels, mapped: list[tuple[MappedClass, str | None, frozenset[str]]],
                          tables: list[CoreTable], metadata: dict[str, str | None]) -> Iterator[ModelIssue]:
    """Mapped classes (and Core tables) without a schema next to siblings that use the placeholder."""
    if models.none_keyed:
        return  # schema-less models are this code base's tenant tables
    for cls, schema, roots in mapped:
        if schema is not None:
            continue
        sibling = next((s for other, s, other_roots in mapped
                        if s in models.placeholders and other_roots & roots), None)
        if sibling is not None:
            yield ModelIssue(cls.path, cls.line, "model-missing-placeholder",
                             {"name": cls.name, "table": cls.tablename or "", "schema": sibling},
                             cls.tablename or "", cls.snippet)
    for table in tables:
        schema = table.schema if table.has_schema else metadata.get(table.metadata or "")
        if schema is not None or table.metadata is None:
            continue
        sibling = next((t.schema for t in tables if t.metadata == table.metadata and t.schema in models.placeholders),
                       None)
        if sibling is not None:
            yield ModelIssue(table.path, table.line, "model-missing-placeholder",
                             {"name": f"Table({table.name!r})", "table": table.name, "schema": sibling},
                             table.name, table.snippet)


def _crossing_keys(models: TenantModels, mapped: list[tuple[MappedClass, str | None, frozenset[str]]],
                   tables: list[CoreTable], metadata: dict[str, str | None]) -> Iterator[ModelIssue]:
    """Foreign keys from a tenant table to a shared one (or back): information for the report."""
    owners = [(cls.path, cls.tablename or "", schema, cls.foreign_keys, cls.snippet) for cls, schema, _ in mapped]
    owners += [(t.path, t.name, t.schema if t.has_schema else metadata.get(t.metadata or ""), t.foreign_keys,
                t.snippet) for t in tables]
    for path, name, schema, keys, snippet in owners:
        for line, target in keys:
            parts = target.split(".")
            if len(parts) >= 3:
                target_schemas: set[str | None] = {parts[-3]}
            else:
                target_schemas = models.schemas.get(parts[0], set()) if len(parts) == 2 else set()
            if not target_schemas:
                continue  # a table the scan does not know
            if schema == UNKNOWN_SCHEMA or UNKNOWN_SCHEMA in target_schemas:
                continue
            source_tenant = models.is_tenant(schema)
            if any(models.is_tenant(s) != source_tenant for s in target_schemas):
                yield ModelIssue(path, line, "tenant-fk-to-public", {"table": name, "target": target},
                                 name, snippet)


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
