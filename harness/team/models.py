"""The team's own tables: which are tenant tables, their mapped classes, and canary rows.

A **canary** row carries values unique to the tenant whose schema holds it
(strings and JSON name the tenant's tag, numbers and dates are offset by the
tenant's number), while every tenant gets the same primary keys, as the
harness's own tables do. Values follow each column's type and length, NOT NULL,
unique and foreign-key constraints: a foreign key points at the row with the
same number in the referenced table of the same schema, so the harness seeds
tables in dependency order.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import uuid
from typing import Any

from sqlalchemy import JSON, MetaData, Table, UniqueConstraint, types
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
                   decimal.Decimal: types.Numeric, int: types.Integer, str: types.String, bool: types.Boolean}


def canary_value(column: Column, owner: str, row: int, *, key: bool) -> Any:
    """A value of ``column``'s type for row ``row`` of ``owner``; ``key``: part of the primary key."""
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
    if isinstance(kind, types.Enum) and kind.enums:
        return kind.enums[row % len(kind.enums)]
    if isinstance(kind, types.Boolean):
        return row % 2 == 1
    if isinstance(kind, types.Integer):
        return _number(column, owner, row, key)
    if isinstance(kind, types.Numeric):
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
        return datetime.time(hour=row % 24, minute=_owner_number(owner) % 60)
    if isinstance(kind, types.Interval):
        return datetime.timedelta(seconds=_owner_number(owner) * 1000 + row)
    if isinstance(kind, JSON):
        return {"canary": tag, "row": row}
    if isinstance(kind, types.ARRAY):
        item = Column(column.name, kind.item_type)
        item.table = column.table  # type: ignore[attr-defined]
        return [canary_value(item, owner, row, key=False)]
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


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (reseed scripts are cached per models)
class TeamModels:
    """The team's metadata (``--models``): tenant tables, shared tables, mapped classes."""

    spec: str
    metadata: MetaData
    classes: dict[str, type]  # tenant table name -> its mapped class, when a declarative base was given

    @property
    def tenant_tables(self) -> list[Table]:
        """Tables in the ``tenant`` placeholder schema, in dependency order."""
        return [t for t in self.metadata.sorted_tables if t.schema == PLACEHOLDER_SCHEMA]

    @property
    def shared_tables(self) -> list[Table]:
        """Every other table of the metadata (a lookup table in public, say), in dependency order."""
        return [t for t in self.metadata.sorted_tables if t.schema != PLACEHOLDER_SCHEMA]

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
            if isinstance(column.type, (types.String, types.Integer, types.Numeric, JSON)):
                return column
        return None

    # -- rows ----------------------------------------------------------------------
    def row(self, table: Table, owner: str, number: int) -> dict[str, Any]:
        """Row ``number`` of ``owner``'s copy of ``table``; foreign keys point at row ``number``
        (or row 1 for rows past the canaries) of the referenced table."""
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
                ref_owner = owner if tenant else SHARED_OWNER
                values[column.name] = canary_value(target, ref_owner, referenced, key=target.primary_key)
            else:
                values[column.name] = canary_value(column, owner, number, key=column.primary_key)
        return values

    def canaries(self, table: Table, owner: str) -> list[dict[str, Any]]:
        return [self.row(table, owner, n) for n in range(1, CANARY_ROWS + 1)]

    def key_of(self, table: Table, values: dict[str, Any]) -> str:
        """The text the observer reports for a row's key (its key columns, comma-joined)."""
        return ",".join(str(values[c.name]) for c in table.primary_key.columns)


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


def team_models(spec: str, target: Any, metadata: MetaData) -> TeamModels:
    models = TeamModels(spec, metadata, _classes(target, metadata))
    for table in models.tenant_tables:  # a table no canary can be made for fails before any server starts
        models.canaries(table, "check")
    return models
