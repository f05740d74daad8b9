"""Deployments: the PostgreSQL and the pooler a stack runs, named after the Debian suite that ships them.

A deployment is a PostgreSQL version, a pooler (its kind, :data:`POOLERS`, and version) and the pooler's
settings (``--pgbouncer-config`` / ``--pgbouncer-set``, the same for every deployment of a run). The pooled
routes are the pooler's own modes: PgBouncer's and pgagroal's session and transaction, Pgpool-II's session
only. Built in, from Debian's own packages:

- ``bookworm``: PostgreSQL 15, PgBouncer 1.18 (the host's packages on a bookworm host);
- ``trixie``: PostgreSQL 17, PgBouncer 1.24.1;
- ``sid``: PostgreSQL 18, PgBouncer 1.26.1;
- ``bookworm-pgpool``: PostgreSQL 15, Pgpool-II 4.3.5 (connection cache on, load balancing and replication
  off; the host's pgpool2 on a bookworm host), session route only;
- ``trixie-pgagroal``: PostgreSQL 17, pgagroal 1.6.0 (its session and transaction pipelines).

:mod:`harness.stack.deployment_builds` finds where they were built. Without a deployment a stack runs what
the binary settings (``pg_bindir``, ``pgbouncer``) or the image settings name, as before.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

from harness.errors import UsageError

BUILD_COMMAND = "make deployments"


@dataclasses.dataclass(frozen=True)
class Pooler:
    """A kind of pooler: its name in words and the pool modes it offers (the pooled routes it serves)."""

    kind: str
    title: str
    modes: tuple[str, ...]
    #: why a mode it lacks cannot be run, for the stack's not_run
    lacks: str = ""
    #: Debian's package of it (scripts/build-deployment --with PACKAGE adds it to a suite's root)
    package: str = ""


POOLERS: dict[str, Pooler] = {p.kind: p for p in (
    Pooler("pgbouncer", "PgBouncer", ("session", "transaction"), package="pgbouncer"),
    Pooler("pgpool", "Pgpool-II", ("session",),
           lacks="Pgpool-II pools per session only: it has no transaction pooling mode", package="pgpool2"),
    Pooler("pgagroal", "pgagroal", ("session", "transaction"), package="pgagroal"),
)}


def pooler(kind: str) -> Pooler:
    return POOLERS[kind]


@dataclasses.dataclass(frozen=True)
class Deployment:
    name: str
    postgres: str  # the PostgreSQL major version
    pooler_version: str  # the pooler's version
    pooler: str = "pgbouncer"  # its kind (POOLERS)
    suite: str = ""  # the Debian suite whose packages it runs ("" when it is the name)

    @property
    def debian_suite(self) -> str:
        return self.suite or self.name

    @property
    def describe(self) -> str:
        return f"{self.name} (PostgreSQL {self.postgres}, {POOLERS[self.pooler].title} {self.pooler_version})"

    @property
    def build_arguments(self) -> list[str]:
        """scripts/build-deployment's arguments for its root: the suite, and the pooler's package when it is
        not PgBouncer (which every root has)."""
        extra = ["--with", POOLERS[self.pooler].package] if self.pooler != "pgbouncer" else []
        return [self.debian_suite, *extra]

    def build_hint(self) -> str:
        return (f"{BUILD_COMMAND} (or scripts/build-deployment {' '.join(self.build_arguments)}) builds it from "
                "Debian's packages")


DEPLOYMENTS: dict[str, Deployment] = {d.name: d for d in (
    Deployment("bookworm", "15", "1.18.0"),
    Deployment("trixie", "17", "1.24.1"),
    Deployment("sid", "18", "1.26.1"),
    Deployment("bookworm-pgpool", "15", "4.3.5", pooler="pgpool", suite="bookworm"),
    Deployment("trixie-pgagroal", "17", "1.6.0", pooler="pgagroal", suite="trixie"),
)}


def deployment(name: str) -> Deployment:
    try:
        return DEPLOYMENTS[name]
    except KeyError:
        raise UsageError(f"Unknown deployment {name!r}.",
                         fix=[f"use one of: {', '.join(DEPLOYMENTS)} (Debian suites: "
                              + "; ".join(d.describe for d in DEPLOYMENTS.values()) + ")",
                              "or run your own binaries or images without a deployment: HARNESS_PG_BINDIR and "
                              "HARNESS_PGBOUNCER (native), HARNESS_POSTGRES_IMAGE and HARNESS_PGBOUNCER_IMAGE "
                              "(docker)"]) from None




def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


#: the PgBouncer release from which every parameter the server reports is tracked per client
TRACKS_EVERY_REPORTED = (1, 26)


@dataclasses.dataclass(frozen=True)
class DeploymentFacts:
    """What decides a deployment-dependent verdict, as the stack read it: PostgreSQL's major version, the
    pooler's kind and version and the settings it runs with (read back; the transaction route's where the
    pooler has one, else the session route's)."""

    postgres_major: int
    pooler_version: tuple[int, ...]
    settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the driver of the cell (harness.tenancy.drivers): not the deployment's, but the same kind of fact
    driver: str = "psycopg"
    pooler: str = "pgbouncer"

    @classmethod
    def read(cls, versions: Mapping[str, str], pooler_settings: Mapping[str, Mapping[str, str]],
             pooler: str = "pgbouncer") -> DeploymentFacts:
        route_settings = pooler_settings.get("transaction") or next(iter(pooler_settings.values()), {})
        return cls(postgres_major=(_version(versions.get("postgres", "")) or (0,))[0],
                   pooler_version=_version(versions.get(pooler, "")), settings=dict(route_settings), pooler=pooler)

    @property
    def pgbouncer(self) -> tuple[int, ...]:
        """PgBouncer's version; () when the pooler is another."""
        return self.pooler_version if self.pooler == "pgbouncer" else ()

    @property
    def pooler_title(self) -> str:
        return POOLERS[self.pooler].title if self.pooler in POOLERS else self.pooler

    @property
    def tracked(self) -> frozenset[str]:
        """The parameters PgBouncer keeps per client besides its fixed ones (track_extra_parameters)."""
        value = self.settings.get("track_extra_parameters", "")
        return frozenset(p.strip().lower() for p in value.split(",") if p.strip())

    def tracks(self, parameter: str) -> bool:
        """Does PgBouncer keep this parameter per client? 1.26 tracks every parameter the server reports."""
        if self.pooler != "pgbouncer":
            return False
        return parameter in self.tracked or self.pgbouncer >= TRACKS_EVERY_REPORTED

    def describe(self) -> str:
        version = ".".join(map(str, self.pooler_version)) or "?"
        if self.pooler != "pgbouncer":
            shown = ", ".join(f"{name}={self.settings[name]}" for name in DESCRIBED_SETTINGS.get(self.pooler, ())
                              if name in self.settings)
            return f"PostgreSQL {self.postgres_major}, {self.pooler_title} {version}" + (f", {shown}" if shown else "")
        return (f"PostgreSQL {self.postgres_major}, PgBouncer {version}, "
                f"track_extra_parameters={', '.join(sorted(self.tracked)) or '(none)'}"
                f"{' (and every reported parameter)' if self.pgbouncer >= TRACKS_EVERY_REPORTED else ''}, "
                f"max_prepared_statements={self.settings.get('max_prepared_statements', '(unknown setting)')}")


#: per pooler other than PgBouncer: the settings the facts' description names (those the conditions read)
DESCRIBED_SETTINGS: dict[str, tuple[str, ...]] = {
    "pgpool": ("reset_query_list", "connection_cache"),
    "pgagroal": ("pipeline",),
}


@dataclasses.dataclass(frozen=True)
class Condition:
    """A fact of a deployment that turns an expected verdict: its name in the expectation table, what it
    means, and how it is read from the deployment."""

    name: str
    means: str
    holds: Callable[[DeploymentFacts], bool]


def _prepared(facts: DeploymentFacts) -> bool:
    if facts.pooler != "pgbouncer":
        return False
    try:
        return int(facts.settings.get("max_prepared_statements", "0")) > 0
    except ValueError:
        return False


def _pgpool_resets_everything(facts: DeploymentFacts) -> bool:
    """Pgpool-II's reset_query_list ends with DISCARD ALL (its default: ABORT; DISCARD ALL)."""
    return "discard all" in re.sub(r"\s+", " ", facts.settings.get("reset_query_list", "ABORT; DISCARD ALL").lower())


#: in the order the expectation table applies them: a later one that holds wins
CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("pgbouncer_tracks_search_path",
              "PgBouncer tracks search_path (track_extra_parameters names it; PgBouncer 1.26 and later track every "
              "parameter the server reports): it accepts search_path in the startup options and sets each "
              "client's value on the server that runs its transaction, once the server reports it",
              lambda facts: facts.tracks("search_path")),
    Condition("search_path_tracked",
              "PostgreSQL 18 or later reports search_path to clients and PgBouncer tracks it: each client's "
              "search_path follows it from server to server",
              lambda facts: facts.postgres_major >= 18 and facts.tracks("search_path")),
    Condition("driver_never_prepares",
              "the driver never prepares statements at the protocol level (psycopg2): nothing for a pooler to "
              "lose between servers",
              lambda facts: facts.driver == "psycopg2"),
    Condition("driver_prepares_every_statement",
              "the driver prepares every statement and keeps the named ones in its statement cache (asyncpg), "
              "so a request's second transaction already meets a statement prepared on another server",
              lambda facts: facts.driver == "asyncpg"),
    Condition("prepared_statements",
              "PgBouncer routes protocol-level prepared statements (max_prepared_statements > 0, PgBouncer 1.21 "
              "and later)",
              _prepared),
    Condition("pgpool",
              "the pooler is Pgpool-II (session route only): when a client leaves it runs reset_query_list on the "
              "backend and caches it for the next client whose startup packet is the same; a client's startup "
              "parameters (options, search_path) go to the backend opened for it",
              lambda facts: facts.pooler == "pgpool"),
    Condition("pgpool_keeps_session_state",
              "Pgpool-II's reset_query_list has no DISCARD ALL (e.g. reset_query_list = 'ABORT'): a cached "
              "backend keeps the SET search_path, settings, temporary tables, prepared statements, advisory "
              "locks and LISTENs of the client that left, for the next client",
              lambda facts: facts.pooler == "pgpool" and not _pgpool_resets_everything(facts)),
    Condition("pgagroal",
              "the pooler is pgagroal: it opens its server connections itself before clients come (prefill, "
              "which its transaction pipeline needs), so a client's startup parameters (options, search_path) "
              "never reach the server; its session route (pipeline performance) resets a server connection "
              "when its client leaves, its transaction pipeline hands a server to whichever client's "
              "transaction comes next and resets nothing",
              lambda facts: facts.pooler == "pgagroal"),
    Condition("pgagroal_driver_prepares_every_statement",
              "asyncpg behind pgagroal: the driver prepares every statement (as driver_prepares_every_statement), "
              "and pgagroal's transaction pipeline hands a transaction the first free server connection, not the "
              "one its client last used: whether a cached statement meets another server depends on timing",
              lambda facts: facts.pooler == "pgagroal" and facts.driver == "asyncpg"),
)}
