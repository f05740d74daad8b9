"""The team's tables in every schema: created, observed, seeded with canaries, reseeded on reset.

Run as the harness's superuser by :class:`harness.tenancy.provisioning.Tenancy`,
which owns the schemas; this module knows only the team's tables.

Order, once per database: the team's ``--schema-sql``, then per schema the
enums and domains its migrations would have made (``create_type=False``), the
test copies, their row-level security; then the seed, in dependency order across
schemas: shared lookups the tenant tables point at (once, at creation), every
schema's canaries, then the shared tables that point at tenant tables (their
rows point at canaries, so a reseed empties them first).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from sqlalchemy import Table, cast, literal, text, types
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import CompileError, DBAPIError

from harness.team import observer
from harness.team.models import (SEQUENCE_START, SHARED_OWNER, CanaryError, TeamModels, TypeUse, named_types,
                                 schema_sql_fixes, type_uses, undescribed_types)
from harness.errors import UsageError
from harness.tenancy.tenants import PLACEHOLDER_SCHEMA


def prepare_observer(conn: Connection, function_schema: str, app_role: str) -> None:
    """The observer function, in a schema the harness created (``function_schema``). A login role that
    bypasses row-level security would make it blind: refused."""
    bypasses = conn.execute(text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = :r"),
                            {"r": app_role}).scalar()
    if bypasses:
        raise UsageError(f"The role the code under test logs in as ({app_role}) is a superuser or has "
                         "BYPASSRLS: the harness could not see which tenant's rows the team's code reads.",
                         fix=["give the routes a login role without SUPERUSER and BYPASSRLS"])
    quoted = conn.dialect.identifier_preparer.quote_identifier(function_schema)
    _run_script(conn, observer.function_sql(quoted))


def check_shared_tables(models: TeamModels, owns_public: bool) -> None:
    """Shared (non-tenant) tables are created and seeded once; not in a database the harness does not own."""
    if models.shared_tables and not owns_public:
        raise UsageError(f"Models spec {models.spec!r} has tables outside the tenant schema "
                         f"({', '.join(t.name for t in models.shared_tables)}), and this backend does not let the "
                         "harness create tables outside its own schemas.",
                         fix=["create them in the database beforehand and give --models a metadata of the tenant "
                              "tables only, or use the native or docker backend"])


def _run_script(conn: Connection, script: str) -> None:
    """Statements without parameters, as one simple-protocol round trip ('%' in names stays literal)."""
    conn.connection.driver_connection.execute(script)


def _server_said(exc: BaseException) -> str:
    """The first line of what the server (or the driver) said, without SQLAlchemy's wrapping."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def run_schema_sql(engine: Engine, models: TeamModels) -> None:
    """The team's ``--schema-sql``, once per database as superuser before any test copy exists; then every
    type the metadata cannot describe must exist. Autocommit: the file may hold its own BEGIN/COMMIT (the
    SQL ``alembic upgrade head --sql`` prints does) and CREATE EXTENSION."""
    missing = undescribed_types(models.metadata)
    if models.schema_sql is None and not missing:
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if models.schema_sql is not None:
            path, sql = models.schema_sql
            try:
                _run_script(conn, sql)
            except conn.dialect.loaded_dbapi.Error as exc:
                raise UsageError(f"--schema-sql {path} failed: {_server_said(exc)}.",
                                 checked=["the file runs once per database, as superuser, before the harness "
                                          "creates its schemas and the test copies"],
                                 fix=["fix the SQL; write it so it can run on a database that already has its "
                                      "objects (CREATE ... IF NOT EXISTS), as the external backend keeps them"]
                                 ) from exc
        absent = [use for use in missing if not _type_exists(conn, use)]
    if absent:
        given = (f"after --schema-sql {models.schema_sql[0]} ran" if models.schema_sql is not None
                 else "and no --schema-sql was given")
        raise UsageError(f"Models spec {models.spec!r}: type(s) its metadata does not say how to create are not in "
                         f"the database {given}: {'; '.join(use.where for use in absent)}.",
                         checked=[f"to_regtype({use.name!r}) on the database of the test copies" for use in absent],
                         fix=schema_sql_fixes(absent))


def _type_exists(conn: Connection, use: TypeUse) -> bool:
    """The type resolves as a column definition would name it (through the superuser's search_path)."""
    try:
        return conn.execute(text("SELECT to_regtype(:t) IS NOT NULL"), {"t": use.name}).scalar()
    except DBAPIError:  # a name to_regtype cannot parse (a type modifier it refuses): not there to use
        return False


def create_types(conn: Connection, models: TeamModels, schema: str, app_role: str) -> None:
    """The enums and domains the metadata names but does not create (``create_type=False``), where each
    resolves for ``schema``'s test copies: its own schema, the tenant's schema (``inherit_schema`` on a
    tenant table) or, unqualified, the first schema of the search_path (public)."""
    mapped = conn.execution_options(schema_translate_map={PLACEHOLDER_SCHEMA: schema})
    preparer = conn.dialect.identifier_preparer
    for use in named_types(models.metadata):
        own = use.kind.schema
        if own is not None and own != PLACEHOLDER_SCHEMA:  # the migrations' schema for types: the app can use it
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {preparer.quote_identifier(own)}"))
            conn.execute(text(f"GRANT USAGE ON SCHEMA {preparer.quote_identifier(own)} TO "
                              f"{preparer.quote_identifier(app_role)}"))
        try:
            with conn.begin_nested():
                use.kind.create(mapped, checkfirst=True)
        except DBAPIError as exc:
            raise UsageError(f"The harness could not create type {use.where} for the test copies in "
                             f"{schema!r}: {_server_said(exc)}.",
                             checked=["the type is declared create_type=False: the team's migrations create it, "
                                      "so the harness creates it from the metadata"],
                             fix=schema_sql_fixes([use])) from exc


def create_tables(conn: Connection, models: TeamModels, schema: str, owner: str, function_schema: str,
                  app_role: str) -> None:
    """The team's tables in ``schema`` (its shared tables once), each tenant table observed; the shared
    tables the tenant tables point at are seeded here, the others with the canaries (:func:`reseed`)."""
    mapped = conn.execution_options(schema_translate_map={PLACEHOLDER_SCHEMA: schema})
    preparer = conn.dialect.identifier_preparer
    fresh_shared = [t for t in models.shared_tables if not conn.dialect.has_table(conn, t.name, schema=t.schema)]
    for name in {t.schema for t in fresh_shared if t.schema is not None}:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {preparer.quote_identifier(name)}"))
    create_types(conn, models, schema, app_role)
    try:
        with conn.begin_nested():
            models.metadata.create_all(mapped)
    except DBAPIError as exc:
        raise _ddl_refused(models, schema, exc) from exc
    for table in models.tenant_tables:
        _run_script(conn, observer.policies_sql(conn, function_schema, schema, owner, table))
    late = set(models.shared_after_tenants)
    role = preparer.quote_identifier(app_role)
    for table in fresh_shared:  # readable by the app; lookup rows the tenant tables' foreign keys point at
        if table not in late:
            _insert(conn, table, models.canaries(table, SHARED_OWNER), schema)
        conn.execute(text(f"GRANT SELECT ON {mapped.dialect.identifier_preparer.format_table(table)} TO {role}"))


def _ddl_refused(models: TeamModels, schema: str, exc: DBAPIError) -> UsageError:
    """A CREATE of the test copies the server refused, named: the table, and the type when one is missing."""
    statement = exc.statement or ""
    created = re.search(r"CREATE\s+(?:TABLE|INDEX|TYPE|DOMAIN)\s+(?:\S+\s+ON\s+)?(\S+)", statement)
    what = created.group(1) if created else "one of the team's tables"
    said = _server_said(exc)
    missing = re.search(r'type "([^"]+)" does not exist', said)
    uses = type_uses(models.metadata, missing.group(1)) if missing else []
    fix = (schema_sql_fixes(uses or [TypeUse(types.UserDefinedType(), missing.group(1), (what,))]) if missing else
           ["the statement is the team's metadata as SQLAlchemy renders it: check that it creates on this "
            "PostgreSQL version (a server default, an index or a constraint naming a function or extension "
            "the database does not have can come from --schema-sql)"])
    used = f" (it is {'; '.join(use.where for use in uses)})" if uses else ""
    return UsageError(f"Creating the test copy {what} in {schema!r} failed: {said}{used}.",
                      checked=[f"statement: {' '.join(statement.split())[:300]}"], fix=fix)


def _overriding(table: Table, sql: str) -> str:
    """An INSERT that gives identity columns the database always generates their canary values."""
    if any(c.identity is not None and c.identity.always for c in table.columns):
        return sql.replace(") VALUES (", ") OVERRIDING SYSTEM VALUE VALUES (", 1)
    return sql


def _bound(dialect: Dialect, table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A canary row as the driver takes it: each value through its column type's bind processing (JSON
    serialised, enums checked, a TypeDecorator's process_bind_param), as SQLAlchemy does on execute."""
    out = {}
    for name, value in row.items():
        column = table.c[name]
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        out[column.key] = process(value) if process is not None and value is not None else value
    return out


def _insert(conn: Connection, table: Table, rows: list[dict], schema: str) -> None:
    """Insert canary rows into ``schema``'s copy of ``table``; a row the table refuses is a clear error
    naming the table, the column and what the server said, before any cell runs."""
    if not rows:
        return
    statement = table.insert().compile(dialect=conn.dialect, column_keys=[table.c[n].key for n in rows[0]],
                                       schema_translate_map={PLACEHOLDER_SCHEMA: schema},
                                       render_schema_translate=True)
    bound = [statement.construct_params(_bound(conn.dialect, table, row)) for row in rows]
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(_overriding(table, str(statement)), bound)
    except DBAPIError as exc:
        raise canary_refused(table, schema, rows, exc) from exc


def canary_refused(table: Table, schema: str, rows: list[dict], exc: DBAPIError) -> CanaryError:
    """The canary insert's failure, named: the table, the column when the server or the driver says which,
    the server's own words, and the remedy for that kind of failure."""
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or ""
    said = _server_said(exc)
    detail = getattr(diag, "message_detail", None)
    constraint = getattr(diag, "constraint_name", None)
    column = getattr(diag, "column_name", None)
    if column is None and detail:  # "Key (account_id)=(1) is not present in table ..."
        found = re.match(r"Key \(([^)]+)\)", detail)
        column = found.group(1) if found else None
    if column is None and not state:  # the driver could not send a value: the columns of that Python type
        adapt = re.search(r"cannot adapt type '(\w+)'", said)
        if adapt:
            column = ", ".join(n for n, v in (rows[0] if rows else {}).items() if type(v).__name__ == adapt.group(1))
    where = f"{table.name}.{column}" if column else table.name
    first = rows[0] if rows else {}
    checked = [f"the canary rows of {table.name} in {schema!r}; " + (
        f"column {column}: {first.get(column)!r} in the first row" if column in first else f"first row: {first}")]
    if detail:
        checked.append(f"the server's detail: {detail}")
    if state == "23514":
        fix = [f"the CHECK constraint {constraint or ''} refuses the canary value: give the harness a table whose "
               "CHECK constraints accept any value of each column's type, or relax it in the test copy"]
    elif state == "23503":
        fix = [f"the foreign key {constraint or ''} points at a row the harness did not seed: a foreign key into a "
               "table outside the models (create and fill it with --schema-sql), or into a column the harness "
               "does not fill"]
    elif state == "23502":
        fix = [f"{where} is NOT NULL and the harness has no value of its type: give it a server default, make it "
               "nullable, or use a standard SQLAlchemy type"]
    elif state == "23505":
        fix = [f"the unique constraint {constraint or ''} refuses repeated canary values (a boolean or an enum "
               f"with fewer values than the {len(rows)} canary rows): make the column nullable or not unique"]
    elif state.startswith("22") or state in ("42804", "42846"):
        fix = [f"the canary value does not fit the column's type as the database has it: check that the column's "
               "SQLAlchemy type matches the database's (a DOMAIN's CHECK, a narrower type made by --schema-sql)"]
    elif state in ("42704", "42883", "42P01"):
        fix = ["the test copy needs an object the database does not have: create it with --schema-sql"]
    elif not state:
        fix = [f"the driver could not send the canary value of {where}: use a standard SQLAlchemy type for it, or "
               "a TypeDecorator whose process_bind_param returns what the driver can send"]
    else:
        fix = ["the server refused the canary rows for the reason above"]
    return CanaryError(f"The canary rows of {where} could not be inserted: {said}.", checked=checked, fix=fix)


def continue_sequences(conn: Connection, models: TeamModels, schema: str) -> None:
    """Serial and identity keys continue above every key the harness writes, so the team's own inserts
    (which leave the key to the database) never collide with a canary or a step's row."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    # A smallserial stops at 32767: its sequence goes to the middle of what is left above the canaries.
    query = text("SELECT setval(q.s, CASE WHEN m.seqmax >= :n THEN :n ELSE (m.seqmax + 1000) / 2 END) "
                 "FROM (SELECT pg_get_serial_sequence(:t, :c) AS s) q "
                 "JOIN pg_sequence m ON m.seqrelid = q.s::regclass WHERE q.s IS NOT NULL")
    for table in models.tenant_tables:
        for column in table.primary_key.columns:
            if isinstance(column.type, types.Integer):
                conn.execute(query, {"t": f"{quote(schema)}.{quote(table.name)}", "c": column.name,
                                     "n": SEQUENCE_START})


def _anchors(conn: Connection, models: TeamModels) -> tuple[tuple[str, str], ...]:
    """For each shared table seeded after the canaries, the schema whose tenant copies its foreign keys
    point at: the schema it was created with (read from the catalog, as the server resolved it)."""
    late = models.shared_after_tenants
    if not late:
        return ()
    preparer = conn.dialect.identifier_preparer
    query = text("SELECT n.nspname FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid "
                 "JOIN pg_namespace n ON n.oid = r.relnamespace WHERE c.contype = 'f' "
                 "AND c.conrelid = CAST(:t AS regclass) AND r.relname = ANY(:names) LIMIT 1")
    names = [t.name for t in models.tenant_tables]
    out = []
    for table in late:
        schema = conn.execute(query, {"t": preparer.format_table(table), "names": names}).scalar()
        if schema is not None:
            out.append((table.name, schema))
    return tuple(out)


# Models (and schema lists) whose literal reseed script the server refused (a literal without the type the
# column needs, an array of enums rendered as text[]): they are reseeded with bound parameters.
_LITERAL_REFUSED: set[tuple[TeamModels, tuple[str, ...]]] = set()


def reseed(conn: Connection, models: TeamModels, schemas: list[str]) -> None:
    """Empty every schema's copy of the team's tables (and the shared tables that point at them) and put
    the canaries back, in one round trip when the values render as SQL literals the server takes."""
    anchors = _anchors(conn, models)
    key = (models, tuple(schemas))
    script = None if key in _LITERAL_REFUSED else _script(conn.dialect, models, tuple(schemas), anchors)
    if script is not None:
        try:
            with conn.begin_nested():
                _run_script(conn, script)
            return
        except conn.dialect.loaded_dbapi.Error:
            _LITERAL_REFUSED.add(key)  # the bound inserts below say what is wrong, if anything is
    owners = dict(anchors)
    for table in reversed(models.seeded_tables):
        for schema in _copies(table, schemas):
            conn.execution_options(schema_translate_map={PLACEHOLDER_SCHEMA: schema}).execute(table.delete())
    for table in models.seeded_tables:
        for schema in _copies(table, schemas):
            rows = (models.canaries(table, schema) if table.schema == PLACEHOLDER_SCHEMA
                    else models.canaries(table, SHARED_OWNER, anchor=owners.get(table.name)))
            _insert(conn, table, rows, schema)


def _copies(table: Table, schemas: list[str] | tuple[str, ...]) -> list[str]:
    """The schemas holding a copy of ``table``: every one for a tenant table, the first for a shared one
    (its schema is its own; the one given only renders the placeholder)."""
    return list(schemas) if table.schema == PLACEHOLDER_SCHEMA else list(schemas[:1])


@functools.lru_cache(maxsize=64)
def _literal_json(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A canary row whose JSON values render as SQL literals: SQLAlchemy has no literal renderer for JSON,
    and a script that cannot be compiled falls back to one insert per table and schema (an order of
    magnitude slower on an app whose main tables have JSON columns)."""
    return {key: cast(literal(json.dumps(value, default=str), types.String()), table.c[key].type)
            if value is not None and isinstance(table.c[key].type, types.JSON) else value
            for key, value in row.items()}


def _script(dialect: Dialect, models: TeamModels, schemas: tuple[str, ...],
            anchors: tuple[tuple[str, str], ...]) -> str | None:
    owners = dict(anchors)
    deletes, inserts = [], []
    for table in models.seeded_tables:
        for schema in _copies(table, schemas):
            translate = {PLACEHOLDER_SCHEMA: schema}
            rows = (models.canaries(table, schema) if table.schema == PLACEHOLDER_SCHEMA
                    else models.canaries(table, SHARED_OWNER, anchor=owners.get(table.name)))
            deletes.append(str(table.delete().compile(dialect=dialect, schema_translate_map=translate,
                                                      render_schema_translate=True)))
            try:
                inserts.append(_overriding(table, str(table.insert().values([_literal_json(table, row)
                                                                             for row in rows]).compile(
                    dialect=dialect, schema_translate_map=translate, render_schema_translate=True,
                    compile_kwargs={"literal_binds": True}))))
            except (CompileError, NotImplementedError, TypeError, ValueError):
                return None
    return ";\n".join(list(reversed(deletes)) + inserts)
