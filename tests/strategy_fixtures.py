"""Factories and model sets for tests/test_strategy_loading.py, imported by name as ``strategy_fixtures``.

pytest's default ``prepend`` import mode puts ``tests/`` (a folder without
``__init__.py``) on ``sys.path`` when it imports a test module there, so the
specs below are ``strategy_fixtures:<attr>``.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.orm import DeclarativeBase

NOT_CALLABLE = "a string, not a factory"
NOTHING = None


class _Good:
    def __init__(self, url, **attrs):
        self.url = url
        for key, value in attrs.items():
            setattr(self, key, value)

    @contextlib.contextmanager
    def session(self, tenant):
        yield tenant

    def close(self):
        self.closed = True


def good(url):
    return _Good(url)


def qualified(url):
    return _Good(url, models="unqualified", raw_sql=("qualified", "unqualified"), settings=("app.tenant",))


def raises(url):
    raise RuntimeError("the factory exploded on purpose")


def no_session(url):
    return object()


def session_not_callable(url):
    return type("Attr", (), {"session": "not a method"})()


def bad_models(url):
    return _Good(url, models="tenant_schema")


def bad_raw_sql(url):
    return _Good(url, raw_sql=("unqualified", "templated"))


def bad_layout(url):
    return _Good(url, layout="sharded")


class Namespace:
    @staticmethod
    def factory(url):
        return _Good(url)


# -- models --------------------------------------------------------------------------------------
tenant_metadata = MetaData()
Table("invoice", tenant_metadata, Column("id", Integer, primary_key=True), schema="tenant")

public_metadata = MetaData()
Table("invoice", public_metadata, Column("id", Integer, primary_key=True))

empty_metadata = MetaData(schema="tenant")


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = "invoice"
    __table_args__ = {"schema": "tenant"}
    id = Column(Integer, primary_key=True)
