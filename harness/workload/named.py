"""The named scenarios: the migration's validation plan as programs.

Each builds a :class:`Program` over a tenant set. Clients serve several tenants
over time (like web workers), so pooled connections are reused across tenants
and a pass carries coverage evidence.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from harness.checks.steps import step_kind
from harness.tenancy.tenants import HOSTILE_TENANTS
from harness.workload.program import Program, Request


def _rotate(tenants: tuple[str, ...], start: int, count: int) -> list[str]:
    return [tenants[(start + i) % len(tenants)] for i in range(count)]


def _clients(tenants: tuple[str, ...], requests: int, *step_lists: tuple[str, ...]) -> tuple:
    """One client per step list; client c serves ``requests`` requests, tenants rotated from c.

    Clients get step lists of different lengths on purpose: in lockstep, every
    client would get its own connection back after each commit and a leak that
    depends on which pooled connection comes next would hide.
    """
    return tuple(tuple(Request(t, steps) for t in _rotate(tenants, c, requests))
                 for c, steps in enumerate(step_lists))


def fresh_session(tenants: tuple[str, ...]) -> Program:
    """Models use the tenant's schema right after the session is created."""
    return Program(_clients(tenants, 2 * len(tenants), ("orm_select_all", "orm_select_pk")))


def after_commit(tenants: tuple[str, ...]) -> Program:
    """The schema survives commit: reads and writes after commit() stay in the tenant's schema."""
    return Program(_clients(
        tenants[:3], 3,
        ("orm_insert", "commit", "orm_select_all", "orm_select_pk", "orm_update", "commit", "orm_select_all"),
        ("orm_insert", "commit", "orm_select_all")))


def after_rollback(tenants: tuple[str, ...]) -> Program:
    """The schema survives rollback, a failed statement, and a rollback to a savepoint."""
    return Program(_clients(
        tenants[:3], 3,
        ("orm_select_all", "orm_insert", "rollback", "orm_select_all", "orm_select_pk", "fail_and_rollback",
         "orm_select_all", "savepoint", "orm_insert", "rollback_to_savepoint", "orm_select_all", "commit"),
        ("orm_select_pk", "rollback", "orm_select_all")))


def simultaneous_tenants(tenants: tuple[str, ...]) -> Program:
    """Three clients for three tenants at once stay isolated (reads, inserts, updates, deletes)."""
    return Program(_clients(
        tenants[:3], 3,
        ("orm_select_all", "orm_insert", "orm_select_pk", "commit", "orm_select_all", "orm_update",
         "orm_delete", "commit", "orm_select_all"),
        ("orm_insert", "commit", "orm_update", "commit", "orm_select_pk"),
        ("orm_select_pk", "orm_insert", "commit", "orm_select_all")))


def raw_text(tenants: tuple[str, ...]) -> Program:
    """Raw text() queries use the tenant's schema; both styles measured, declared styles gate.

    The row-level security layout has no ``tenant`` schema to qualify with: its program keeps the
    unqualified steps only (see :meth:`NamedScenario.program`)."""
    return Program(_clients(
        tenants[:3], 3,
        ("raw_select_unqualified", "raw_insert_unqualified", "commit", "raw_select_unqualified",
         "raw_select_qualified", "raw_insert_qualified", "commit", "raw_select_unqualified"),
        ("raw_insert_unqualified", "commit", "raw_select_unqualified")))


def pool_state(tenants: tuple[str, ...]) -> Program:
    """A request's connection state does not reach the next request (probed after each request)."""
    return Program(_clients(tenants, len(tenants), ("orm_select_all", "orm_insert", "commit"),
                            ("orm_select_pk", "orm_insert", "commit")), probe="request")


def scheduler(tenants: tuple[str, ...]) -> Program:
    """A scheduler walks every tenant schema while a web client serves requests."""
    jobs = tuple(Request(t, ("job_read", "task_insert", "commit", "task_read", "job_read")) for t in tenants)
    web = tuple(Request(t, ("orm_select_all", "orm_insert", "commit", "orm_select_all"))
                for t in _rotate(tenants, len(tenants) - 1, 2))
    return Program((jobs, web))


def hostile_names(hostile: tuple[str, ...]) -> Program:
    """Tenant names that need quoting reach their own schema (the hostile set; ORM only)."""
    steps = ("orm_select_all", "orm_select_pk", "orm_insert", "commit")
    return Program((tuple(Request(t, steps) for t in tuple(hostile) * 2),))


@dataclasses.dataclass(frozen=True)
class NamedScenario:
    name: str
    title: str
    build: Callable[[tuple[str, ...]], Program]
    hostile: bool = False  # built over the hostile names rather than the tenant set

    def program(self, tenants: tuple[str, ...], hostile: tuple[str, ...] = HOSTILE_TENANTS, *,
                layout: str = "schema") -> Program:
        """The scenario's program over a tenancy's tenants (and its hostile names), for a layout: without
        the steps that layout cannot run (their declaration's ``layouts`` leave it out)."""
        return for_layout(self.build(tuple(hostile) if self.hostile else tenants), layout)


def for_layout(program: Program, layout: str) -> Program:
    """The program without the steps ``layout`` cannot run. Named programs have no schedule (round robin),
    so dropping steps leaves a valid interleaving."""
    assert program.schedule is None, "a drawn schedule counts the steps it interleaves"
    clients = tuple(tuple(Request(r.tenant, tuple(s for s in r.steps if layout in step_kind(s).layouts))
                          for r in requests) for requests in program.clients)
    return dataclasses.replace(program, clients=clients)


NAMED_SCENARIOS = {s.name: s for s in (
    NamedScenario("fresh_session", "1. models use the tenant's schema right after the session is created",
                  fresh_session),
    NamedScenario("after_commit", "2. the schema survives commit()", after_commit),
    NamedScenario("after_rollback", "3. the schema survives rollback()", after_rollback),
    NamedScenario("simultaneous_tenants", "4. simultaneous tenants stay isolated", simultaneous_tenants),
    NamedScenario("raw_text", "5. raw text() queries use the tenant's schema", raw_text),
    NamedScenario("pool_state", "6. the pool carries no request's state into the next", pool_state),
    NamedScenario("scheduler", "7. a scheduler over every tenant never loses context nor reads another tenant",
                  scheduler),
    NamedScenario("hostile_names", "hostile tenant names reach their own schema", hostile_names, hostile=True),
)}
