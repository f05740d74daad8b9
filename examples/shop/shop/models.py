"""The shop's tables, in the ``tenant`` placeholder schema that the tenancy layer translates."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import ForeignKey, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TENANT = {"schema": "tenant"}


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customer"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(120), unique=True)


class Invoice(Base):
    __tablename__ = "invoice"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("tenant.customer.id"))
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))


class InvoiceLine(Base):
    __tablename__ = "invoice_line"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("tenant.invoice.id"))
    label: Mapped[str] = mapped_column(String(200))
