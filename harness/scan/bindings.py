"""The ways code binds a tenant through search_path, and the calls that carry SQL.

Each form here changes search_path on the server connection itself, which a
pooler hands to the next client: SQL (``SET search_path``, ``SET SCHEMA``,
``set_config``), libpq's ``options=-c search_path=...`` in ``connect_args`` or a
DSN, asyncpg's ``server_settings={"search_path": ...}``, the legacy helpers and
django-tenants' calls. A project function whose body does any of it binds the
tenant at each of its call sites (see :mod:`harness.scan.scanner`).
"""

from __future__ import annotations

import ast
import re

# Calls that run the SQL string they get first (DB-API, asyncpg, SQLAlchemy, alembic's op.execute);
# the parameters follow it.
SQL_RUNNERS = frozenset({"execute", "executemany", "exec_driver_sql", "fetch", "fetchrow", "fetchval", "prepare"})
# Calls that make a SQL statement of a string: sqlalchemy text() and DDL(), psycopg sql.SQL().
SQL_WRAPPERS = frozenset({"text", "DDL", "SQL"})
SQL_KEYWORDS = ("statement", "query", "sql", "operation")  # the SQL passed by keyword
PARAM_KEYWORDS = ("parameters", "params", "args", "vars")

LEGACY_HELPERS = frozenset({"set_user_schema", "set_user_search_path", "commit_and_restore_path"})
LEGACY_PREFIXES = ("set_search_path", "restore_search_path")
# django-tenants / django-tenant-schemas: each sets search_path on the shared connection.
DJANGO_CALLS = frozenset({"set_tenant", "set_schema", "set_schema_to_public", "schema_context", "tenant_context"})
# ... judged only in a module that imports django's connection or one of those packages: elsewhere a
# set_tenant() is the project's own, and the scan follows what it does instead of guessing from its name.
DJANGO_MODULES = ("django_tenants", "tenant_schemas", "django.db")


def is_django_import(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in DJANGO_MODULES)

# Calls whose string arguments are connection strings (DSNs, URLs, libpq keyword strings).
CONNECT_CALLS = frozenset({"connect", "create_engine", "create_async_engine", "create_pool", "make_url",
                           "ConnectionPool", "AsyncConnectionPool", "SimpleConnectionPool", "ThreadedConnectionPool",
                           "Pool", "AsyncEngine", "URL"})
DSN_KEYWORDS = frozenset({"dsn", "url", "conninfo", "database_url"})
# libpq: options='-c search_path=x', '-csearch_path=x', '--search_path=x', URL-encoded in a DSN's query.
LIBPQ_SEARCH_PATH = re.compile(r"(?:-c(?:\s|%20|\+)*|--)(?P<anchor>search_path)(?:\s*=|%3D)", re.I)


def is_legacy_helper(name: str) -> bool:
    return name in LEGACY_HELPERS or name.startswith(LEGACY_PREFIXES)


def sql_argument(call: ast.Call) -> ast.expr | None:
    """The SQL a runner or wrapper call gets: its first argument, or a ``statement=``-like keyword."""
    if call.args and not isinstance(call.args[0], ast.Starred):
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg in SQL_KEYWORDS), None)


def constant_key(node: ast.expr | None) -> str | None:
    """A dict key or argument that is a string constant, folded to lower case."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip().lower()
    return None


def search_path_key(node: ast.Dict) -> ast.expr | None:
    """The ``"search_path"`` key of a dict literal (asyncpg server_settings), if it has one."""
    return next((k for k in node.keys if constant_key(k) == "search_path"), None)


def bound_parameter(runner: ast.Call, param: str | int, extra: dict[str, ast.expr]) -> str | None:
    """The constant a runner binds to ``param`` (a name, or a position), lower case; None if not a constant.

    Parameters come as the runner's second argument (a dict literal for names, a
    tuple or list for positions), as asyncpg's further positional arguments, or
    through ``text(...).bindparams(name=...)`` (``extra``).
    """
    if isinstance(param, str) and param in extra:
        return constant_key(extra[param])
    given = runner.args[1:] or [k.value for k in runner.keywords if k.arg in PARAM_KEYWORDS]
    if not given:
        return None
    first = given[0]
    if isinstance(param, str) and isinstance(first, ast.Dict):
        return next((constant_key(v) for k, v in zip(first.keys, first.values) if constant_key(k) == param.lower()),
                    None)
    if isinstance(param, int):
        values = first.elts if isinstance(first, (ast.Tuple, ast.List)) and len(given) == 1 else given
        return constant_key(values[param]) if param < len(values) else None
    return None
