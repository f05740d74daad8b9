"""The PostgreSQL drivers a tenancy layer can run on, and what the harness must know of each.

A driver is a dimension of a run (``--drivers psycopg,psycopg2,asyncpg``): the route URL a strategy's
factory gets names it (``postgresql+psycopg2://...``), so a layer that builds its engine from that URL runs
on it. Everywhere the harness touches the layer's connections (the pool probe, the read observer, error
classification) it goes through this module, not through one driver's API.

What differs, and why it matters here:

- **psycopg 3** (``psycopg``, ``psycopg_async``): prepares a statement at its 5th execution on a connection
  (``prepare_threshold=5``; psycopg docs, "Prepared statements"); notices reach ``add_notice_handler``
  callbacks synchronously; errors carry ``sqlstate``.
- **psycopg2**: never prepares at the protocol level; notices are appended to ``connection.notices`` (any
  object with ``append``; psycopg2 docs, "connection.notices"), one string per message, as
  ``"INFO:  text\\n"``; errors carry ``pgcode``. It has no asyncio support.
- **asyncpg** (async only): prepares every statement it runs; with its statement cache on (the default,
  ``statement_cache_size=100``) the prepared statements are named (``__asyncpg_stmt_N__``) and reused
  across transactions, which breaks behind PgBouncer in transaction mode without
  ``max_prepared_statements``. SQLAlchemy keeps a cache of its own (``prepared_statement_cache_size``);
  both are turned off for PgBouncer (SQLAlchemy docs, "Using Prepared Statements with PGBouncer", which also
  advises unique statement names). Log messages reach ``add_log_listener`` callbacks scheduled on the event
  loop, not in the caller's context, so the observer buffers them per connection. Errors carry ``sqlstate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import uuid
from typing import Any, Callable, Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from harness.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Driver:
    """One PostgreSQL driver as SQLAlchemy names it, with what a layer sets to keep it from preparing."""

    name: str
    #: SQLAlchemy's dialect+driver for sync engines ("" when the driver has no sync form)
    sync: str
    #: ... and for async engines ("" when it has no asyncio support)
    asynchronous: str
    #: the Python module that must import for the driver to be used
    module: str
    #: what the package that provides it is called on PyPI
    package: str
    #: does the driver prepare statements at the protocol level unless told not to?
    prepares: bool
    #: how often: in a sentence, for reasons and reports
    prepares_how: str

    @property
    def is_async_only(self) -> bool:
        return not self.sync

    def url(self, url: URL, *, asynchronous: bool | None = None) -> URL:
        """``url`` with this driver: its async form when asked (or when it has no other)."""
        want_async = self.is_async_only if asynchronous is None else asynchronous
        drivername = self.asynchronous if want_async else self.sync
        if not drivername:
            raise UsageError(f"The {self.name} driver has no {'asyncio' if want_async else 'synchronous'} form.",
                             fix=["run this layer on another driver (--drivers)"])
        return url.set(drivername=drivername)

    def no_prepare(self) -> dict[str, Any]:
        """connect_args that keep the driver from preparing statements (what a careful team sets behind an
        older PgBouncer in transaction mode)."""
        if self.name == "psycopg":
            return {"prepare_threshold": None}
        if self.name == "asyncpg":
            # asyncpg still prepares each statement (unnamed with the cache off); a unique name per statement
            # is SQLAlchemy's advice for PgBouncer in case one is named.
            return {"statement_cache_size": 0, "prepared_statement_cache_size": 0,
                    "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__"}
        return {}

    def startup_search_path(self, quoted_schema: str) -> dict[str, Any]:
        """connect_args that start every connection with ``search_path`` set (libpq's ``options``; asyncpg's
        ``server_settings``, which it sends as a startup parameter of its own)."""
        if self.name == "asyncpg":
            return {"server_settings": {"search_path": quoted_schema}}
        # libpq's options: a backslash escapes a space; the value is one search_path element.
        value = quoted_schema.replace("\\", "\\\\").replace(" ", "\\ ")
        return {"options": f"-c search_path={value}"}


DRIVERS: dict[str, Driver] = {d.name: d for d in (
    Driver("psycopg", "postgresql+psycopg", "postgresql+psycopg_async", "psycopg", "psycopg[binary]", True,
           "psycopg 3 prepares a statement at its 5th execution on a connection (prepare_threshold=5)"),
    Driver("psycopg2", "postgresql+psycopg2", "", "psycopg2", "psycopg2-binary", False,
           "psycopg2 never prepares at the protocol level"),
    Driver("asyncpg", "", "postgresql+asyncpg", "asyncpg", "asyncpg", True,
           "asyncpg prepares every statement and keeps the named ones in its statement cache (100 by default)"),
)}
DEFAULT_DRIVER = "psycopg"
#: SQLAlchemy's driver names -> ours
_BY_DBAPI = {"psycopg": "psycopg", "psycopg_async": "psycopg", "psycopg2": "psycopg2", "psycopg2cffi": "psycopg2",
             "asyncpg": "asyncpg"}


def driver(name: str) -> Driver:
    """The driver called ``name``; an unknown one is refused with the list."""
    try:
        return DRIVERS[name]
    except KeyError:
        raise UsageError(f"Unknown driver {name!r}.", fix=[f"use some of: {', '.join(DRIVERS)}"]) from None


def check_installed(name: str) -> Driver:
    """The driver, after checking that its module imports (else: what to install)."""
    found = driver(name)
    try:
        __import__(found.module)
    except ImportError as exc:
        raise UsageError(f"The {name} driver is not installed ({exc}).",
                         fix=[f"pip install {found.package}", "or pip install 'tenant-isolation-harness[drivers]'"]
                         ) from None
    return found


def installed_drivers() -> str:
    """The drivers this interpreter can import, with their versions: "psycopg 3.2.9, asyncpg 0.30.0"."""
    found = []
    for item in DRIVERS.values():
        try:
            module = __import__(item.module)
        except ImportError:
            continue
        found.append(f"{item.name} {str(getattr(module, '__version__', '?')).split()[0]}")
    return ", ".join(found)


def ran_on(asked: str, used: str) -> bool:
    """Did a layer given driver ``asked`` run on it? ``used`` is :func:`used_by`'s answer ("" when no engine
    was seen: nothing says otherwise)."""
    return not used or _BY_DBAPI.get(used.split()[0], used.split()[0]) == asked


def of_url(url: URL) -> Driver:
    """The driver a URL names (a bare ``postgresql://`` is SQLAlchemy's default driver, psycopg2)."""
    return DRIVERS[_BY_DBAPI.get(url.get_driver_name(), DEFAULT_DRIVER)]


def used_by(engine: Any) -> str:
    """The driver an engine (sync or async) really uses, as SQLAlchemy names it, with the version of the
    driver's module (e.g. ``asyncpg 0.30.0``); "" for something that is not an engine."""
    dialect = getattr(getattr(engine, "sync_engine", engine), "dialect", None)
    if dialect is None:
        return ""
    name = getattr(dialect, "driver", "") or ""
    known = DRIVERS.get(_BY_DBAPI.get(name, ""))
    module = sys.modules.get(known.module) if known is not None else None
    version = str(getattr(module, "__version__", "") or "").split()
    return f"{name} {version[0]}" if version else name


# -- engines and sessions for the built-ins -----------------------------------------------------------------
def make_engine(url: URL, *, prepare: bool = False, connect_args: dict[str, Any] | None = None,
                **kwargs: Any) -> Any:
    """An engine on the URL's driver: a sync Engine, or an AsyncEngine for an async-only driver (asyncpg).
    ``prepare=False`` turns the driver's protocol-level prepares off."""
    found = of_url(url)
    args = {**({} if prepare else found.no_prepare()), **(connect_args or {})}
    if found.is_async_only or url.get_dialect().is_async:
        from sqlalchemy.ext.asyncio import create_async_engine

        return create_async_engine(found.url(url, asynchronous=True), connect_args=args, **kwargs)
    return create_engine(url, connect_args=args, **kwargs)


def is_async(engine: Any) -> bool:
    return type(engine).__name__ == "AsyncEngine"


def as_async(engine: Any) -> Any:
    """The AsyncEngine of an engine on an async driver (a Session's bind is the sync engine inside it)."""
    if is_async(engine):
        return engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    return AsyncEngine(engine)


def open_session(bind: Any, *, on_open: Callable[[Session], None] | None = None,
                 on_begin: Callable[[Session, Any, Any], None] | None = None,
                 session_class: type[Session] = Session, **session_kwargs: Any):
    """A request's session on ``bind`` (an Engine or AsyncEngine, or one with execution options): a
    context manager yielding a Session, or an async one yielding an AsyncSession on an async engine.
    ``on_open`` runs on the (sync) session once it is open; ``on_begin`` listens to its ``after_begin``."""
    if is_async(bind):
        return _async_session(bind, on_open, on_begin, session_class, session_kwargs)
    return _sync_session(bind, on_open, on_begin, session_class, session_kwargs)


@contextlib.contextmanager
def _sync_session(bind, on_open, on_begin, session_class, session_kwargs) -> Iterator[Session]:
    with session_class(bind, **session_kwargs) as session:
        if on_begin is not None:
            event.listen(session, "after_begin", on_begin)
        if on_open is not None:
            on_open(session)
        yield session


@contextlib.asynccontextmanager
async def _async_session(bind, on_open, on_begin, session_class, session_kwargs):
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(bind, sync_session_class=session_class, **session_kwargs) as session:
        if on_begin is not None:
            event.listen(session.sync_session, "after_begin", on_begin)
        if on_open is not None:
            await session.run_sync(on_open)
        yield session


def close_engine(engine: Any):
    """Dispose of an engine: a coroutine for an AsyncEngine (the harness awaits it on the engine's loop)."""
    if is_async(engine):
        return engine.dispose()
    engine.dispose()
    return None


# -- what the harness reads of the layer's connections -----------------------------------------------------
def sqlstate_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error (psycopg's ``sqlstate``, psycopg2's ``pgcode``, asyncpg's ``sqlstate``,
    also through SQLAlchemy's asyncpg adapter, whose error wraps asyncpg's as its cause).

    Only what an error wraps is followed (``orig``, ``__cause__``), never the error that was being handled
    when it was raised (``__context__``): a connection that broke during the rollback of a deliberate
    division by zero is a broken connection, not a 22012."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for attribute in ("sqlstate", "pgcode"):
            value = getattr(exc, attribute, None)
            if isinstance(value, str) and len(value) == 5:
                return value
        exc = getattr(exc, "orig", None) or exc.__cause__
    return None


def in_transaction(driver_connection: Any) -> bool:
    """Is a raw driver connection inside a transaction block (idle in transaction, or aborted)?"""
    info = getattr(driver_connection, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is not None:  # psycopg 3 (an enum) and psycopg2 (an int): 0 is idle
        return int(status) != 0
    check = getattr(driver_connection, "is_in_transaction", None)  # asyncpg
    if callable(check):
        return bool(check())
    return False
