"""Which definition a call reaches, as Python would resolve it: the cases a name match or a loose scope got wrong.

Each case is a small tree written to a temporary folder, with its expected findings marked in the source as in
tests/fixtures/scan_project (``# expect: RULE [@ANCHOR]`` on a finding's line, ``# anchor: NAME`` on the
definition or the SET it cites). Every case also holds calls that must reach nothing: a finding there fails it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scan_marks import expected_findings, found_findings

MODELS = '''\
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = {"schema": "tenant"}
    id: Mapped[int] = mapped_column(primary_key=True)
'''

PIN = '''\
from sqlalchemy import text


def pin(conn, tenant):  # anchor: pin
    conn.execute(text("SET search_path TO acme"))  # expect: set-search-path-sql  # anchor: pin-set
'''

CASES: dict[str, dict[str, str]] = {
    # A bare name in a method is the module's (or an import), never a method of the class it sits in.
    "class-body-is-no-enclosing-scope": {
        "app/db.py": PIN,
        "app/service.py": '''\
from app.db import pin


class Service:
    def pin(self, conn):
        return conn

    def run(self, conn):
        pin(conn, "a")  # expect: search-path-function-call @pin
''',
    },
    # The last def of a name is the one called; an @overload stub is never cited.
    "the-last-definition-wins": {
        "app/redefined.py": '''\
from typing import overload

from sqlalchemy import text


def configure(conn):
    return conn


def configure(conn):  # anchor: configure-last
    conn.execute(text("SET search_path TO acme"))  # expect: set-search-path-sql


def reset(conn):
    conn.execute(text("SET search_path TO acme"))  # expect: set-search-path-sql


def reset(conn):
    return conn


@overload
def bind(conn: int) -> None: ...
@overload
def bind(conn: str) -> None: ...
def bind(conn):  # anchor: bind-impl
    conn.execute(text("SET search_path TO acme"))  # expect: set-search-path-sql


def job(conn):
    configure(conn)  # expect: search-path-function-call @configure-last
    bind(conn)  # expect: search-path-function-call @bind-impl
    reset(conn)
''',
    },
    # A nested def named like a legacy helper is flagged itself; the def holding it binds nothing.
    "a-helper-name-binds-no-enclosing-def": {
        "app/outer.py": '''\
def outer(conn):
    def set_search_path_for(schema):  # expect: search-path-helper
        return schema
    return conn


def job(conn):
    outer(conn)
''',
    },
    # A constructor in a class body is the class's attribute, not a module-level local.
    "a-class-attribute-is-no-module-local": {
        "app/binders.py": '''\
from sqlalchemy import text


class TenantBinder:
    def bind(self, conn):  # anchor: binder-bind
        conn.execute(text("SET search_path TO acme"))  # expect: set-search-path-sql


class Plain:
    def bind(self, conn):
        return conn
''',
        "app/holder.py": '''\
from app.binders import Plain, TenantBinder

binder = Plain()


class Holder:
    binder = TenantBinder()

    def run(self, conn):
        binder.bind(conn)


def job(conn):
    binder.bind(conn)
    local = TenantBinder()
    local.bind(conn)  # expect: search-path-function-call @binder-bind
''',
    },
    # Imports by one-part names, dotted imports and namespace packages (no __init__.py).
    "imports-of-every-shape": {
        "src/acme/db.py": PIN,
        "src/helpers/__init__.py": "from helpers.session import pin\n",
        "src/helpers/session.py": PIN.replace("pin-set", "helpers-set").replace("anchor: pin\n",
                                                                                 "anchor: helpers-pin\n"),
        "src/acme/jobs/run.py": '''\
import acme.db
import acme.db as database
import helpers
from acme import db


def job(conn):
    acme.db.pin(conn, "a")  # expect: search-path-function-call @pin
    database.pin(conn, "a")  # expect: search-path-function-call @pin
    db.pin(conn, "a")  # expect: search-path-function-call @pin
    helpers.pin(conn, "a")  # expect: search-path-function-call @helpers-pin
''',
    },
    # self in a closure is the enclosing method's; super() reaches the base's method; a class call runs __init__.
    "methods-through-closures-super-and-constructors": {
        "app/models.py": MODELS,
        "app/scoped.py": '''\
from sqlalchemy import text


class Base:
    def _pin(self, conn):  # anchor: base-pin
        conn.execute(text("SET search_path TO acme"))  # expect: set-search-path-sql


class Child(Base):
    def _pin(self, conn):
        return conn

    def reset(self, conn):
        super()._pin(conn)  # expect: search-path-function-call @base-pin

    def run(self, conn):
        def inner():
            Base._pin(self, conn)  # expect: search-path-function-call @base-pin
            self.reset(conn)
        inner()


class Other(Base):
    def run(self, conn):
        def inner():
            self._pin(conn)  # expect: search-path-function-call @base-pin
        inner()


class TenantScope:
    def __init__(self, conn, tenant):  # anchor: scope-init
        conn.execute(text("SET search_path TO acme"))  # expect: set-search-path-sql  # anchor: scope-set


def handler(conn):
    TenantScope(conn, "a")  # expect: search-path-function-call @scope-init
    conn.execute(text("SELECT * FROM invoices"))  # expect: unqualified-after-set-search-path @scope-set
''',
    },
    # A binding reached through a cycle of calls is found whichever def of the cycle is asked first.
    "bindings-through-a-cycle": {
        "app/models.py": MODELS,
        "app/db.py": PIN,
        "app/cycle.py": '''\
from sqlalchemy import text

from app.db import pin


def first(conn, n):
    if n:
        second(conn, n)


def second(conn, n):
    first(conn, n - 1)
    pin(conn, "a")  # expect: search-path-function-call @pin


def job(conn):
    first(conn, 1)
    conn.execute(text("SELECT * FROM invoices"))  # expect: unqualified-after-set-search-path @pin-set
''',
    },
    # SQL kept by a walrus or a tuple assignment is followed to where it runs.
    "walrus-and-tuple-assignments": {
        "app/models.py": MODELS,
        "app/db.py": PIN,
        "app/report.py": '''\
from sqlalchemy import text

from app.db import pin


def report(conn):
    pin(conn, "a")  # expect: search-path-function-call @pin
    label, query = "report", "SELECT * FROM invoices"  # expect: unqualified-after-set-search-path @pin-set
    conn.execute(text(query))
    if (again := "SELECT id FROM invoices") and label:  # expect: unqualified-after-set-search-path @pin-set
        conn.execute(text(again))
''',
    },
}


@pytest.mark.parametrize("case", CASES)
def test_a_call_reaches_the_definition_python_would_call(tmp_path: Path, case: str) -> None:
    for relative, source in CASES[case].items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    assert found_findings(tmp_path, tmp_path) == expected_findings(tmp_path)
