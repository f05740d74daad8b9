"""The nightly jobs, fixed: ``clinic.jobs`` with its query through the mapped classes.

A statement SQLAlchemy compiles is rewritten by ``schema_translate_map``: ``invoice`` and ``patient``
render as the clinic's schema whatever the pooled connection's search_path is. To ship the fix, this
module replaces ``clinic/jobs.py`` (the only change is ``OVERDUE``; the harness's test and bench do so).
"""

from __future__ import annotations

import collections

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clinic.models import Invoice, Patient, Reminder

#: what the job handed to the mailer (the app's outbox; the last messages only)
OUTBOX: collections.deque = collections.deque(maxlen=100)

OVERDUE = (
    select(Invoice.id, Invoice.number, Invoice.total, Invoice.due_on, Patient.full_name, Patient.email)
    .join(Patient, Patient.id == Invoice.patient_id)
    .where(Invoice.status.in_(("issued", "overdue")), Invoice.due_on < func.current_date(),
           Invoice.deleted_at.is_(None), Patient.deleted_at.is_(None))
    .order_by(Invoice.due_on, Invoice.id))


def send_payment_reminders(session: Session, clinic: str) -> int:
    """Email every patient with an overdue invoice, and record each reminder sent."""
    sent = 0
    for invoice in session.execute(OVERDUE).all():
        message = {"to": invoice.email, "number": invoice.number, "total": str(invoice.total),
                   "due_on": invoice.due_on.isoformat(), "greeting": f"Dear {invoice.full_name}"}
        OUTBOX.append((clinic, message))
        session.add(Reminder(invoice_id=invoice.id, channel="email", payload=message))
        sent += 1
    session.commit()
    return sent
