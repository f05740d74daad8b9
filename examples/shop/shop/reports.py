"""The shop's reports: code paths the harness runs as steps (``--actions``)."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shop.models import Customer


def monthly_total(session: Session, tenant: str):
    # Deliberately unqualified raw SQL: schema_translate_map does not touch text(), so this
    # reads whatever "invoice" the pooled connection's search_path finds.
    return session.execute(text("SELECT coalesce(sum(total), 0) FROM invoice")).scalar_one()


def customer_count(session: Session, tenant: str) -> int:
    # Through the mapped class: the translate map renders the tenant's schema.
    return session.execute(select(func.count()).select_from(Customer)).scalar_one()
