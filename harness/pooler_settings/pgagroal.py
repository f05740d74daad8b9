"""The team's own pgagroal settings: read from their pgagroal.conf and ``--pgagroal-set NAME=VALUE``.

Carried over into the pgagroals of a deployment that runs them (``trixie-pgagroal``), after the harness's own
lines (pgagroal takes the last line of a name): :data:`PGAGROAL_CARRIED`. pgagroal 1.6.0 refuses nothing: a
name it does not know, and a number it cannot read (``idle_timeout = 2m``), give ``pgagroal: Unknown key
<NAME> with value <VALUE> in section [pgagroal]`` on stderr and it runs with its default; ``validation =
bogus`` and ``pipeline = bogus`` run as ``off`` and ``auto`` without a word; ``max_connections`` above 10000
runs as 10000 (a WARN). So values are checked here by kind, and
:func:`harness.stack.pgagroal.refuse_unknown_pgagroal_settings` runs a throwaway pgagroal with them before
anything starts and reads back what it runs with.

``pipeline`` sets the session route's pipeline (``performance``, ``session`` or ``auto``, :func:`session_pipeline`);
``pipeline = transaction`` is what the transaction route runs anyway and leaves the session route on ``auto``.
``disconnect_client`` goes to the session route only (the transaction pipeline refuses to start with it).
"""

from __future__ import annotations

from pathlib import Path

from harness.pooler_settings.dialect import Found, PoolerDialect, PoolerSettings, read_ini

__all__ = ["NOT_IN_TRANSACTION", "PGAGROAL", "PGAGROAL_CARRIED", "PGAGROAL_KEPT", "PGAGROAL_REPORTED", "PIPELINES",
           "PoolerSettings", "SECTION", "SESSION_PIPELINES", "check_pgagroal_value", "from_pgagroal_file",
           "parse_pgagroal_assignment", "pgagroal_requested", "read_pgagroal_conf", "session_pipeline",
           "split_pgagroal_assignments"]

#: pool_mode -> the pipeline that serves it (the session route's may be changed by the team's ``pipeline``).
#: ``auto`` is pgagroal's default: ``performance``, or ``session`` when TLS, failover or ``disconnect_client``
#: is on (configuration.c), as it would run for the team.
PIPELINES = {"session": "auto", "transaction": "transaction"}
#: the team's settings the transaction pipeline refuses to start with ("Transaction pipeline does not support
#: disconnect_client"): carried to the session route only
NOT_IN_TRANSACTION = ("disconnect_client", "disconnect_client_force")
#: the pipelines a team's ``pipeline`` may give the session route (``transaction`` is the transaction route's)
SESSION_PIPELINES = ("performance", "session", "auto")

_BOOL, _COUNT, _SECONDS, _CHOICE = "a boolean", "a count", "seconds", "one of"

#: pgagroal settings carried over from the team's pgagroal.conf (and allowed in --pgagroal-set), with the kind
#: of value each takes: each changes what a client sees of a pooled connection: the pipeline (what is reset,
#: whether a client keeps its server connection), validation, when server connections are closed or clients
#: cut off, how long a client waits, the pool size, prepared statements in the transaction pipeline.
_CARRIED_KINDS: dict[str, str] = {
    "pipeline": _CHOICE,
    "validation": _CHOICE,
    "background_interval": _SECONDS,
    "idle_timeout": _SECONDS,
    "max_connection_age": _SECONDS,
    "blocking_timeout": _SECONDS,
    "disconnect_client": _SECONDS,
    "disconnect_client_force": _BOOL,
    "max_connections": _COUNT,
    "track_prepared_statements": _BOOL,
    "max_retries": _COUNT,
    "authentication_timeout": _SECONDS,
}
_CHOICES = {"pipeline": ("auto", "performance", "session", "transaction"),
            "validation": ("off", "foreground", "background")}
PGAGROAL_CARRIED: tuple[str, ...] = tuple(_CARRIED_KINDS)

#: Settings of the team's file the harness keeps its own values of: how its pgagroal listens, logs, whom it
#: lets in and how, its server, TLS, failover, metrics and management. Listed as ignored, not an error.
PGAGROAL_KEPT: tuple[str, ...] = (
    "host", "port", "unix_socket_dir", "pidfile", "metrics", "metrics_cache_max_age", "metrics_cache_max_size",
    "management", "log_type", "log_level", "log_path", "log_rotation_age", "log_rotation_size",
    "log_line_prefix", "log_mode", "log_connections", "log_disconnections", "allow_unknown_users", "auth_query",
    "failover", "failover_script", "tls", "tls_cert_file", "tls_key_file", "tls_ca_file", "libev",
    "buffer_size", "keep_alive", "nodelay", "non_blocking", "backlog", "hugepage", "tracker",
    "update_process_title",
)

#: Settings that decide what clients see, read back (``pgagroal-cli conf get``) and reported whether the team
#: gave them or not. ``pipeline`` reads back as the one running (``auto`` gives ``performance`` or ``session``).
PGAGROAL_REPORTED: tuple[str, ...] = (
    "pipeline", "max_connections", "validation", "idle_timeout", "blocking_timeout", "disconnect_client",
)

#: the section of the team's file that is read: the server sections (``[primary]``) are the harness's own
SECTION = "pgagroal"
_TRUE, _FALSE = ("on", "yes", "1", "true"), ("off", "no", "0", "false")


def _check(name: str, value: str) -> str:
    # pgagroal would not say what it did not take: it runs with its default (see the module docstring).
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    kind = _CARRIED_KINDS[name]
    if kind == _BOOL:
        if text.lower() in _TRUE:
            return "on"
        if text.lower() in _FALSE:
            return "off"
        raise ValueError(f"{name} = {value!r} is not a boolean (pgagroal reads on, yes, 1, true, off, no, 0, false)")
    if kind in (_COUNT, _SECONDS):
        if not text.isdigit():
            unit = " (pgagroal 1.6 reads whole seconds, no unit)" if kind == _SECONDS else ""
            raise ValueError(f"{name} = {value!r} is not a whole number{unit}")
        if name == "max_connections" and not 1 <= int(text) <= 10000:
            raise ValueError(f"max_connections = {text} is outside 1 .. 10000 (pgagroal runs with 10000 above it)")
        return str(int(text))
    choices = _CHOICES[name]
    if text.lower() not in choices:
        raise ValueError(f"{name} = {value!r} is not one of {', '.join(choices)} (pgagroal would run with its "
                         "default without a word)")
    return text.lower()


def read_pgagroal_conf(path: Path) -> Found:
    """The [pgagroal] section of a pgagroal.conf: name -> (value, "file:line"); a later line wins.

    As pgagroal reads it: ``#`` and ``;`` start a comment (also after a value), a value may be in single or
    double quotes. Server sections (``[primary]``...) are there by their name in brackets, with no value.
    """
    return _read(path)[0]


def _read(path: Path) -> tuple[Found, bool]:
    return read_ini(path, PGAGROAL, inline_comments=True)


PGAGROAL = PoolerDialect(
    kind="pgagroal", carried=PGAGROAL_CARRIED, kept=PGAGROAL_KEPT, check=_check, read=_read,
    file_name="pgagroal.conf", section=SECTION,
    on_unknown="pgagroal would run without it (it logs 'Unknown key' and goes on)")

# What the configuration, the stack and the tests call (one implementation: PoolerDialect's).
check_pgagroal_value = PGAGROAL.check_value
parse_pgagroal_assignment = PGAGROAL.parse_assignment
split_pgagroal_assignments = PGAGROAL.split_assignments
from_pgagroal_file = PGAGROAL.from_file
pgagroal_requested = PGAGROAL.requested


def session_pipeline(extra: PoolerSettings | None) -> str:
    """The session route's pipeline: the team's ``pipeline`` when it is one for sessions, else the default."""
    wanted = (extra.values if extra else {}).get("pipeline", "")
    return wanted if wanted in SESSION_PIPELINES else PIPELINES["session"]
