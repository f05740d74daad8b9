"""The seed data: the rows every tenant schema (and the decoys in public) starts with.

Every owner gets the same primary keys, so identity-map and cache mix-ups show
as rows of the wrong owner. Checks learn which ids were seeded from
:func:`seed_ids`, so a seeded row that vanished is recognised.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

SEED_ROWS = 8
SEED_SMALL = 3
WRITTEN_TABLES = ("product", "marketplace_task")
LABELS = {"product": "name", "marketplace_task": "state"}  # the column a write's label goes to


def quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def seed_rows(owner: str) -> dict[str, list[dict[str, Any]]]:
    """The rows every schema starts with; the same keys for every owner."""
    small = range(1, SEED_SMALL + 1)
    return {
        "product": [{"id": i, "owner": owner, "name": f"{owner} product {i}", "price": i * 10} for i in
                    range(1, SEED_ROWS + 1)],
        "vinted_product": [{"id": i, "owner": owner, "product_id": i, "vinted_ref": f"v{i}"} for i in small],
        "marketplace_job": [{"id": i, "owner": owner, "kind": "sync"} for i in small],
        "marketplace_task": [{"id": i, "owner": owner, "job_id": i, "state": "seeded"} for i in small],
        "publication_history": [{"id": i, "owner": owner, "product_id": i, "event": "seeded"} for i in small],
        "attribute": [{"id": i, "owner": owner, "name": f"attr {i}"} for i in small],
        "product_attribute": [{"product_id": 1, "attribute_id": 1, "owner": owner},
                              {"product_id": 1, "attribute_id": 2, "owner": owner},
                              {"product_id": 2, "attribute_id": 1, "owner": owner}],
    }


def seed_ids() -> dict[str, tuple[int, ...]]:
    """The seeded primary keys of the tables the workload writes, as a history records them."""
    return {"product": tuple(range(1, SEED_ROWS + 1)), "marketplace_task": tuple(range(1, SEED_SMALL + 1))}


@functools.lru_cache(maxsize=512)
def reseed_script(dialect: Dialect, tables: tuple[Table, ...], schema: str | None, owners: tuple[str, ...]) -> str:
    """One script that empties ``tables`` (in dependency order) and puts back the seed rows of ``owners``.

    ``schema`` is what the models' ``tenant`` placeholder stands for (None for
    tables without a schema). Values are rendered as SQL literals by
    SQLAlchemy, so the whole reseed is a single round trip, whatever the
    tenant names hold; the script is rendered once and kept. DELETE, not
    TRUNCATE: these tables hold a handful of rows, and TRUNCATE's new files
    cost tens of milliseconds per reseed.
    """
    quote_name = dialect.identifier_preparer.quote_identifier
    prefix = f"{quote_name(schema)}." if schema is not None else ""
    translate = {"tenant": schema} if schema is not None else None
    statements = [f"DELETE FROM {prefix}{quote_name(t.name)}" for t in reversed(tables)]
    seeds = [seed_rows(owner) for owner in owners]
    for table in tables:
        rows = [row for seed in seeds for row in seed[table.name]]
        if rows:
            statements.append(str(table.insert().values(rows).compile(
                dialect=dialect, schema_translate_map=translate, render_schema_translate=translate is not None,
                compile_kwargs={"literal_binds": True})))
    return ";\n".join(statements)
