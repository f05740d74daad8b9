"""Tenant isolation conformance harness: PostgreSQL schema-per-tenant behind PgBouncer."""

__version__ = "0.1.0"
