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
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

from harness.errors import UsageError

DEFAULT_PLACEHOLDER = "tenant"
UNKNOWN_SCHEMA = "{}"  # a schema the scan cannot know (a name from outside the scanned code)
# Bases that say nothing about which declarative base a class belongs to.
_NEUTRAL_BASES = frozenset({"object", "ABC", "Generic", "Protocol"})
# Folder or module names that say its models are shared (app/models/shared/plans.py, models/public.py): whole
# names only, a word inside one (public_api/, commonmark/) says nothing. No name says tenant: a "tenants"
# package usually holds the shared registry of tenants.
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
    index = _ModelIndex(found, models)
    for model in found:
        if model.schema is not None or not model.roots & index.placeholder_roots:
            continue
        tenant, shared, weak = _scope_evidence(model, index, sql_schemas)
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


class _ModelIndex:
    """The models by root, module, folder and the table their keys name, built once: each model's evidence is
    then a few lookups, so the inference stays linear in the number of models (scanning every model for every
    model took seconds on a few thousand)."""

    def __init__(self, found: list[_Model], models: TenantModels):
        self.models = models
        placeholders = models.placeholders
        #: the declarative bases and MetaData that have placeholder models
        self.placeholder_roots: set[str] = set()
        #: schemas that say shared: public, and the named schemas the models declare that are not the tenant's
        self.shared_schemas = {"public"} | {schema for m in found if (schema := m.schema) is not None
                                            and schema != UNKNOWN_SCHEMA and not models.is_tenant(schema)}
        # Per folder, each module's first placeholder model and first model in a named (shared) schema, in
        # the order of `found`: a module's own are looked up by its path, its package's are the first entry
        # of another module.
        self.tenant_in: dict[str, dict[str, _Model]] = {}
        self.named_in: dict[str, dict[str, _Model]] = {}
        self.in_folder: dict[str, int] = {}
        self.schemaless_in_folder: dict[str, int] = {}
        #: table name -> (model holding the key, the key's target, the schema it names)
        self.keys_to: dict[str, list[tuple[_Model, str, str | None]]] = {}
        for m in found:
            folder = os.path.dirname(m.path)
            self.in_folder[folder] = self.in_folder.get(folder, 0) + 1
            if m.schema is None:
                self.schemaless_in_folder[folder] = self.schemaless_in_folder.get(folder, 0) + 1
            elif m.schema in placeholders:
                self.placeholder_roots |= m.roots
                self.tenant_in.setdefault(folder, {}).setdefault(m.path, m)
            elif m.schema != UNKNOWN_SCHEMA:
                self.named_in.setdefault(folder, {}).setdefault(m.path, m)
            for _, target in m.foreign_keys:
                schema, table = _key_target(target)
                self.keys_to.setdefault(table, []).append((m, target, schema))
        self.root = _common_folder(found)
        self._path_words: dict[str, str | None] = {}

    def beside(self, model: _Model, by_schema: dict[str, dict[str, _Model]]) -> Iterator[tuple[str, _Model]]:
        """The first model of ``by_schema`` in ``model``'s module, then the first in another module of its folder."""
        modules = by_schema.get(os.path.dirname(model.path), {})
        if model.path in modules:
            yield "module", modules[model.path]
        other = next((m for path, m in modules.items() if path != model.path), None)
        if other is not None:
            yield "package", other

    def beside_schemaless_only(self, model: _Model) -> bool:
        """Whether its module and package hold other models, all without a schema (``model`` is one)."""
        folder = os.path.dirname(model.path)
        return self.in_folder[folder] > 1 and self.schemaless_in_folder.get(folder, 0) == self.in_folder[folder]

    def shared_path(self, path: str) -> str | None:
        """Why the path below the scanned folder says shared: a folder or module named exactly a shared word
        (models/shared/plans.py, models/public.py), never a word inside a name (public_api/, commonmark/)."""
        if path not in self._path_words:
            relative = os.path.relpath(os.path.abspath(path), self.root)
            parts = {part.lower() for part in os.path.splitext(relative)[0].split(os.sep)}
            self._path_words[path] = f"its path {relative} says shared" if parts & SHARED_PATH_WORDS else None
        return self._path_words[path]


def _scope_evidence(model: _Model, index: _ModelIndex, sql_schemas: dict[str, set[str | None]]
                    ) -> tuple[list[tuple[str, str]], list[str], bool]:
    """What says ``model`` is per tenant ((reason, placeholder) pairs), what says it is shared (reasons), and
    whether that is only its package's models: weak evidence, weighed only when nothing about the model
    itself speaks (a folder of tenant models may well hold the one shared table; a flat folder says little)."""
    placeholders = index.models.placeholders
    beside_tenant, beside_shared, weak = _sibling_evidence(model, index)
    tenant, shared = ([], []) if weak else (list(beside_tenant), list(beside_shared))
    if model.inherited is not None:
        tenant.append((f"inherits {model.inherited}'s placeholder, which its own __table_args__ hides",
                       min(placeholders)))
    keys_tenant, keys_shared = _key_evidence(model, index)
    tenant += keys_tenant
    shared += keys_shared
    # Raw SQL says shared only in public or a schema the models declare as shared: any other schema may be
    # one tenant's (acme_clinic.invoices in a test or a fixture), which says per tenant if anything.
    for schema in sorted(s for s in sql_schemas.get(model.table, ()) if s not in (None, UNKNOWN_SCHEMA)):
        if schema in placeholders:
            tenant.append((f"raw SQL names {schema}.{model.table}", schema))
        elif schema in index.shared_schemas:
            shared.append(f"raw SQL names {schema}.{model.table}")
    path_says = index.shared_path(model.path)
    if path_says is not None:
        shared.append(path_says)
    if tenant or shared:
        return tenant, shared, False
    return beside_tenant, beside_shared, True


def _sibling_evidence(model: _Model, index: _ModelIndex) -> tuple[list[tuple[str, str]], list[str], bool]:
    """The models beside it, and whether that evidence is weak. Its module's models speak first: one using
    the placeholder makes it a tenant module, one in a named schema (public) a shared one. Failing those, its
    package (the other modules of its folder) speaks the same way, weakly; and beside schema-less models
    only, with no placeholder model in the module or package, it is (weakly) shared like them."""
    tenant = dict(index.beside(model, index.tenant_in))
    named = dict(index.beside(model, index.named_in))
    for where in ("module", "package"):
        if where in tenant:
            return [(f"same {where} as {tenant[where].name}", tenant[where].schema or "")], [], where == "package"
        if where in named:
            return [], [f"same {where} as {named[where].name}, in {named[where].schema}"], where == "package"
    if index.beside_schemaless_only(model):
        return [], ["its module and package hold schema-less models only"], True
    return [], [], False


def _key_evidence(model: _Model, index: _ModelIndex) -> tuple[list[tuple[str, str]], list[str]]:
    """Foreign keys. A shared table cannot point into per-tenant tables, so a key of its own to a tenant table
    says tenant, and a shared table's key to it says shared; tenant tables pointing at it (while it points at
    none) say shared too; a tenant table's key naming it in the placeholder schema says tenant."""
    models = index.models
    targets: dict[str, str] = {}  # its keys into tenant tables: target -> that table's placeholder
    for _, target in model.foreign_keys:
        schema, table = _key_target(target)
        tenant_schemas = sorted(s for s in ({schema} if schema else models.schemas.get(table, set()))
                                if s in models.placeholders)
        if tenant_schemas:
            targets.setdefault(target, tenant_schemas[0])
    tenant = [(f"ForeignKey to {', '.join(targets)}", next(iter(targets.values())))] if targets else []
    own_keys = bool(tenant)
    from_tenant: list[str] = []
    from_shared: dict[str, str] = {}  # shared model -> its schema
    for other, target, schema in index.keys_to.get(model.table, ()):
        if other is model or schema == UNKNOWN_SCHEMA or other.schema is None or other.schema == UNKNOWN_SCHEMA:
            continue
        if models.is_tenant(other.schema):
            if schema in models.placeholders:
                tenant.append((f"{other.name}'s ForeignKey names {target}", schema))
            else:
                from_tenant.append(other.name)
        elif schema not in models.placeholders:  # a shared table's key into the placeholder is its own mistake
            from_shared.setdefault(other.name, other.schema)
    shared = ([f"tenant table {', '.join(dict.fromkeys(from_tenant))} points at it"]
              if from_tenant and not own_keys else [])
    # Unlike a tenant table's key, a shared table's key to it speaks even against its own keys into tenant
    # tables: both cannot hold, and the scan says so rather than pick one.
    if from_shared:
        shared.append(f"shared table {', '.join(f'{name} ({schema})' for name, schema in from_shared.items())} "
                      "points at it")
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
