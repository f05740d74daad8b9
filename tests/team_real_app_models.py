"""A real application's whole declarative Base, for tests/test_real_schemas.py (importable as
``team_real_app_models``): a billing and help-desk app whose migrations create its enums (the models say
``create_type=False``; a DOMAIN too), with JSON and JSONB documents, arrays (of an enum too), money as Numeric, intervals,
soft delete (``deleted_at``, ``is_deleted``, ``archived``), server defaults, a shared lookup the tenant
tables point at and a shared audit table that points into a tenant table.

``CrmBase`` is a second app whose migrations also create a DOMAIN the metadata only names (a
UserDefinedType): the harness cannot describe it, ``--schema-sql`` provides it.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid

from sqlalchemy import (ARRAY, JSON, BigInteger, Boolean, CheckConstraint, Column, Date, DateTime, Enum, Float,
                        ForeignKey, Index, Integer, Interval, LargeBinary, Numeric, String, Table, Text, Time, func,
                        text)
from sqlalchemy.dialects.postgresql import DOMAIN, ENUM, INET, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

TENANT = {"schema": "tenant"}


class AccountKind(enum.Enum):
    personal = "personal"
    business = "business"
    nonprofit = "nonprofit"


# CREATE TYPE account_kind ... in the app's first migration, found through search_path (public)
account_kind = Enum(AccountKind, name="account_kind", create_type=False)
# postgresql.ENUM in a schema of the migrations' own
invoice_status = ENUM("draft", "open", "paid", "void", name="invoice_status", schema="billing", create_type=False)
# one type per tenant schema: the migrations run once per tenant (SQLAlchemy 2.1 spells inherit_schema=True so)
ticket_priority = Enum("low", "normal", "high", "urgent", name="ticket_priority", schema="tenant",
                       create_type=False)

# a DOMAIN the metadata describes (its base type and CHECK), created by the migrations too
postal_code = DOMAIN("postal_code", String(12), check="char_length(VALUE) >= 3", create_type=False)


class Base(DeclarativeBase):
    pass


class Plan(Base):  # shared: one lookup table in public for every tenant
    __tablename__ = "plan"

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    monthly_price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    limits: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))


class Account(Base):
    __tablename__ = "account"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), nullable=False)
    kind: Mapped[AccountKind] = mapped_column(account_kind, nullable=False)
    plan_code: Mapped[str] = mapped_column(ForeignKey("plan.code"), nullable=False)
    settings: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(30)), nullable=False, server_default=text("'{}'"))
    credit_limit: Mapped[decimal.Decimal | None] = mapped_column(Numeric(12, 2))
    postal_code: Mapped[str | None] = mapped_column(postal_code)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                          server_default=func.now())
    deleted_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))


class Contact(Base):
    __tablename__ = "contact"
    __table_args__ = (Index("contact_live_email", "email", unique=True, postgresql_where=text("NOT is_deleted")),
                      TENANT)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("tenant.account.id"), nullable=False)
    email: Mapped[str] = mapped_column(String(255), nullable=False)
    profile: Mapped[dict | None] = mapped_column(JSON)
    last_login: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    last_ip: Mapped[str | None] = mapped_column(INET)
    is_deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))


class Invoice(Base):
    __tablename__ = "invoice"
    __table_args__ = (CheckConstraint("total >= 0", name="invoice_total_positive"), TENANT)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("tenant.account.id"), nullable=False)
    number: Mapped[str] = mapped_column(String(20), nullable=False, unique=True)
    status: Mapped[str] = mapped_column(invoice_status, nullable=False, server_default="draft")
    total: Mapped[decimal.Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, default="EUR")
    issued_on: Mapped[datetime.date | None] = mapped_column(Date)
    payment_terms: Mapped[datetime.timedelta | None] = mapped_column(Interval)
    line_items: Mapped[list | dict] = mapped_column(JSONB, nullable=False)
    archived: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    archived_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))


class Payment(Base):
    __tablename__ = "payment"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("tenant.invoice.id", ondelete="CASCADE"), nullable=False)
    amount: Mapped[decimal.Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    fee_rate: Mapped[float | None] = mapped_column(Float)
    paid_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    receipt: Mapped[bytes | None] = mapped_column(LargeBinary)


class Ticket(Base):
    __tablename__ = "ticket"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.contact.id"), nullable=False)
    priority: Mapped[str] = mapped_column(ticket_priority, nullable=False)
    escalations: Mapped[list[str] | None] = mapped_column(ARRAY(ticket_priority))
    subject: Mapped[str] = mapped_column(Text, nullable=False)
    due_time: Mapped[datetime.time | None] = mapped_column(Time)
    sla: Mapped[datetime.timedelta] = mapped_column(Interval, nullable=False)
    scores: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    attachments: Mapped[list | None] = mapped_column(JSONB)
    deleted_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)


ticket_watcher = Table("ticket_watcher", Base.metadata,
                       Column("ticket_id", ForeignKey("tenant.ticket.id"), primary_key=True),
                       Column("contact_id", ForeignKey("tenant.contact.id"), primary_key=True),
                       schema="tenant")


class AuditEntry(Base):  # shared: one audit table in public whose rows point at a tenant's account
    __tablename__ = "audit_entry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("tenant.account.id"), nullable=False)
    action: Mapped[str] = mapped_column(String(40), nullable=False)
    payload: Mapped[dict] = mapped_column(JSONB, nullable=False)
    at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                  server_default=func.now())


# -- a second app: a DOMAIN its migrations create, which its metadata only names ------------------------
class EmailAddress(UserDefinedType):
    """The app's ``email_address`` DOMAIN (CREATE DOMAIN email_address AS text CHECK (VALUE LIKE '%@%'))."""

    cache_ok = True

    def get_col_spec(self, **kw):
        return "email_address"


class CrmBase(DeclarativeBase):
    pass


class Lead(CrmBase):
    __tablename__ = "lead"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[AccountKind] = mapped_column(account_kind, nullable=False)
    name: Mapped[str] = mapped_column(String(80), nullable=False)
    email: Mapped[str | None] = mapped_column(EmailAddress)
    reply_to: Mapped[str] = mapped_column(EmailAddress, nullable=False,
                                          server_default=text("'support@example.org'"))
    archived: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
