"""The team's own PgBouncer settings: read from their pgbouncer.ini and ``--pgbouncer-set NAME=VALUE``.

Carried over into both of the stack's PgBouncers, after the harness's own lines (PgBouncer takes the last line
of a name). Whether the chosen PgBouncer knows a name is checked against the binary itself
(:func:`harness.stack.pgbouncer.known_settings`): PgBouncer refuses to start with a name it does not know.
"""

from __future__ import annotations

from pathlib import Path

from harness.pooler_settings.dialect import Found, PoolerDialect, PoolerSettings, read_ini

__all__ = ["CARRIED_SETTINGS", "KEPT_SETTINGS", "PGBOUNCER", "PoolerSettings", "REPORTED_SETTINGS", "SECTION",
           "from_file", "parse_assignment", "read_pgbouncer_ini", "requested", "split_assignments"]

#: Settings of the [pgbouncer] section carried over from the team's file (and allowed in --pgbouncer-set):
#: each changes what a client sees of a pooled connection: what is reset between clients, which startup
#: parameters follow a client, prepared statements, which server connection a client gets and when it is
#: closed, how long a client may wait or idle. Applied to both PgBouncers, after the harness's own lines.
CARRIED_SETTINGS = (
    "server_reset_query", "server_reset_query_always", "track_extra_parameters", "max_prepared_statements",
    "ignore_startup_parameters", "server_lifetime", "server_idle_timeout", "server_check_query",
    "server_check_delay", "default_pool_size", "min_pool_size", "reserve_pool_size", "reserve_pool_timeout",
    "max_db_connections", "max_user_connections", "query_timeout", "query_wait_timeout",
    "idle_transaction_timeout", "client_idle_timeout", "server_connect_timeout", "server_login_retry",
    "application_name_add_host", "stats_period",
)

#: Settings of the team's file the harness keeps its own values of: how its PgBouncers listen, whom they
#: let in (and how), where they log, and the pool_mode of each route. Listed as ignored, not an error.
KEPT_SETTINGS = (
    "listen_addr", "listen_port", "unix_socket_dir", "auth_type", "auth_file", "admin_users", "stats_users",
    "logfile", "pidfile", "pool_mode",
)

#: The section of the team's file that is read: the harness's [databases] point at its own server, and its
#: [users] and [peers] are its own.
SECTION = "pgbouncer"

#: Settings the harness sets itself that decide what clients see: read back (SHOW CONFIG) and reported
#: with the carried-over ones, whether the team gave them or not (those a PgBouncer does not know are left out).
REPORTED_SETTINGS = ("pool_mode", "default_pool_size", "server_reset_query", "server_reset_query_always",
                     "max_prepared_statements", "track_extra_parameters")


def _check(name: str, value: str) -> str:
    # PgBouncer's own parser takes the rest of the line; what it refuses, its binary says at start
    # (harness.stack.pgbouncer.settings_refusal).
    return value


def read_pgbouncer_ini(path: Path) -> tuple[Found, bool]:
    """The [pgbouncer] section of a pgbouncer.ini: name -> (value, "file:line"), and whether it has one.
    Every other section is there by its name in brackets ("[databases]"), with no value.

    As PgBouncer reads it: ``;`` and ``#`` start a comment line, names are case-insensitive, a later line
    wins, ``%include FILE`` reads another file (relative to the including file's folder) in place.
    """
    return read_ini(path, PGBOUNCER, include="%include")


#: PgBouncer refuses to start with a setting it does not know, so a name in neither list is an error here too
#: (the harness's PgBouncers would not start with it either).
PGBOUNCER = PoolerDialect(
    kind="pgbouncer", carried=CARRIED_SETTINGS, kept=KEPT_SETTINGS, check=_check, read=read_pgbouncer_ini,
    file_name="pgbouncer.ini", section=SECTION, on_unknown="PgBouncer would refuse to start with it",
    fold_case=True, refuse_others=True)

# What the configuration, the stack and the tests call (one implementation: PoolerDialect's).
split_assignments = PGBOUNCER.split_assignments
parse_assignment = PGBOUNCER.parse_assignment
from_file = PGBOUNCER.from_file
requested = PGBOUNCER.requested
