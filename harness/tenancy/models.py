"""The built-in model set, built from one definition in two flavours.

- ``placeholder``: tables in the ``tenant`` placeholder schema, for layers that
  translate it (``schema_translate_map``).
- ``unqualified``: the same tables without a schema, for search_path-only layers
  (a translate map value of ``None`` renders ``public.``, not unqualified
  names, so those layers need schema-less models).

Every table has an ``owner`` column the harness fills with the tenant it acts
for; every tenant gets rows with the same primary keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from sqlalchemy import Column, ForeignKeyConstraint, Integer, MetaData, Numeric, String, Table
from sqlalchemy.orm import registry

from harness.config import import_user_module
from harness.errors import UsageError
from harness.tenancy.tenants import PLACEHOLDER_SCHEMA

FLAVOURS = ("placeholder", "unqualified")  # what a strategy may declare as its models
SHARED = "shared"  # the row-level security layout's tables (chosen by the layout, not declared)


def _define(metadata: MetaData, shared: bool) -> None:
    """The tables, once. ``shared``: one table for every tenant (row-level security
    layouts), so the tenant column joins the primary and foreign keys and every
    tenant still has rows with the same ids.

    "product.id" resolves against MetaData.schema, so the placeholder and the
    unqualified flavours come from the same lines.
    """

    def keys(*names: str) -> list[str]:
        return [*names, "owner"] if shared else list(names)

    def refs(local: str, target: str) -> ForeignKeyConstraint:
        return ForeignKeyConstraint(keys(local), [f"{target}.{c}" for c in keys("id")])

    def owned(name: str, *items) -> Table:
        return Table(name, metadata, Column("id", Integer, primary_key=True, autoincrement=False),
                     Column("owner", String(80), nullable=False, primary_key=shared), *items)

    owned("product", Column("name", String(200), nullable=False), Column("price", Numeric(10, 2)))
    owned("vinted_product", Column("product_id", Integer, nullable=False), Column("vinted_ref", String(40)),
          refs("product_id", "product"))
    owned("marketplace_job", Column("kind", String(40), nullable=False))
    owned("marketplace_task", Column("job_id", Integer, nullable=False), Column("state", String(40), nullable=False),
          refs("job_id", "marketplace_job"))
    owned("publication_history", Column("product_id", Integer, nullable=False),
          Column("event", String(80), nullable=False))
    owned("attribute", Column("name", String(80), nullable=False))
    Table("product_attribute", metadata,
          Column("product_id", Integer, primary_key=True), Column("attribute_id", Integer, primary_key=True),
          Column("owner", String(80), nullable=False, primary_key=shared),
          refs("product_id", "product"), refs("attribute_id", "attribute"))


class _Base:
    def __init__(self, **values: Any):
        for key, value in values.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={getattr(self, 'id', None)!r}, owner={getattr(self, 'owner', None)!r})"


CLASS_NAMES = {
    "product": "Product", "vinted_product": "VintedProduct", "marketplace_job": "MarketplaceJob",
    "marketplace_task": "MarketplaceTask", "publication_history": "PublicationHistory",
    "attribute": "Attribute",
}


@dataclasses.dataclass(frozen=True)
class ModelSet:
    """Tables and mapped classes of one flavour."""

    flavour: str
    metadata: MetaData
    classes: dict[str, type]

    @property
    def shared(self) -> bool:
        return self.flavour == SHARED

    @property
    def Product(self) -> type:  # noqa: N802 - reads like the mapped class it is
        return self.classes["product"]

    @property
    def MarketplaceJob(self) -> type:  # noqa: N802
        return self.classes["marketplace_job"]

    @property
    def MarketplaceTask(self) -> type:  # noqa: N802
        return self.classes["marketplace_task"]


def build_model_set(flavour: str) -> ModelSet:
    if flavour not in FLAVOURS + (SHARED,):
        raise UsageError(f"Unknown models flavour {flavour!r}.", fix=[f"use one of: {', '.join(FLAVOURS)}"])
    metadata = MetaData(schema=PLACEHOLDER_SCHEMA if flavour == "placeholder" else None)
    _define(metadata, shared=flavour == SHARED)
    mapper_registry = registry(metadata=metadata)
    classes: dict[str, type] = {}
    for table_name, class_name in CLASS_NAMES.items():
        cls = type(class_name, (_Base,), {})
        mapper_registry.map_imperatively(cls, metadata.tables[_key(metadata, table_name)])
        classes[table_name] = cls
    return ModelSet(flavour, metadata, classes)


def _key(metadata: MetaData, name: str) -> str:
    return f"{metadata.schema}.{name}" if metadata.schema else name


_MODEL_SETS: dict[str, ModelSet] = {}


def model_set(flavour: str) -> ModelSet:
    """The shared model set of a flavour (built once per process)."""
    if flavour not in _MODEL_SETS:
        _MODEL_SETS[flavour] = build_model_set(flavour)
    return _MODEL_SETS[flavour]


def load_user_metadata(spec: str, pythonpath: Sequence[str] | None = None) -> MetaData:
    """Load a user's ``package.module:attr`` MetaData; it must hold tables in the ``tenant`` schema.

    The module is imported with the ``pythonpath`` folders first on sys.path (None: the setting as the
    environment and the current folder's pyproject.toml give it), as a strategy is.
    """

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"Models spec {spec!r} is not of the form package.module:attr.")
    module = import_user_module(f"Models spec {spec!r} could not be loaded", module_name, pythonpath)
    target = getattr(module, attr, None)
    if target is None:
        raise UsageError(f"Models spec {spec!r} could not be loaded: module {module_name!r} has no attribute "
                         f"{attr!r}.", fix=["name a MetaData or a declarative Base"])
    metadata = getattr(target, "metadata", target)
    if not isinstance(metadata, MetaData):
        raise UsageError(f"Models spec {spec!r} is a {type(target).__name__}, not a MetaData "
                         "or a declarative base.", fix=["point it at a MetaData or a declarative Base"])
    tenant_tables = [t.name for t in metadata.tables.values() if t.schema == PLACEHOLDER_SCHEMA]
    if not tenant_tables:
        raise UsageError(f"Models spec {spec!r} has no table in the {PLACEHOLDER_SCHEMA!r} schema.",
                         fix=[f'give tenant tables __table_args__ = {{"schema": "{PLACEHOLDER_SCHEMA}"}}'])
    return metadata
