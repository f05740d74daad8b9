"""Background jobs: the scheduler runs each once a night for every clinic, on a session bound to it.

``send_payment_reminders`` reads the clinic's overdue invoices with raw SQL. ``schema_translate_map``
does not rewrite ``text()`` (SQLAlchemy docs, "Translation of Schema Names"), so ``invoice`` and
``patient`` below resolve through the pooled connection's search_path, not the clinic's schema: on a
connection whose search_path is the default, that is public's tables.
"""

from __future__ import annotations

import collections

from sqlalchemy import text
from sqlalchemy.orm import Session

from clinic.models import Reminder

#: what the job handed to the mailer (the app's outbox; the last messages only)
OUTBOX: collections.deque = collections.deque(maxlen=100)

OVERDUE = text(
    "SELECT i.id, i.number, i.total, i.due_on, p.full_name, p.email"
    " FROM invoice AS i JOIN patient AS p ON p.id = i.patient_id"
    " WHERE i.status IN ('issued', 'overdue') AND i.due_on < CURRENT_DATE"
    " AND i.deleted_at IS NULL AND p.deleted_at IS NULL"
    " ORDER BY i.due_on, i.id")


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
