"""Provisioning and reset on a real server: one schema per tenant (byte-exact names), the same
seeded keys everywhere, decoys in public, and a reset that restores rows and leaves no backend."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from harness.errors import UsageError
from harness.stack.postgres import APP_ROLE
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.seeds import SEED_ROWS
from harness.tenancy.tenants import DEFAULT_TENANTS, HOSTILE_TENANTS

PUBLIC = "public"


@pytest.fixture(autouse=True)
def seeded(tenancy):
    """Earlier tests (scenarios with leaks) leave misplaced rows behind: start from the seeds."""
    tenancy.reset()


def connect(url, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                           dbname=url.database, autocommit=autocommit, prepare_threshold=None)


def schema_names(tenancy: Tenancy) -> set[str]:
    with tenancy.engine.connect() as conn:
        return {row[0] for row in conn.execute(text("SELECT nspname FROM pg_namespace"))}


def products(tenancy: Tenancy, schema: str) -> list[tuple[int, str, str]]:
    with tenancy.engine.connect() as conn:
        q = conn.dialect.identifier_preparer.quote_identifier(schema)
        return [tuple(r) for r in conn.execute(text(f"SELECT id, owner, name FROM {q}.product ORDER BY id"))]


def app_backends(tenancy: Tenancy) -> list[tuple[int, str]]:
    with tenancy.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            text("SELECT pid, state FROM pg_stat_activity WHERE usename = :role"), {"role": APP_ROLE})]


def test_one_schema_per_tenant_with_byte_exact_names(tenancy):
    names = schema_names(tenancy)
    for tenant in DEFAULT_TENANTS + HOSTILE_TENANTS:
        assert tenant in names, f"schema {tenant!r} missing"
    assert set(tenancy.provisioned) <= names
    assert {"acme", "Acme"} <= names  # two schemas, not one folded name
    assert PUBLIC in names  # the hostile 'x; DROP SCHEMA public CASCADE; --' did not run as SQL


def test_the_provisioned_list_holds_every_tenant_once(tenancy):
    assert len(tenancy.provisioned) == len(set(tenancy.provisioned))
    assert set(tenancy.tenants) | set(HOSTILE_TENANTS) == set(tenancy.provisioned)
    assert tenancy.schemas == [*tenancy.provisioned, PUBLIC]


def test_the_63_byte_name_is_stored_untruncated(tenancy):
    longest = max(HOSTILE_TENANTS, key=lambda n: len(n.encode("utf-8")))
    with tenancy.engine.connect() as conn:
        stored = conn.execute(text("SELECT nspname, octet_length(nspname::text) FROM pg_namespace "
                                   "WHERE nspname = :n"), {"n": longest}).one()
    assert tuple(stored) == (longest, 63)


def test_every_schema_is_seeded_with_the_same_ids_owned_by_the_schema(tenancy):
    for schema in tenancy.provisioned:
        rows = products(tenancy, schema)
        assert [r[0] for r in rows] == list(range(1, SEED_ROWS + 1)), schema
        assert {r[1] for r in rows} == {schema}, schema


def test_public_holds_decoys_owned_by_public(tenancy):
    rows = products(tenancy, PUBLIC)
    assert [r[0] for r in rows] == list(range(1, SEED_ROWS + 1))
    assert {r[1] for r in rows} == {PUBLIC}


def test_the_app_role_reads_each_tenant_only_through_its_schema(stack, tenancy):
    with connect(stack.url("direct")) as conn:
        for tenant in ("acme", "Acme", "umbrella corp"):
            conn.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(tenant)))
            owners = {r[0] for r in conn.execute("SELECT owner FROM product")}
            assert owners == {tenant}


def test_reset_removes_inserted_rows_and_restores_seeds(tenancy):
    before = products(tenancy, "Acme")
    with tenancy.engine.begin() as conn:
        conn.execute(text('INSERT INTO "Acme".product (id, owner, name, price) VALUES (100, \'intruder\', \'x\', 1)'))
        conn.execute(text('UPDATE "Acme".product SET name = \'changed\' WHERE id = 1'))
        conn.execute(text('DELETE FROM "umbrella corp".product WHERE id = 8'))
        conn.execute(text("UPDATE public.product SET owner = 'acme' WHERE id = 2"))
    assert len(products(tenancy, "Acme")) == SEED_ROWS + 1

    tenancy.reset()

    assert products(tenancy, "Acme") == before
    assert [r[0] for r in products(tenancy, "umbrella corp")] == list(range(1, SEED_ROWS + 1))
    assert {r[1] for r in products(tenancy, PUBLIC)} == {PUBLIC}


def test_the_snapshot_reads_every_schema_as_seeded(tenancy):
    snapshot = tenancy.snapshot()
    assert set(snapshot) == {*tenancy.provisioned, PUBLIC}
    assert snapshot["Acme"]["product"][0] == (1, "Acme", "Acme product 1")
    assert [r[0] for r in snapshot["acme"]["marketplace_task"]] == [1, 2, 3]


@pytest.mark.parametrize("route", ["transaction", "session"])
def test_reset_leaves_no_backend_of_the_login_role(stack, tenancy, route):
    with connect(stack.url(route)) as client:
        client.execute("SELECT 1").fetchone()
    assert app_backends(tenancy), "the pooled server connection should still be open before the reset"

    tenancy.reset()

    assert app_backends(tenancy) == []


def test_reset_also_drops_a_client_left_idle_on_the_transaction_route(stack, tenancy):
    """Reset is total: a client left over from an example (a cell ran on its route) is cut off with its
    server."""
    client = connect(stack.url("transaction"))
    try:
        client.execute("SELECT 1").fetchone()
        tenancy.uses("transaction")
        tenancy.reset()
        assert app_backends(tenancy) == []
        with pytest.raises(psycopg.Error):
            client.execute("SELECT current_user").fetchone()
    finally:
        client.close()
    # The route itself works again at once.
    with connect(stack.url("transaction")) as fresh:
        assert fresh.execute("SELECT current_user").fetchone() == (APP_ROLE,)


def test_an_invalid_tenant_set_is_rejected_before_anything_is_created(stack, tenancy):
    before = schema_names(tenancy)
    with pytest.raises(UsageError, match="64 bytes"):
        Tenancy(stack, ["ok", "x" * 64])
    with pytest.raises(UsageError, match="twice"):
        Tenancy(stack, ["ok", "ok"])
    assert schema_names(tenancy) == before
    assert "ok" not in before


def test_reset_terminates_a_backend_of_the_login_role_that_pgbouncer_did_not_drop(stack, tenancy):
    """A connection KILL cannot reach (here: a direct one, like a leaked engine) is terminated by the reset."""
    url = stack.url("direct")
    leaked = psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                             dbname=url.database, autocommit=True)
    try:
        pid = leaked.execute("SELECT pg_backend_pid()").fetchone()[0]
        tenancy.drop_server_connections()
        with pytest.raises(psycopg.OperationalError):
            leaked.execute("SELECT 1")
        with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                             dbname=url.database) as fresh:
            assert fresh.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    finally:
        leaked.close()
