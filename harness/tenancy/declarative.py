"""The row-level security layout's shared tables as declarative classes.

The harness maps its own model sets imperatively (:func:`harness.tenancy.models.model_set`).
A layer whose library wants declarative classes (a ``DeclarativeBase`` subclass,
``select(Product)``, mixins keyed on the class) uses these instead of mirroring
the tables by hand. They are mapped onto the very ``Table`` objects the harness
creates, seeds and reads back in the shared ``tenant_rls`` database, so they
cannot drift from them::

    from harness.tenancy.declarative import Product

    with Session(engine) as session:  # bound to the tenant by your layer
        session.scalars(select(Product)).all()

Every class has the ``owner`` column (the tenant column, part of the primary key).
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from harness.tenancy.models import CLASS_NAMES, SHARED, model_set

_TABLES = model_set(SHARED).metadata.tables


class SharedBase(DeclarativeBase):
    """The declarative base of the shared tables: its ``metadata`` is the harness's shared MetaData."""

    metadata: MetaData = model_set(SHARED).metadata

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={getattr(self, 'id', None)!r}, owner={getattr(self, 'owner', None)!r})"


def _declared(table: str) -> type[SharedBase]:
    """A declarative class on one of the shared tables, named as the imperative model set names it."""
    name = {**CLASS_NAMES, "product_attribute": "ProductAttribute"}[table]
    return type(name, (SharedBase,), {"__table__": _TABLES[table], "__module__": __name__, "__qualname__": name})


Product = _declared("product")
VintedProduct = _declared("vinted_product")
MarketplaceJob = _declared("marketplace_job")
MarketplaceTask = _declared("marketplace_task")
PublicationHistory = _declared("publication_history")
Attribute = _declared("attribute")
ProductAttribute = _declared("product_attribute")

#: table name -> declarative class: every table of the shared model set (the association table too)
CLASSES: dict[str, type[SharedBase]] = {cls.__table__.name: cls for cls in SharedBase.__subclasses__()}
if set(CLASSES) != set(_TABLES):
    raise ImportError("harness.tenancy.declarative misses a shared table: declare a class for each")
