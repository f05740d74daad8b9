"""The team's own PgBouncer settings: read from their pgbouncer.ini and ``--pgbouncer-set NAME=VALUE``.

A production PgBouncer differs from the harness's in settings that change what
clients see (reset queries, tracked parameters, prepared statements, timeouts,
pool sizes); those are carried over into both of the stack's PgBouncers. How the
harness's PgBouncers listen, log in, log and route stays the harness's own.

This module knows names and text only (no process): it is read by the
configuration (errors before anything starts) and by the stack's PgBouncers.
Whether the chosen PgBouncer knows a name is checked against the binary itself
(:func:`harness.stack.pgbouncer.known_settings`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable

from harness.errors import UsageError

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

#: Sections of the team's file other than [pgbouncer]: the harness's [databases] point at its own server.
SECTION = "pgbouncer"

#: Settings the harness sets itself that decide what clients see: read back (SHOW CONFIG) and reported
#: with the carried-over ones, whether the team gave them or not (those a PgBouncer does not know are left out).
REPORTED_SETTINGS = ("pool_mode", "default_pool_size", "server_reset_query", "server_reset_query_always",
                     "max_prepared_statements", "track_extra_parameters")

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
INCLUDE_DEPTH = 10


@dataclasses.dataclass(frozen=True)
class PoolerSettings:
    """The team's PgBouncer settings, in the order they are applied (a later one wins)."""

    #: name -> value, as written into both PgBouncers' [pgbouncer] section
    values: dict[str, str]
    #: name -> where it came from ("pgbouncer.ini:12", "--pgbouncer-set")
    origins: dict[str, str]
    #: names of the team's file the harness keeps its own values of
    ignored: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.values)

    def describe(self) -> str:
        """One line for the report: what was carried over, from where, and what was ignored."""
        carried = ", ".join(f"{name} = {value}" for name, value in self.values.items()) or "none"
        ignored = f"; ignored (the harness's own): {', '.join(self.ignored)}" if self.ignored else ""
        return f"carried over: {carried}{ignored}"


def split_assignments(value: Any) -> tuple[str, ...]:
    """``--pgbouncer-set`` items: each ``NAME=VALUE``.

    A list (repeated option, [tool.harness] list) gives one item each; a string
    (HARNESS_PGBOUNCER_SET) is comma-separated, and a piece that does not start
    with ``NAME=`` continues the value before it, so a list-valued setting keeps
    its commas: ``ignore_startup_parameters=extra_float_digits,options,query_timeout=5``.
    """
    if isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    else:
        items = []
        for piece in str(value).split(","):
            if items and not _NAME.match(piece):
                items[-1] += "," + piece
            else:
                items.append(piece)
        items = [item.strip() for item in items]
    parsed = []
    for item in (item for item in items if item):
        name, value = parse_assignment(item)
        parsed.append(f"{name}={value}")
    return tuple(parsed)


def parse_assignment(item: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (name, value); the name must be one the harness carries over."""
    match = _NAME.match(item)
    if not match:
        raise ValueError(f"expected NAME=VALUE (a PgBouncer setting), got {item!r}")
    name, value = match.group(1).lower(), item[match.end():].strip()
    _check_value(name, value, "--pgbouncer-set")
    if name not in CARRIED_SETTINGS:
        raise ValueError(f"{name} is not a setting the harness carries over"
                         + (" (the harness keeps its own)" if name in KEPT_SETTINGS else "")
                         + f"; it carries over: {', '.join(CARRIED_SETTINGS)}")
    return name, value


def _check_value(name: str, value: str, where: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{where}: the value of {name} holds a line break")


def read_ini(path: Path) -> tuple[dict[str, tuple[str, str]], bool]:
    """The [pgbouncer] section of a pgbouncer.ini: name -> (value, "file:line"), and whether it has one.
    Every other section is there by its name in brackets ("[databases]"), with no value.

    As PgBouncer reads it: ``;`` and ``#`` start a comment line, names are
    case-insensitive, a later line wins, ``%include FILE`` reads another file
    (relative to the including file's folder) in place.
    """
    found: dict[str, tuple[str, str]] = {}
    has_section = _read_into(path, found, [None], 0)
    return found, has_section


def _read_into(path: Path, found: dict[str, tuple[str, str]], section: list[str | None], depth: int) -> bool:
    if depth > INCLUDE_DEPTH:
        raise UsageError(f"{path}: %include nests more than {INCLUDE_DEPTH} deep.",
                         fix=["check the %include lines for a loop"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--pgbouncer-config {path}: the file cannot be read ({exc}).",
                         fix=["give the path of a readable pgbouncer.ini (the one your production PgBouncer uses)"]
                         ) from exc
    has_section = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        where = f"{path}:{number}"
        if line.lower().startswith("%include"):
            included = Path(line[len("%include"):].strip()).expanduser()
            has_section |= _read_into(included if included.is_absolute() else path.parent / included,
                                      found, section, depth + 1)
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UsageError(f"{where}: {raw.strip()!r} is not a section header.",
                                 fix=["fix the line: a section is written [pgbouncer]"])
            section[0] = line[1:-1].strip().lower()
            has_section |= section[0] == SECTION
            continue
        if section[0] != SECTION:
            found.setdefault(f"[{section[0]}]", ("", where))  # [databases], [users], [peers]: the harness's own
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{where}: {raw.strip()!r} is not a NAME = VALUE line.",
                             fix=["fix the line, or give the settings with --pgbouncer-set NAME=VALUE"])
        found[name.strip().lower()] = (value.strip(), where)
    return has_section


def from_file(path: Path) -> PoolerSettings:
    """The carried-over settings of a team's pgbouncer.ini; a setting in neither list is an error."""
    if not path.is_file():
        raise UsageError(f"--pgbouncer-config {path}: no such file.",
                         fix=["give the path of your production pgbouncer.ini"])
    found, has_section = read_ini(path)
    if not has_section:
        raise UsageError(f"--pgbouncer-config {path}: the file has no [pgbouncer] section.",
                         checked=[f"{path}: sections read"],
                         fix=["give the pgbouncer.ini your PgBouncer runs with (its settings are in [pgbouncer])",
                              "or give single settings with --pgbouncer-set NAME=VALUE"])
    refused = sorted(name for name in found if name not in CARRIED_SETTINGS and name not in KEPT_SETTINGS
                     and not name.startswith("["))
    if refused:
        raise UsageError(
            f"--pgbouncer-config {path}: not carried over: {', '.join(refused)}.",
            checked=[f"{name} at {found[name][1]}" for name in refused],
            fix=["remove them from the file given to the harness (a copy of yours), or give a supported setting "
                 "with --pgbouncer-set NAME=VALUE instead",
                 f"carried over: {', '.join(CARRIED_SETTINGS)}",
                 f"ignored, the harness keeps its own: {', '.join(KEPT_SETTINGS)}"])
    values, origins = {}, {}
    for name, (value, where) in found.items():
        if name in CARRIED_SETTINGS:
            try:
                _check_value(name, value, where)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            values[name], origins[name] = value, where
    ignored = [name for name in found if name.startswith("[")] + sorted(name for name in found if name in KEPT_SETTINGS)
    return PoolerSettings(values, origins, tuple(ignored))


def requested(config_file: Path | None, assignments: Iterable[str]) -> PoolerSettings:
    """The settings the team asked for: the file's, then each --pgbouncer-set (a later one wins)."""
    base = from_file(config_file) if config_file is not None else PoolerSettings({}, {})
    values, origins = dict(base.values), dict(base.origins)
    for item in assignments:
        name, value = parse_assignment(item)
        values.pop(name, None)  # re-inserted last: the order they are applied in
        values[name], origins[name] = value, "--pgbouncer-set"
    return PoolerSettings(values, origins, base.ignored)
