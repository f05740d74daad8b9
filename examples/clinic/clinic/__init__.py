"""A multi-tenant clinic backend: one PostgreSQL schema per clinic, reached through PgBouncer.

Requests get a session from :func:`clinic.db.get_session` (a FastAPI-style dependency) that renders the
models' ``tenant`` placeholder as the clinic's schema; a nightly job (:mod:`clinic.jobs`) runs raw SQL.
"""
