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


class Product(SharedBase):
    __table__ = _TABLES["product"]


class VintedProduct(SharedBase):
    __table__ = _TABLES["vinted_product"]


class MarketplaceJob(SharedBase):
    __table__ = _TABLES["marketplace_job"]


class MarketplaceTask(SharedBase):
    __table__ = _TABLES["marketplace_task"]


class PublicationHistory(SharedBase):
    __table__ = _TABLES["publication_history"]


class Attribute(SharedBase):
    __table__ = _TABLES["attribute"]


class ProductAttribute(SharedBase):
    __table__ = _TABLES["product_attribute"]


#: table name -> declarative class, for every class the imperative model set maps (and the association table)
CLASSES: dict[str, type[SharedBase]] = {cls.__table__.name: cls for cls in SharedBase.__subclasses__()}
if set(CLASSES) != set(CLASS_NAMES) | {"product_attribute"}:
    raise ImportError("harness.tenancy.declarative and models.CLASS_NAMES differ: declare a class for each table")
