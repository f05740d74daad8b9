"""The team's own pooler settings: read from their production file and ``--<pooler>-set NAME=VALUE``.

A production pooler differs from the harness's in settings that change what clients see of a pooled
connection (what is reset between clients, which startup parameters follow a client, when server connections
are replaced, how long a client may wait or idle); those are carried over into the stack's pooler. How the
harness's pooler listens, logs in, logs and routes stays the harness's own.

Each pooler speaks its own dialect (:class:`PoolerDialect`): which names are carried over and which kept,
how a value is checked and written, how its file reads. One module per pooler declares its dialect
(:mod:`.pgbouncer`, :mod:`.pgpool`, :mod:`.pgagroal`); reading, parsing, misspelling checks and the fold of
file and ``--<pooler>-set`` are in :mod:`.dialect`, once. This package knows names and text only (no process): it is read
by the configuration (errors before anything starts) and by the stack's pooler parts. Whether the chosen
binary knows a name and takes a value is checked against the binary itself (``harness.stack``).
"""

from __future__ import annotations

from typing import Any

from harness.pooler_settings.dialect import (INCLUDE_DEPTH, MISSPELLING_CUTOFF, Found, PoolerDialect,
                                             PoolerSettings, included, read_ini, read_text)
from harness.pooler_settings.pgagroal import PGAGROAL
from harness.pooler_settings.pgbouncer import PGBOUNCER
from harness.pooler_settings.pgpool import PGPOOL

__all__ = ["INCLUDE_DEPTH", "MISSPELLING_CUTOFF", "Found", "PoolerDialect", "PoolerSettings", "included", "read_ini",
           "read_text", "PGAGROAL", "PGBOUNCER", "PGPOOL", "dialects", "dialect_of", "requested_for"]


# -- every pooler -------------------------------------------------------------------------------------------------

def dialects() -> dict[str, PoolerDialect]:
    """Each pooler kind's dialect."""
    return {dialect.kind: dialect for dialect in (PGBOUNCER, PGPOOL, PGAGROAL)}


def dialect_of(pooler: str) -> PoolerDialect:
    known = dialects()
    if pooler not in known:
        raise ValueError(f"pooler {pooler!r}: the harness knows {', '.join(known)}")
    return known[pooler]


def requested_for(config: Any, pooler: str) -> PoolerSettings:
    """The team's settings for a pooler of this kind (``pgbouncer``, ``pgpool`` or ``pgagroal``): its
    ``--<kind>-config`` file, then each ``--<kind>-set`` (a later one wins). The configuration checked them
    when it was resolved; a stack calls this for the pooler it starts. ``config``: a
    :class:`~harness.config.HarnessConfig` (not imported: the configuration imports this package)."""
    dialect = dialect_of(pooler)
    return dialect.requested(getattr(config, dialect.config_setting), getattr(config, dialect.set_setting))
