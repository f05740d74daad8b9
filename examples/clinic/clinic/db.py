"""The clinic's database access: one engine per process, one session per request bound to the clinic.

The web handlers take their session from a dependency, as FastAPI's ``Depends(get_db)`` recipe does::

    @app.get("/patients")
    def patients(session: Session = Depends(tenant_session)):   # tenant_session: get_session(clinic)
        return services.list_patients(session, clinic)

A session renders the models' ``tenant`` placeholder schema as the clinic's schema through
``schema_translate_map``. That map rewrites the statements SQLAlchemy compiles (ORM queries, Core
selects); it does not touch ``text()`` or ``exec_driver_sql()`` (SQLAlchemy docs, "Translation of Schema
Names"): raw SQL resolves its tables through the connection's search_path.

The engine is built from ``DATABASE_URL`` (psycopg2, SQLAlchemy's default for ``postgresql://``). The async
handlers use the same tables and code through :func:`Database.get_async_session` on an async URL
(``postgresql+asyncpg://``): ``await session.run_sync(services.list_patients, clinic)``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, AsyncIterator, Iterator

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

PLACEHOLDER = "tenant"  # the schema the models name (clinic.models)


def pooler_safe(url: URL) -> dict[str, Any]:
    """connect_args that keep the driver from preparing statements. Production reaches PostgreSQL through
    PgBouncer in transaction mode, where a statement prepared in one transaction is gone in the next
    (before PgBouncer 1.21's max_prepared_statements)."""
    driver = url.get_driver_name()
    if driver in ("psycopg", "psycopg_async"):  # psycopg 3 prepares at the 5th execution (prepare_threshold=5)
        return {"prepare_threshold": None}
    if driver == "asyncpg":  # asyncpg's and SQLAlchemy's statement caches off, unique names (SQLAlchemy docs)
        return {"statement_cache_size": 0, "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__"}
    return {}  # psycopg2 never prepares


def schema_of(clinic: str) -> str:
    """The schema that holds a clinic's tables (the registry names each clinic by its schema)."""
    return clinic


class Database:
    """An engine and the sessions of the requests made on it: sync, or async on an async URL."""

    def __init__(self, url: str | URL, *, pool_size: int = 5, max_overflow: int = 5) -> None:
        self.url = make_url(url)
        self.is_async = self.url.get_dialect().is_async
        options: dict[str, Any] = {"connect_args": pooler_safe(self.url), "pool_size": pool_size,
                                   "max_overflow": max_overflow}
        if self.is_async:
            from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

            self.engine: Any = create_async_engine(self.url, **options)
            self.sessions: Any = async_sessionmaker(expire_on_commit=False)
        else:
            self.engine = create_engine(self.url, **options)
            self.sessions = sessionmaker(expire_on_commit=False)

    def bind_for(self, clinic: str) -> Any:
        """The engine with the clinic's schema in place of the placeholder."""
        return self.engine.execution_options(schema_translate_map={PLACEHOLDER: schema_of(clinic)})

    def get_session(self, clinic: str) -> Iterator[Session]:
        """The request's session (a dependency: FastAPI closes it after the response)."""
        session = self.sessions(bind=self.bind_for(clinic))
        try:
            yield session
        finally:
            session.close()

    async def get_async_session(self, clinic: str) -> AsyncIterator[Any]:
        """The request's AsyncSession, for the async handlers."""
        async with self.sessions(bind=self.bind_for(clinic)) as session:
            yield session

    def dispose(self) -> Any:
        """Close the pool (a coroutine for an async engine)."""
        return self.engine.dispose()


# The process's database, from the app's settings (no connection is made before the first request).
DATABASE_URL = os.environ["DATABASE_URL"]
database = Database(DATABASE_URL)
get_session = database.get_session
