"""The team's own Pgpool-II settings: read from their pgpool.conf and ``--pgpool-set NAME=VALUE``.

Carried over into the Pgpool-II of a deployment that runs one (``bookworm-pgpool``), after the harness's own
lines (Pgpool-II takes the last line of a name): :data:`PGPOOL_CARRIED`. Pgpool-II does not refuse a name it
does not know: it logs ``INFO: unrecognized configuration parameter`` (below its default log_min_messages) and
runs without it; it reads names case-sensitively; it reads any word as ``on`` for a boolean
(``connection_cache = maybe`` runs with on). So names and booleans are checked here, and the values are
checked by the binary itself before anything starts
(:func:`harness.stack.pgpool.refuse_unknown_pgpool_settings`).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UsageError
from harness.pooler_settings.dialect import Found, PoolerDialect, PoolerSettings, included, read_text

__all__ = ["PGPOOL", "PGPOOL_CARRIED", "PGPOOL_KEPT", "PGPOOL_REPORTED", "PoolerSettings", "check_pgpool_value",
           "from_pgpool_file", "parse_bool", "parse_pgpool_assignment", "pgpool_requested", "read_pgpool_conf",
           "split_pgpool_assignments"]

_BOOL, _COUNT, _SECONDS, _TEXT = "a boolean", "a count", "a time", "a string"

#: Pgpool-II settings carried over from the team's pgpool.conf (and allowed in --pgpool-set), with the kind of
#: value each takes: each changes what a client sees of a pooled connection: what is reset when a client
#: leaves, whether and how many backends a child caches, when children and cached backends are replaced or
#: clients cut off, and the query cache (it answers a query without asking the backend: with
#: ``memory_cache_enabled = on`` one tenant's rows reach another, see :mod:`harness.stack.pgpool`).
_CARRIED_KINDS: dict[str, str] = {
    "reset_query_list": _TEXT,
    "connection_cache": _BOOL,
    "max_pool": _COUNT,
    "child_life_time": _SECONDS,
    "connection_life_time": _SECONDS,
    "child_max_connections": _COUNT,
    "client_idle_limit": _SECONDS,
    "memory_cache_enabled": _BOOL,
    "memqcache_expire": _SECONDS,
    "cache_safe_memqcache_table_list": _TEXT,
    "cache_unsafe_memqcache_table_list": _TEXT,
}
PGPOOL_CARRIED: tuple[str, ...] = tuple(_CARRIED_KINDS)

#: Settings of the team's file the harness keeps its own values of: how its Pgpool-II listens, whom it lets in
#: and how, which backend it pools for and in which clustering mode, its pool size (``num_init_children``: at
#: least the session pool of the harness's clients), where it logs and keeps its files, and the size of its
#: query cache. Listed as ignored, not an error (a numbered one too: ``backend_hostname0``).
PGPOOL_KEPT: tuple[str, ...] = (
    "listen_addresses", "port", "socket_dir", "unix_socket_directories", "unix_socket_permissions",
    "pcp_listen_addresses", "pcp_port", "pcp_socket_dir", "pcp_unix_socket_directories", "wd_ipc_socket_dir",
    "backend_clustering_mode", "backend_hostname", "backend_port", "backend_weight", "backend_flag",
    "backend_data_directory", "backend_application_name", "load_balance_mode", "num_init_children",
    "enable_pool_hba", "pool_passwd", "allow_clear_text_frontend_auth", "authentication_timeout",
    "pid_file_name", "logdir", "log_destination", "logging_collector", "log_directory", "log_filename",
    "log_min_messages", "memqcache_oiddir", "memqcache_total_size", "memqcache_max_num_cache",
    "memqcache_method", "use_watchdog", "health_check_period", "sr_check_period", "failover_on_backend_error",
    "ssl",
)

#: Settings that decide what clients see, read back (``PGPOOL SHOW ALL``) and reported whether the team gave
#: them or not.
PGPOOL_REPORTED: tuple[str, ...] = (
    "reset_query_list", "connection_cache", "max_pool", "num_init_children", "child_life_time",
    "connection_life_time", "child_max_connections", "client_idle_limit", "memory_cache_enabled",
)

_SECONDS_VALUE = re.compile(r"\d+\s*(ms|s|min|h|d)?")
_COUNT_VALUE = re.compile(r"\+?\d+")
# pool_config.l (4.3): KEY, then an optional "=", then one STRING ('...', backslash escapes kept as they are),
# UNQUOTED_STRING, INTEGER (with unit letters) or REAL token; "#" starts a comment.
_KEY = r"[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*"
_VALUE = (r"'(?:[^'\n\\]|\\.)*'"
          r"|[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff\-.:/]*"
          r"|[-+]?(?:0x[0-9a-fA-F]+|\d+)[A-Za-z]*"
          r"|[-+]?\d*\.\d*(?:[Ee][-+]?\d+)?")
_CONF_LINE = re.compile(rf"\s*(?P<name>{_KEY})\s*(?:=\s*)?(?P<value>{_VALUE})\s*(?:#.*)?")


def parse_bool(value: str) -> bool | None:
    """A boolean as Pgpool-II (and PostgreSQL) reads one, or None for a word it would misread.

    ``parse_bool_with_len``: true/false/yes/no and their prefixes, on, off (and ``of``), 1, 0; case-insensitive.
    """
    text = value.strip().lower()
    if not text:
        return None
    if text in ("on", "1") or "true".startswith(text) or "yes".startswith(text):
        return True
    if text in ("of", "off", "0") or "false".startswith(text) or "no".startswith(text):
        return False
    return None


def _check(name: str, value: str) -> str:
    if "'" in value or "\\" in value:
        # Pgpool-II's lexer keeps a backslash as it is and has no other way to put a quote into a value.
        raise ValueError(f"the value of {name} holds a quote or a backslash, which pgpool.conf cannot carry")
    kind = _CARRIED_KINDS[name]
    if kind == _BOOL:
        parsed = parse_bool(value)
        if parsed is None:
            raise ValueError(f"{name} = {value!r} is not a boolean; Pgpool-II would read it as on without a word "
                             "(write on or off)")
        return "on" if parsed else "off"
    if kind == _COUNT and not _COUNT_VALUE.fullmatch(value.strip()):
        raise ValueError(f"{name} = {value!r} is not a whole number")
    if kind == _SECONDS and not _SECONDS_VALUE.fullmatch(value.strip()):
        raise ValueError(f"{name} = {value!r} is not a time (seconds, or a number with ms, s, min, h or d)")
    if name == "max_pool" and int(value) < 1:
        # Pgpool-II 4.3 takes 0 (its range starts there) and then serves no client: every connection waits,
        # the log says "failed to get connection info, invalid connection pool number: 0".
        raise ValueError("max_pool = 0 makes Pgpool-II serve no client at all (give 1 or more)")
    return value.strip() if kind != _TEXT else value


def read_pgpool_conf(path: Path) -> Found:
    """A pgpool.conf as Pgpool-II 4.3 reads it: name -> (value, "file:line"); a later line wins.

    ``name = value`` or ``name value``; a value in single quotes is taken without them (a backslash stays);
    ``#`` starts a comment; ``include = 'file'`` reads another file (relative to the including one) in place.
    A line Pgpool-II would not parse is an error here too: it would not start.
    """
    found: Found = {}
    _read_conf_into(path, found, 0)
    return found


def _read_conf_into(path: Path, found: Found, depth: int) -> None:
    text = read_text(path, PGPOOL, depth)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        match = _CONF_LINE.fullmatch(raw)
        if not match:
            raise UsageError(f"{where}: {line!r} is not a line Pgpool-II reads (name = value, a value with "
                             "spaces or semicolons in single quotes); it would not start.",
                             fix=["fix the line, or give the settings with --pgpool-set NAME=VALUE"])
        name, value = match.group("name"), match.group("value")
        if value.startswith("'"):
            value = value[1:-1]
        if name == "include":
            _read_conf_into(included(path, value), found, depth + 1)
            continue
        found.pop(name, None)  # re-inserted last: the order Pgpool-II applies them in
        found[name] = (value, where)


def _read(path: Path) -> tuple[Found, bool]:
    return read_pgpool_conf(path), True  # pgpool.conf has no sections


PGPOOL = PoolerDialect(
    kind="pgpool", carried=PGPOOL_CARRIED, kept=PGPOOL_KEPT, check=_check, read=_read, file_name="pgpool.conf",
    section=None, on_unknown="Pgpool-II would ignore it without a word (it reads names case-sensitively)",
    indexed_kept=True, unquote="'")

# What the configuration, the stack and the tests call (one implementation: PoolerDialect's).
check_pgpool_value = PGPOOL.check_value
parse_pgpool_assignment = PGPOOL.parse_assignment
split_pgpool_assignments = PGPOOL.split_assignments
from_pgpool_file = PGPOOL.from_file
pgpool_requested = PGPOOL.requested
