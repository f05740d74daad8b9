"""Tables of the kinds teams have, for tests/test_team.py (importable as ``team_rich_models``): an identity
key the database always generates, a smallserial key, a GUID TypeDecorator, a composite unique constraint,
an association table, a foreign key to a shared lookup table in public."""

from __future__ import annotations

import uuid

from sqlalchemy import (CHAR, Column, ForeignKey, Identity, Integer, SmallInteger, String, Table, TypeDecorator,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TENANT = {"schema": "tenant"}


class Guid(TypeDecorator):
    """SQLAlchemy's documented backend-agnostic GUID recipe, reduced to CHAR(32)."""

    impl = CHAR(32)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else uuid.UUID(str(value)).hex

    def process_result_value(self, value, dialect):
        return None if value is None else uuid.UUID(value)

    @property
    def python_type(self):
        return uuid.UUID


class Base(DeclarativeBase):
    pass


class Currency(Base):  # shared: one table in public for every tenant
    __tablename__ = "currency"

    code: Mapped[str] = mapped_column(String(3), primary_key=True)


class Label(Base):
    __tablename__ = "label"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(20), unique=True)


class Account(Base):
    __tablename__ = "account"
    __table_args__ = (UniqueConstraint("currency", "number"), TENANT)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=True)
    ref: Mapped[uuid.UUID] = mapped_column(Guid)
    currency: Mapped[str] = mapped_column(ForeignKey("currency.code"))
    number: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(40))


account_label = Table("account_label", Base.metadata,
                      Column("account_id", ForeignKey("tenant.account.id"), primary_key=True),
                      Column("label_id", ForeignKey("tenant.label.id"), primary_key=True), schema="tenant")
