"""The team's tables in every schema: created, observed, seeded with canaries, reseeded on reset.

Run as the harness's superuser by :class:`harness.tenancy.provisioning.Tenancy`,
which owns the schemas; this module knows only the team's tables.
"""

from __future__ import annotations

import functools

from sqlalchemy import Table, text, types
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import CompileError

from harness.team import observer
from harness.team.models import SEQUENCE_START, SHARED_OWNER, TeamModels
from harness.tenancy.tenants import PLACEHOLDER_SCHEMA


def prepare_observer(conn: Connection, function_schema: str) -> None:
    """The observer function, in a schema the harness created (``function_schema``)."""
    quoted = conn.dialect.identifier_preparer.quote_identifier(function_schema)
    _run_script(conn, observer.function_sql(quoted))


def _run_script(conn: Connection, script: str) -> None:
    """Statements without parameters, as one simple-protocol round trip ('%' in names stays literal)."""
    conn.connection.driver_connection.execute(script)


def create_tables(conn: Connection, models: TeamModels, schema: str, owner: str, function_schema: str) -> None:
    """The team's tables in ``schema`` (its shared tables once), each tenant table observed."""
    mapped = conn.execution_options(schema_translate_map={PLACEHOLDER_SCHEMA: schema})
    fresh_shared = [t for t in models.shared_tables if not conn.dialect.has_table(conn, t.name, schema=t.schema)]
    models.metadata.create_all(mapped)
    for table in models.tenant_tables:
        _run_script(conn, observer.policies_sql(conn, function_schema, schema, owner, table))
    for table in fresh_shared:  # lookup rows the tenant tables' foreign keys point at
        conn.execute(table.insert(), models.canaries(table, SHARED_OWNER))


def continue_sequences(conn: Connection, models: TeamModels, schema: str) -> None:
    """Serial and identity keys continue above every key the harness writes, so the team's own inserts
    (which leave the key to the database) never collide with a canary or a step's row."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    for table in models.tenant_tables:
        for column in table.primary_key.columns:
            if isinstance(column.type, types.Integer):
                conn.execute(text("SELECT setval(pg_get_serial_sequence(:t, :c), :n)"),
                             {"t": f"{quote(schema)}.{quote(table.name)}", "c": column.name, "n": SEQUENCE_START})


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
            mapped.execute(table.insert(), models.canaries(table, schema))


@functools.lru_cache(maxsize=64)
def _script(dialect: Dialect, models: TeamModels, tables: tuple[Table, ...], schemas: tuple[str, ...]) -> str | None:
    quote = dialect.identifier_preparer.quote_identifier
    statements = []
    for schema in schemas:
        translate = {PLACEHOLDER_SCHEMA: schema}
        statements += [f"DELETE FROM {quote(schema)}.{quote(t.name)}" for t in reversed(tables)]
        for table in tables:
            try:
                statements.append(str(table.insert().values(models.canaries(table, schema)).compile(
                    dialect=dialect, schema_translate_map=translate, render_schema_translate=True,
                    compile_kwargs={"literal_binds": True})))
            except (CompileError, NotImplementedError, TypeError):
                return None
    return ";\n".join(statements)
