"""Code paths of a team's app, run as steps by tests/test_team.py (importable as ``team_app``).

Each mirrors something an application does; the leaky ones are how real apps leak.
"""

from __future__ import annotations

from sqlalchemy import func, select, text

from shop.models import Customer, Invoice

OTHER = {"acme": "globex"}  # the tenant a deliberately wrong path reads instead


def leaky_total(session, tenant):
    """Unqualified raw SQL: schema_translate_map does not apply, search_path decides."""
    return session.execute(text("SELECT coalesce(sum(total), 0) FROM invoice")).scalar_one()


def safe_total(session, tenant):
    """The same report through the mapped class: the translate map applies."""
    return session.execute(select(func.coalesce(func.sum(Invoice.total), 0))).scalar_one()


def neighbour_count(session, tenant):
    """Reads another tenant's schema by name (a copy-paste bug)."""
    other = OTHER.get(tenant, "acme")
    return session.execute(text(f'SELECT count(*) FROM "{other}".invoice')).scalar_one()


def neighbour_insert(session, tenant):
    """Writes a customer into another tenant's schema."""
    other = OTHER.get(tenant, "acme")
    session.execute(text(f'INSERT INTO "{other}".customer (id, name, email) VALUES (5000, :n, :e)'),
                    {"n": tenant, "e": f"{tenant}@example.org"})


def signup(session, tenant):
    """Adds a customer and commits, as a request handler would."""
    session.add(Customer(id=4000, name="new", email=f"new-{tenant}@example.org"))
    session.commit()


async def async_total(session, tenant):
    return (await session.execute(select(func.count()).select_from(Invoice))).scalar_one()


def savepoint_undone(session, tenant):
    """A savepoint rolled back inside the action: the request's transaction goes on."""
    savepoint = session.begin_nested()
    session.add(Customer(id=4100, name="undone", email=f"undone-{tenant}@example.org"))
    session.flush()
    savepoint.rollback()


def savepoint_kept(session, tenant):
    """A savepoint released inside the action: nothing is committed yet."""
    with session.begin_nested():
        session.add(Customer(id=4200, name="kept", email=f"kept-{tenant}@example.org"))
