"""The team's tables in every schema: created, observed, seeded with canaries, reseeded on reset.

Run as the harness's superuser by :class:`harness.tenancy.provisioning.Tenancy`,
which owns the schemas; this module knows only the team's tables.
"""

from __future__ import annotations

import functools

from sqlalchemy import Table, text, types
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import CompileError, DBAPIError

from harness.team import observer
from harness.team.models import SEQUENCE_START, SHARED_OWNER, CanaryError, TeamModels
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


def create_tables(conn: Connection, models: TeamModels, schema: str, owner: str, function_schema: str,
                  app_role: str) -> None:
    """The team's tables in ``schema`` (its shared tables once), each tenant table observed."""
    mapped = conn.execution_options(schema_translate_map={PLACEHOLDER_SCHEMA: schema})
    fresh_shared = [t for t in models.shared_tables if not conn.dialect.has_table(conn, t.name, schema=t.schema)]
    for name in {t.schema for t in fresh_shared if t.schema is not None}:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {conn.dialect.identifier_preparer.quote_identifier(name)}"))
    models.metadata.create_all(mapped)
    for table in models.tenant_tables:
        _run_script(conn, observer.policies_sql(conn, function_schema, schema, owner, table))
    for table in fresh_shared:  # lookup rows the tenant tables' foreign keys point at, readable by the app
        _insert(conn, table, models.canaries(table, SHARED_OWNER), schema)
        qualified = mapped.dialect.identifier_preparer.format_table(table)
        role = conn.dialect.identifier_preparer.quote_identifier(app_role)
        conn.execute(text(f"GRANT SELECT ON {qualified} TO {role}"))


def _overriding(table: Table, sql: str) -> str:
    """An INSERT that gives identity columns the database always generates their canary values."""
    if any(c.identity is not None and c.identity.always for c in table.columns):
        return sql.replace(") VALUES (", ") OVERRIDING SYSTEM VALUE VALUES (", 1)
    return sql


def _insert(conn: Connection, table: Table, rows: list[dict], schema: str) -> None:
    """Insert canary rows into ``schema``'s copy of ``table``; a row the table refuses (a CHECK constraint,
    a foreign key no canary satisfies) is a clear error naming the table, before any cell runs."""
    statement = table.insert().compile(dialect=conn.dialect, schema_translate_map={PLACEHOLDER_SCHEMA: schema},
                                       render_schema_translate=True)
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(_overriding(table, str(statement)), rows)
    except DBAPIError as exc:
        raise CanaryError(f"The canary rows of {table.name} do not fit it: {str(exc.orig).strip().splitlines()[0]}.",
                          checked=[f"first row: {rows[0] if rows else {}}"],
                          fix=["give the harness a table whose CHECK constraints accept any value of each "
                               "column's type, or tell the team to relax them for the test database"]) from exc


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


def reseed(conn: Connection, models: TeamModels, schemas: list[str]) -> None:
    """Empty every schema's copy of the team's tables and put the canaries back, in one round trip
    when the values render as SQL literals (else one statement per table)."""
    tables = tuple(models.tenant_tables)
    script = _script(conn.dialect, models, tables, tuple(schemas))
    if script is not None:
        _run_script(conn, script)
        return
    for schema in schemas:
        mapped = conn.execution_options(schema_translate_map={PLACEHOLDER_SCHEMA: schema})
        for table in reversed(tables):
            mapped.execute(table.delete())
        for table in tables:
            _insert(conn, table, models.canaries(table, schema), schema)


@functools.lru_cache(maxsize=64)
def _script(dialect: Dialect, models: TeamModels, tables: tuple[Table, ...], schemas: tuple[str, ...]) -> str | None:
    quote = dialect.identifier_preparer.quote_identifier
    statements = []
    for schema in schemas:
        translate = {PLACEHOLDER_SCHEMA: schema}
        statements += [f"DELETE FROM {quote(schema)}.{quote(t.name)}" for t in reversed(tables)]
        for table in tables:
            try:
                statements.append(_overriding(table, str(table.insert().values(models.canaries(table, schema)).compile(
                    dialect=dialect, schema_translate_map=translate, render_schema_translate=True,
                    compile_kwargs={"literal_binds": True}))))
            except (CompileError, NotImplementedError, TypeError):
                return None
    return ";\n".join(statements)
