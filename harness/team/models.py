"""The team's own tables: which are tenant tables, their mapped classes, and canary rows.

A **canary** row carries values unique to the tenant whose schema holds it
(strings and JSON name the tenant's tag, numbers and dates are offset by the
tenant's number), while every tenant gets the same primary keys, as the
harness's own tables do. Values follow each column's type and length, NOT NULL,
unique and foreign-key constraints: a foreign key points at the row with the
same number in the referenced table of the same schema, so the harness seeds
tables in dependency order.

Canaries are live rows: a soft-delete column (a nullable ``deleted_at``, an
``is_deleted`` or ``archived`` flag) gets the value the application's own
filters keep (``deleted_at IS NULL``, ``is_deleted = false``), so the team's
read path returns them.

A real application's Base names types its metadata does not create: enums and
domains declared ``create_type=False`` (its migrations create them), user-defined
and extension types. The harness creates the first kind for the test copies
(:func:`named_types`: it knows their labels); the second kind
(:func:`undescribed_types`) must come from ``--schema-sql``, else the run is
refused before any server starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import ipaddress
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import JSON, MetaData, Table, UniqueConstraint, types
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.named_types import NamedType
from sqlalchemy.sql.schema import Column

from harness.errors import UsageError
from harness.tenancy.tenants import PLACEHOLDER_SCHEMA

# Rows of every tenant table in every schema: at least as many as a generated program has clients, so
# each client updates a row of its own (the runner runs one step at a time: two clients' updates of one
# row would wait on each other for ever).
CANARY_ROWS = 8
SHARED_OWNER = "shared"  # whose rows the team's shared (non-tenant) tables get
SEQUENCE_START = 1_000_000  # serial/identity columns continue from here, above anything the harness writes
_EPOCH = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
# Soft-delete and liveness columns, by the names applications give them: the value a canary gets is the one
# the application's default filters keep (deleted_at IS NULL, is_deleted = false, is_active = true).
_GONE = re.compile(r"(is_)?(deleted|archived|removed|trashed|discarded|disabled|deactivated|hidden)"
                   r"(_at|_on|_date|_time|_ts)?")
_LIVE = re.compile(r"(is_)?(active|enabled|visible)")
# The dialect the team's types are described for before any server starts (types map the same on every
# PostgreSQL driver).
_DIALECT = postgresql.dialect()
# Types PostgreSQL ships only in an extension: the package a --schema-sql must create.
EXTENSION_TYPES = {"citext": "citext", "hstore": "hstore", "ltree": "ltree", "geometry": "postgis",
                   "geography": "postgis", "vector": "vector", "cube": "cube", "isbn": "isn"}


def tenant_tag(owner: str) -> str:
    """A short, name-safe tag unique to an owner: the canary marker in its strings."""
    return "c" + hashlib.sha1(owner.encode()).hexdigest()[:7]


def _owner_number(owner: str) -> int:
    return int(hashlib.sha1(owner.encode()).hexdigest()[:6], 16) % 9000 + 1


class CanaryError(UsageError):
    pass


def _string(tag: str, row: int, length: int | None) -> str:
    text = f"{tag}-{row}"
    if length is None or len(text) <= length:
        return text
    suffix = str(row)
    return (tag[: max(0, length - len(suffix))] + suffix)[-length:] if length else ""


def _number(column: Column, owner: str, row: int, key: bool) -> int:
    """Keys are the row number (the same in every schema); other numbers carry the owner's number."""
    if key:
        return row
    value = _owner_number(owner) * 1000 + row
    if isinstance(column.type, types.SmallInteger):
        value %= 32000
    return value


_BY_PYTHON_TYPE = {datetime.datetime: lambda: types.DateTime(timezone=True), datetime.date: types.Date,
                   decimal.Decimal: types.Numeric, int: types.Integer, str: types.String, bool: types.Boolean,
                   datetime.timedelta: types.Interval}  # sa.Interval is itself a TypeDecorator of DateTime
# Numeric and Float share NumericCommon from SQLAlchemy 2.1 on (Float is no longer a Numeric there).
_NUMBERS = getattr(types, "NumericCommon", types.Numeric)


def soft_delete_value(column: Column) -> tuple[bool, Any]:
    """(True, value) when ``column`` is a soft-delete or liveness column the application's filters test,
    with the value that keeps a row visible; (False, None) for any other column."""
    if column.primary_key or column.foreign_keys:
        return False, None
    name = column.name.lower()
    kind = _plain(column.type)
    if _GONE.fullmatch(name):
        if isinstance(kind, (types.Boolean, types.Integer)):
            return True, False if isinstance(kind, types.Boolean) else 0
        if isinstance(kind, (types.DateTime, types.Date)) and column.nullable:
            return True, None  # the filter is "IS NULL"
    if _LIVE.fullmatch(name) and isinstance(kind, types.Boolean):
        return True, True
    return False, None


def _plain(kind: types.TypeEngine) -> types.TypeEngine:
    """The type a TypeDecorator or a variant stands for on PostgreSQL."""
    kind = kind.dialect_impl(_DIALECT)
    while isinstance(kind, types.TypeDecorator):
        kind = kind.impl_instance.dialect_impl(_DIALECT)
    return kind


def canary_value(column: Column, owner: str, row: int, *, key: bool) -> Any:
    """A value of ``column``'s type for row ``row`` of ``owner``; ``key``: part of the primary key."""
    if not key:
        soft, value = soft_delete_value(column)
        if soft:
            return value
    kind = column.type
    tag = tenant_tag(owner)
    if isinstance(kind, types.TypeDecorator):
        # A decorator (the GUID recipe, a tz-aware DateTime) binds values of its Python type: build one
        # of those when it says which, else a value of the type it wraps.
        try:
            python_type = kind.python_type
        except NotImplementedError:
            python_type = None
        if python_type is uuid.UUID:
            kind = types.Uuid()
        elif python_type is not None and python_type in _BY_PYTHON_TYPE:
            kind = _BY_PYTHON_TYPE[python_type]()
        else:
            kind = kind.impl_instance
        original, column = column, Column(column.name, kind, nullable=column.nullable,
                                          primary_key=column.primary_key)
        column.table = original.table  # type: ignore[attr-defined]
    if isinstance(kind, postgresql.DOMAIN):  # a value of the type it constrains
        base = Column(column.name, kind.data_type, nullable=column.nullable)
        base.table = column.table  # type: ignore[attr-defined]
        return canary_value(base, owner, row, key=key)
    if isinstance(kind, types.Enum) and kind.enums:
        return kind.enums[row % len(kind.enums)]
    if isinstance(kind, types.Boolean):
        return row % 2 == 1
    if isinstance(kind, types.Integer):
        return _number(column, owner, row, key)
    if isinstance(kind, _NUMBERS):
        scale = getattr(kind, "scale", None) or 0
        precision = getattr(kind, "precision", None)
        whole = _number(column, owner, row, key)
        if precision:
            whole %= max(1, 10 ** (precision - scale) - 1)
        return float(whole) if isinstance(kind, types.Float) else decimal.Decimal(whole)
    if isinstance(kind, types.Uuid):
        seed = f"{column.table.name}/{row}" if key else f"{owner}/{column.table.name}/{column.name}/{row}"
        value = uuid.uuid5(uuid.NAMESPACE_URL, seed)
        return value if getattr(kind, "as_uuid", True) else str(value)
    if isinstance(kind, types.DateTime):
        moment = _EPOCH + datetime.timedelta(days=0 if key else _owner_number(owner), seconds=row)
        return moment if getattr(kind, "timezone", False) else moment.replace(tzinfo=None)
    if isinstance(kind, types.Date):
        return (_EPOCH + datetime.timedelta(days=(0 if key else _owner_number(owner)) + row)).date()
    if isinstance(kind, types.Time):
        return datetime.time(hour=row % 24, minute=_owner_number(owner) % 60,
                             tzinfo=datetime.timezone.utc if getattr(kind, "timezone", False) else None)
    if isinstance(kind, types.Interval):
        return datetime.timedelta(seconds=_owner_number(owner) * 1000 + row)
    if isinstance(kind, JSON):
        return {"canary": tag, "row": row}
    if isinstance(kind, types.ARRAY):
        item = Column(column.name, kind.item_type)
        item.table = column.table  # type: ignore[attr-defined]
        value: Any = canary_value(item, owner, row, key=False)
        for _ in range(kind.dimensions or 1):  # ARRAY(Integer, dimensions=2) takes a list of lists
            value = [value]
        return value
    if isinstance(kind, postgresql.HSTORE):
        return {"canary": tag, "row": str(row)}
    if isinstance(kind, (postgresql.INET, postgresql.CIDR)):
        number = _owner_number(owner)
        network = ipaddress.ip_network(f"10.{number // 256 % 256}.{number % 256}.0/24")
        return str(network) if isinstance(kind, postgresql.CIDR) else str(network[row % 254 + 1])
    if isinstance(kind, types.LargeBinary):
        return f"{tag}-{row}".encode()
    if isinstance(kind, (types.String, types.Text)):
        return _string(tag if not key else "k", row, getattr(kind, "length", None))
    if column.nullable or column.server_default is not None or column.default is not None:
        return None
    raise CanaryError(f"The harness cannot make a canary value for {column.table.name}.{column.name} "
                      f"(type {kind!r}, NOT NULL, no default).",
                      fix=["give the column a server default, make it nullable, or use a standard "
                           "SQLAlchemy type"])


# -- types the metadata names ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TypeUse:
    """A type of the team's tables that PostgreSQL does not ship, with the columns that use it."""

    kind: types.TypeEngine  # as PostgreSQL sees it (a TypeDecorator unwrapped, sa.Enum as postgresql.ENUM)
    name: str  # as DDL names it; a type of the tenant schema is named tenant.<name>
    columns: tuple[str, ...]  # table.column

    @property
    def where(self) -> str:
        """The type and its columns, for messages."""
        return f"{self.name} (used by {', '.join(self.columns)})"


def _leaves(kind: types.TypeEngine) -> Iterator[types.TypeEngine]:
    """The types PostgreSQL sees in a column type: an array's items, a domain's base type before the
    domain, a TypeDecorator's or a variant's PostgreSQL type."""
    kind = _plain(kind)
    if isinstance(kind, types.ARRAY):
        yield from _leaves(kind.item_type)
    elif isinstance(kind, postgresql.DOMAIN):
        yield from _leaves(kind.data_type)
        yield kind
    else:
        yield kind


def _type_name(kind: types.TypeEngine) -> str:
    if isinstance(kind, types.NullType):
        return "(no type)"
    try:
        return _DIALECT.type_compiler_instance.process(kind)
    except Exception:  # noqa: BLE001 - a type that does not render: name its class
        return type(kind).__name__


def _describable(kind: types.TypeEngine) -> bool:
    """PostgreSQL ships the type, or the metadata says all it takes to create it (an enum, a domain)."""
    if isinstance(kind, NamedType):
        return True
    if isinstance(kind, (types.UserDefinedType, types.NullType, postgresql.CITEXT, postgresql.HSTORE)):
        return False
    # SQLAlchemy's own types are PostgreSQL's built-in ones; a class from elsewhere (geoalchemy2, pgvector)
    # is an extension's.
    return type(kind).__module__.startswith("sqlalchemy.")


def _type_uses(metadata: MetaData, keep: Any) -> list[TypeUse]:
    """The types ``keep(kind)`` selects among every column's types, once each, in first-use order."""
    found: dict[str, tuple[types.TypeEngine, list[str]]] = {}
    for table in metadata.sorted_tables:
        for column in table.columns:
            for kind in _leaves(column.type):
                if keep(kind):
                    name = _type_name(kind)
                    uses = found.setdefault(name, (kind, []))[1]
                    if f"{table.name}.{column.name}" not in uses:
                        uses.append(f"{table.name}.{column.name}")
    return [TypeUse(kind, name, tuple(uses)) for name, (kind, uses) in found.items()]


def type_uses(metadata: MetaData, name: str) -> list[TypeUse]:
    """The types of the metadata's columns that DDL names ``name`` (with or without their schema)."""
    def bare(text: str) -> str:
        return text.split("(")[0].split(".")[-1].strip('"').lower()

    return _type_uses(metadata, lambda kind: bare(_type_name(kind)) == bare(name))


def named_types(metadata: MetaData) -> list[TypeUse]:
    """Enums and domains the metadata names but does not create (``create_type=False``: the team's
    migrations create them). The harness creates them for the test copies: it knows their labels and
    definitions. A domain comes after the types it is built on."""
    return _type_uses(metadata, lambda kind: isinstance(kind, NamedType) and not kind.create_type)


def undescribed_types(metadata: MetaData) -> list[TypeUse]:
    """Types the metadata names without saying how to create them: user-defined types (a DOMAIN or a
    type made by hand, as a UserDefinedType), extension types (citext, hstore, PostGIS)."""
    return _type_uses(metadata, lambda kind: not _describable(kind))


def _create_sql(use: TypeUse) -> str:
    """What a --schema-sql would say to provide a type (an example for the refusal)."""
    if isinstance(use.kind, types.NullType):
        return f"(none: give the column(s) {', '.join(use.columns)} a type)"
    base = use.name.split("(")[0].split(".")[-1].strip('"').lower()
    if base in EXTENSION_TYPES:
        return f"CREATE EXTENSION IF NOT EXISTS {EXTENSION_TYPES[base]};"
    return f"CREATE DOMAIN {use.name} AS text;  (or CREATE TYPE {use.name} ...)"


def schema_sql_fixes(uses: list[TypeUse]) -> list[str]:
    """How to provide types the harness cannot create: the remedy of every refusal that names them."""
    return [f"give --schema-sql FILE (HARNESS_SCHEMA_SQL, [tool.harness] schema_sql): SQL the harness runs once "
            f"per database, as superuser, before it creates the test copies; for these types, e.g. "
            f"{' '.join(_create_sql(use) for use in uses)}",
            "or put there the statements of your Alembic migrations that create them (`alembic upgrade head "
            "--sql` prints the SQL of your head)"]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (reseed scripts are cached per models)
class TeamModels:
    """The team's metadata (``--models``): tenant tables, shared tables, mapped classes."""

    spec: str
    metadata: MetaData
    classes: dict[str, type]  # tenant table name -> its mapped class, when a declarative base was given
    #: ``--schema-sql``: the file and its SQL, run once per database before the test copies are created
    schema_sql: tuple[Path, str] | None = None

    @property
    def tenant_tables(self) -> list[Table]:
        """Tables in the ``tenant`` placeholder schema, in dependency order."""
        return [t for t in self.metadata.sorted_tables if t.schema == PLACEHOLDER_SCHEMA]

    @property
    def shared_tables(self) -> list[Table]:
        """Every other table of the metadata (a lookup table in public, say), in dependency order."""
        return [t for t in self.metadata.sorted_tables if t.schema != PLACEHOLDER_SCHEMA]

    @property
    def shared_after_tenants(self) -> list[Table]:
        """Shared tables with a foreign key into a tenant table (or into another such shared table): seeded
        after the tenant copies' canaries and emptied before them, in dependency order.

        Such a table is created once, so its foreign key points at the copy of the schema it was created
        with (public's decoy, or the first tenant's): its rows point at that copy's canaries. The other
        shared tables (lookups the tenant tables point at) are seeded once, before any canary."""
        late: list[Table] = []
        for table in self.shared_tables:
            targets = {fk.column.table for fk in table.foreign_keys}
            if any(t.schema == PLACEHOLDER_SCHEMA or t in late for t in targets):
                late.append(table)
        return late

    @property
    def seeded_tables(self) -> list[Table]:
        """What a reseed empties and fills again, in dependency order: the tenant tables and the shared
        tables seeded after them."""
        late = set(self.shared_after_tenants)
        return [t for t in self.metadata.sorted_tables if t.schema == PLACEHOLDER_SCHEMA or t in late]

    def table(self, name: str) -> Table:
        for table in self.tenant_tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def writable(self, table: Table) -> bool:
        """Steps may insert, update and delete rows of a table with a primary key whose new rows cannot
        collide with a canary: not an association or one-to-one table (a key or unique column that is also
        a foreign key points at an existing row, so a new row would repeat one), no identity column the
        database always generates (the harness gives every row its key)."""
        if not table.primary_key.columns:
            return False
        if any(column.identity is not None and column.identity.always for column in table.columns):
            return False
        references = {column for column in table.columns if column.foreign_keys}
        # a key made of foreign keys only: new rows point at canary row 1 and would repeat it
        return not any(columns <= references for columns in _unique_sets(table))

    def updatable_column(self, table: Table) -> Column | None:
        """A column an update step may change: not in the key, not a foreign key, in no unique constraint
        or index (two clients' updates would then wait on each other, and the runner runs one step at a time)."""
        unique = _unique_columns(table)
        for column in table.columns:
            if column.primary_key or column.foreign_keys or column in unique or column.computed is not None:
                continue
            if soft_delete_value(column)[0]:  # an update must not hide the row from the app's filters
                continue
            if isinstance(column.type, (types.String, types.Integer, _NUMBERS, JSON)):
                return column
        return None

    # -- rows ----------------------------------------------------------------------
    def row(self, table: Table, owner: str, number: int, *, anchor: str | None = None) -> dict[str, Any]:
        """Row ``number`` of ``owner``'s copy of ``table``; foreign keys point at row ``number``
        (or row 1 for rows past the canaries) of the referenced table. ``anchor``: for a shared table, the
        schema whose tenant copies its foreign keys point at (:attr:`shared_after_tenants`).

        A NOT NULL column no canary value fits but that has a default is left out, so the default fills it."""
        values: dict[str, Any] = {}
        for column in table.columns:
            if column.computed is not None:
                continue
            ref = next(iter(column.foreign_keys), None)
            if ref is not None:
                target = ref.column
                referenced = number if number <= CANARY_ROWS else 1
                # a shared table (a lookup in public) holds the rows of SHARED_OWNER, seeded once
                # (the schema-less copy a search_path-only layer uses has its tenant tables without a schema)
                tenant = target.table.schema == PLACEHOLDER_SCHEMA or (
                    target.table.schema is None and table.schema is None
                    and any(t.name == target.table.name for t in self.tenant_tables))
                if not tenant:
                    ref_owner = SHARED_OWNER
                elif anchor is not None:  # a shared table's row points at the canaries of its anchor schema
                    ref_owner = anchor
                else:
                    ref_owner = owner
                values[column.name] = canary_value(target, ref_owner, referenced, key=target.primary_key)
            else:
                value = canary_value(column, owner, number, key=column.primary_key)
                if value is None and not column.nullable:
                    if column.server_default is not None:
                        continue  # the server fills it
                    value = _python_default(column)  # a raw insert (the seed) does not run Python defaults
                values[column.name] = value
        return values

    def canaries(self, table: Table, owner: str, *, anchor: str | None = None) -> list[dict[str, Any]]:
        return [self.row(table, owner, n, anchor=anchor) for n in range(1, CANARY_ROWS + 1)]

    def key_of(self, table: Table, values: dict[str, Any]) -> str:
        """The text the observer reports for a row's key (its key columns, comma-joined)."""
        return ",".join(str(values[c.name]) for c in table.primary_key.columns)


def _python_default(column: Column) -> Any:
    """The value of a column's Python-side default (``default=``), or None when it has none the harness
    can call without an insert's execution context."""
    default = column.default
    if default is None or getattr(default, "is_sequence", False):
        return None
    if getattr(default, "is_scalar", False):
        return default.arg
    if getattr(default, "is_callable", False):
        try:
            return default.arg(None)  # SQLAlchemy wraps a callable of no arguments to take the context
        except Exception:  # noqa: BLE001 - a default that needs the insert's context: no value
            return None
    return None


def _unique_sets(table: Table) -> list[set[Column]]:
    """The column sets ``table`` holds unique: its key, unique columns, unique constraints and indexes."""
    sets = [set(table.primary_key.columns)] + [{c} for c in table.columns if c.unique]
    sets += [set(c.columns) for c in table.constraints if isinstance(c, UniqueConstraint)]
    sets += [{c for c in i.columns if isinstance(c, Column)} for i in table.indexes if i.unique]
    return [columns for columns in sets if columns]


def _unique_columns(table: Table) -> set[Column]:
    """Columns in a unique constraint or a unique index of ``table`` (alone or with others), or its key."""
    return set().union(*_unique_sets(table))


def _classes(target: Any, metadata: MetaData) -> dict[str, type]:
    """Mapped classes of a declarative base, by tenant table name."""
    registry = getattr(target, "registry", None)
    out: dict[str, type] = {}
    for mapper in getattr(registry, "mappers", ()):
        table = mapper.local_table
        if isinstance(table, Table) and table.schema == PLACEHOLDER_SCHEMA and table.name not in out:
            out[table.name] = mapper.class_
    return out


def _read_schema_sql(path: Path) -> tuple[Path, str]:
    try:
        return path, path.read_text()
    except OSError as exc:
        raise UsageError(f"--schema-sql {path}: the file cannot be read ({exc.strerror or exc}).",
                         fix=["give --schema-sql (HARNESS_SCHEMA_SQL, [tool.harness] schema_sql) the path of an "
                              "SQL file; in [tool.harness] it is relative to that pyproject.toml"]) from exc


def team_models(spec: str, target: Any, metadata: MetaData, schema_sql: Path | None = None) -> TeamModels:
    """The team's models of ``--models``, checked before any server starts: every type they name can be
    created (or ``--schema-sql`` is there to provide it), every table gets canaries."""
    models = TeamModels(spec, metadata, _classes(target, metadata),
                        None if schema_sql is None else _read_schema_sql(schema_sql))
    # A column no canary can fill is refused first: no --schema-sql would make that table loadable.
    for table in models.tenant_tables + models.shared_tables:
        models.canaries(table, "check")
    missing = undescribed_types(metadata)
    if missing and models.schema_sql is None:
        raise UsageError(f"Models spec {spec!r} uses type(s) its metadata does not say how to create, so the "
                         f"harness cannot make the test copies: {'; '.join(use.where for use in missing)}.",
                         checked=["every column type of the models' tables: SQLAlchemy's built-in types, and "
                                  "enums and postgresql.DOMAINs (created from the metadata, create_type=False "
                                  "too), are created by the harness; user-defined (UserDefinedType) and "
                                  "extension types are not"],
                         fix=schema_sql_fixes(missing))
    return models
