"""The clinic's tables. Tenant tables sit in the ``tenant`` placeholder schema, which each request's
session renders as the clinic's schema (clinic.db); the plan registry is shared, in ``public`` (named, so no search_path decides it).

The enum types are created by the first migration (migrations/0001_initial.sql), hence
``create_type=False``. Clinical records are never deleted: ``deleted_at`` marks them, and every read
path keeps ``deleted_at IS NULL``.
"""

from __future__ import annotations

import datetime
import decimal
import enum

from sqlalchemy import JSON, Date, DateTime, Enum, ForeignKey, Integer, Numeric, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TENANT = {"schema": "tenant"}


class AppointmentStatus(str, enum.Enum):
    scheduled = "scheduled"
    confirmed = "confirmed"
    completed = "completed"
    cancelled = "cancelled"
    no_show = "no_show"


appointment_status = Enum(AppointmentStatus, name="appointment_status", create_type=False)
invoice_status = Enum("draft", "issued", "paid", "void", "overdue", name="invoice_status", create_type=False)
note_kind = Enum("clinical", "billing", "admin", name="note_kind", create_type=False)
reminder_channel = Enum("email", "sms", name="reminder_channel", create_type=False)


class Base(DeclarativeBase):
    pass


class SoftDeleted:
    deleted_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))


class Plan(Base):
    """Shared: the subscription plans every clinic picks from."""

    __tablename__ = "plan"
    __table_args__ = {"schema": "public"}  # one registry for every clinic: never translated

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    monthly_price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    features: Mapped[dict] = mapped_column(JSONB, default=dict)


class Patient(SoftDeleted, Base):
    __tablename__ = "patient"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    full_name: Mapped[str] = mapped_column(String(120))
    email: Mapped[str] = mapped_column(String(200), unique=True)
    date_of_birth: Mapped[datetime.date] = mapped_column(Date)
    plan_code: Mapped[str] = mapped_column(ForeignKey("public.plan.code"))
    contact: Mapped[dict] = mapped_column(JSONB, default=dict)  # phone, address, emergency contact
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Appointment(SoftDeleted, Base):
    __tablename__ = "appointment"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("tenant.patient.id"))
    practitioner: Mapped[str] = mapped_column(String(120))
    starts_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
    duration_minutes: Mapped[int] = mapped_column(Integer, default=30)
    status: Mapped[AppointmentStatus] = mapped_column(appointment_status, default=AppointmentStatus.scheduled)
    details: Mapped[dict | None] = mapped_column(JSONB)


class Invoice(SoftDeleted, Base):
    __tablename__ = "invoice"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("tenant.patient.id"))
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.appointment.id"))
    number: Mapped[str] = mapped_column(String(20), unique=True)
    status: Mapped[str] = mapped_column(invoice_status, default="draft")
    total: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    due_on: Mapped[datetime.date] = mapped_column(Date)
    lines: Mapped[list | dict] = mapped_column(JSONB)


class Note(SoftDeleted, Base):
    __tablename__ = "note"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("tenant.patient.id"))
    kind: Mapped[str] = mapped_column(note_kind)
    body: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Reminder(Base):
    """A payment reminder the nightly job sent."""

    __tablename__ = "reminder"
    __table_args__ = TENANT

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("tenant.invoice.id"))
    channel: Mapped[str] = mapped_column(reminder_channel)
    sent_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    payload: Mapped[dict] = mapped_column(JSONB)
