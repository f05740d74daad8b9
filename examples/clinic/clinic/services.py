"""Request handlers' code paths: ORM statements, so every one renders the clinic's schema.

Each takes the request's session and the clinic, as the web handlers call them (and the harness, as steps).
"""

from __future__ import annotations

import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clinic.models import Appointment, AppointmentStatus, Note, Patient


def list_patients(session: Session, clinic: str) -> int:
    """GET /patients: the clinic's live patients, by name (the page shows how many it found)."""
    patients = session.scalars(select(Patient).where(Patient.deleted_at.is_(None))
                               .order_by(Patient.full_name).limit(50)).all()
    return len(patients)


def book_appointment(session: Session, clinic: str) -> int | None:
    """POST /appointments: a follow-up visit in a week for the clinic's first live patient."""
    patient = session.scalars(select(Patient).where(Patient.deleted_at.is_(None)).order_by(Patient.id)
                              .limit(1)).first()
    if patient is None:
        return None
    appointment = Appointment(patient_id=patient.id, practitioner="Dr. Quinn",
                              starts_at=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7),
                              duration_minutes=30, status=AppointmentStatus.scheduled,
                              details={"booked_via": "web", "reason": "follow-up"})
    session.add(appointment)
    session.commit()
    return appointment.id


def soft_delete_note(session: Session, clinic: str) -> int | None:
    """DELETE /notes/latest: clinical records are kept, the note is marked deleted."""
    note = session.scalars(select(Note).where(Note.deleted_at.is_(None))
                           .order_by(Note.created_at.desc(), Note.id.desc()).limit(1)).first()
    if note is None:
        return None
    note.deleted_at = func.now()
    session.commit()
    return note.id
