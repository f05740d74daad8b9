"""A real application's whole declarative Base as --models: enums its migrations create, JSON, arrays,
intervals, soft delete, a shared table pointing into a tenant table, and types only --schema-sql provides."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import ipaddress
import uuid

import pytest
from sqlalchemy import CheckConstraint, Column, Integer, MetaData, String, Table, select, text
from sqlalchemy.orm import Session

import team_real_app_models as app
from harness.config import resolve_config
from harness.errors import UsageError
from harness.report.explain import explain
from harness.stack import start_stack
from harness.team import Team, load_team
from harness.team import provisioning as team_provisioning
from harness.team.models import (CANARY_ROWS, SHARED_OWNER, CanaryError, named_types, team_models, tenant_tag,
                                 undescribed_types)
from harness.team.steps import step_names
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS, HOSTILE_TENANTS
from harness.workload.cell import run_cell
from harness.workload.program import Program, Request

MODELS = "team_real_app_models:Base"
A, B = DEFAULT_TENANTS[:2]
TENANT_TABLES = ("account", "contact", "invoice", "payment", "ticket", "ticket_watcher")
DOMAIN_SQL = "CREATE DOMAIN email_address AS text CHECK (VALUE LIKE '%@%');\n"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- without a server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    return team_models(MODELS, app.Base, app.Base.metadata)


def test_canaries_of_every_common_type_fit_it_and_name_their_tenant(models):
    invoice, ticket, account = (models.canaries(models.table(n), A) for n in ("invoice", "ticket", "account"))
    other = models.canaries(models.table("invoice"), B)
    for row, theirs in zip(invoice, other):
        assert row["line_items"]["canary"] == tenant_tag(A) and tenant_tag(A) in row["number"]
        assert isinstance(row["total"], decimal.Decimal) and row["total"] >= 0 and row["total"] != theirs["total"]
        assert isinstance(row["payment_terms"], datetime.timedelta) and row["payment_terms"] != theirs["payment_terms"]
        assert row["status"] in ("draft", "open", "paid", "void") and isinstance(row["issued_on"], datetime.date)
    for row in ticket:
        assert row["priority"] in app.ticket_priority.enums and set(row["escalations"]) <= set(app.ticket_priority.enums)
        assert isinstance(row["sla"], datetime.timedelta) and isinstance(row["due_time"], datetime.time)
        assert isinstance(row["contact_id"], uuid.UUID) and row["attachments"]["canary"] == tenant_tag(A)
    for row in account:
        assert row["kind"] in {k.name for k in app.AccountKind} and row["tags"] == [f"{tenant_tag(A)}-{row['id']}"]
        assert row["settings"]["canary"] == tenant_tag(A)
    payment = models.canaries(models.table("payment"), A)[0]
    assert isinstance(payment["fee_rate"], float) and tenant_tag(A).encode() in payment["receipt"]
    contact = models.canaries(models.table("contact"), A)[0]
    assert ipaddress.ip_address(contact["last_ip"]) and contact["profile"]["canary"] == tenant_tag(A)


def test_soft_delete_columns_get_the_values_the_apps_filters_keep(models):
    for name, column, kept in [("account", "deleted_at", None), ("contact", "is_deleted", False),
                               ("invoice", "archived", False), ("invoice", "archived_at", None),
                               ("ticket", "deleted_at", None)]:
        assert {row[column] for row in models.canaries(models.table(name), A)} == {kept}, (name, column)
    # an update step never changes them (it would hide the row from the app's reads)
    assert models.updatable_column(models.table("contact")).name not in ("is_deleted",)
    # an ordinary nullable timestamp is still filled
    assert all(row["last_login"] is not None for row in models.canaries(models.table("contact"), A))


def test_enums_the_migrations_create_are_known_with_the_schema_they_resolve_in():
    found = {use.name: use.columns for use in named_types(app.Base.metadata)}
    assert found == {"account_kind": ("account.kind",), "postal_code": ("account.postal_code",),
                     "billing.invoice_status": ("invoice.status",),
                     "tenant.ticket_priority": ("ticket.priority", "ticket.escalations")}
    assert undescribed_types(app.Base.metadata) == []


def test_a_type_the_metadata_cannot_describe_is_refused_naming_it_its_columns_and_schema_sql(harness_config):
    with pytest.raises(UsageError) as refused:
        load_team(dataclasses.replace(harness_config, models="team_real_app_models:CrmBase"))
    message = str(refused.value)
    assert "email_address (used by lead.email, lead.reply_to)" in message
    assert "--schema-sql" in message and "HARNESS_SCHEMA_SQL" in message and "alembic" in message.lower()
    assert "account_kind" not in message  # the enum is the harness's to create, not the team's to provide


def test_schema_sql_is_a_setting_of_the_command_line_environment_and_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.harness]\nschema_sql = "db/types.sql"\nmodels = "app:Base"\n')
    assert resolve_config({}, env={}, cwd=tmp_path).schema_sql == tmp_path / "db" / "types.sql"
    assert resolve_config({}, env={"HARNESS_SCHEMA_SQL": "x.sql"}, cwd=tmp_path).schema_sql == tmp_path / "x.sql"
    assert resolve_config({"schema_sql": "/abs/y.sql"}, env={}, cwd=tmp_path).schema_sql.as_posix() == "/abs/y.sql"


def test_a_schema_sql_file_that_is_not_there_is_refused_before_anything_starts(harness_config, tmp_path):
    with pytest.raises(UsageError, match=r"--schema-sql .*nowhere\.sql: the file cannot be read"):
        load_team(dataclasses.replace(harness_config, models="team_real_app_models:CrmBase",
                                      schema_sql=tmp_path / "nowhere.sql"))


# -- on a real stack -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_app(harness_config):
    team = load_team(dataclasses.replace(harness_config, models=MODELS))
    with start_stack(harness_config) as own_stack:
        schemas = Tenancy(own_stack, DEFAULT_TENANTS, team=team)
        try:
            schemas.provision()
            schemas.provision(HOSTILE_TENANTS)  # quotes and spaces in the schemas the tenant enums go to
            yield own_stack, schemas
        finally:
            schemas.close()


def test_every_schema_has_test_copies_with_its_own_canaries(real_app):
    _, schemas = real_app
    with schemas.engine.connect() as conn:
        for schema in schemas.schemas:
            q = _quoted(schema)
            for table in TENANT_TABLES:
                assert conn.execute(text(f"SELECT count(*) FROM {q}.{table}")).scalar() == CANARY_ROWS, (schema, table)
            tags = conn.execute(text(f"SELECT name, settings->>'canary', tags[1], postal_code FROM {q}.account")).all()
            assert all(tenant_tag(schema) in n and c == tenant_tag(schema) and tenant_tag(schema) in t
                       and tenant_tag(schema)[:4] in p for n, c, t, p in tags), (schema, tags)
            docs = conn.execute(text(f"SELECT line_items->>'canary' FROM {q}.invoice")).scalars().all()
            assert set(docs) == {tenant_tag(schema)}
            # the enum of the tenant's own schema, not another's
            kinds = conn.execute(text(f"SELECT DISTINCT n.nspname FROM {q}.ticket x JOIN pg_type t "
                                      "ON t.oid = pg_typeof(x.priority) JOIN pg_namespace n ON n.oid = t.typnamespace"))
            assert list(kinds.scalars()) == [schema]


def test_enums_are_created_where_the_metadata_says_they_resolve(real_app):
    _, schemas = real_app
    with schemas.engine.connect() as conn:
        labels = conn.execute(text("SELECT enum_range(NULL::public.account_kind)::text[], "
                                   "enum_range(NULL::billing.invoice_status)::text[]")).one()
        assert labels == (["personal", "business", "nonprofit"], ["draft", "open", "paid", "void"])
        for schema in schemas.schemas:
            assert conn.execute(text("SELECT to_regtype(:t) IS NOT NULL"),
                                {"t": f"{_quoted(schema)}.ticket_priority"}).scalar(), schema
        assert conn.execute(text("SELECT typtype FROM pg_type WHERE oid = to_regtype('public.postal_code')")).scalar() == "d"
        # unqualified and own-schema enums exist once, not in every tenant schema
        assert conn.execute(text("SELECT count(*) FROM pg_type WHERE typname = 'account_kind'")).scalar() == 1


def test_the_apps_soft_delete_filters_return_every_canary(real_app):
    """The app's own read path, through its mapped classes: its default filters keep the canaries."""
    _, schemas = real_app
    reads = [select(app.Account).where(app.Account.deleted_at.is_(None)),
             select(app.Contact).where(app.Contact.is_deleted.is_(False)),
             select(app.Invoice).where(app.Invoice.archived.is_(False), app.Invoice.archived_at.is_(None)),
             select(app.Ticket).where(app.Ticket.deleted_at.is_(None))]
    for tenant in (A, B):
        engine = schemas.engine.execution_options(schema_translate_map={"tenant": tenant})
        with Session(engine) as session:
            for read in reads:
                assert len(session.scalars(read).all()) == CANARY_ROWS, (tenant, str(read))
            accounts = session.scalars(select(app.Account)).all()
            assert {a.kind for a in accounts} <= set(app.AccountKind) and all(a.settings for a in accounts)


def test_a_shared_table_pointing_into_a_tenant_table_is_seeded_after_the_canaries_and_after_each_reset(real_app):
    _, schemas = real_app
    query = text("SELECT count(*) FROM audit_entry e JOIN pg_constraint c ON c.conrelid = 'audit_entry'::regclass "
                 "AND c.contype = 'f' WHERE e.payload->>'canary' = :tag")
    with schemas.engine.connect() as conn:
        assert conn.execute(query, {"tag": tenant_tag(SHARED_OWNER)}).scalar() == CANARY_ROWS
        anchor = conn.execute(text("SELECT confrelid::regclass::text FROM pg_constraint "
                                   "WHERE conrelid = 'audit_entry'::regclass AND contype = 'f'")).scalar()
    assert anchor == "account"  # public's decoy copy (the schema it was created with), rows 1..8 there
    schemas.reset(reseed_only_written=False)  # empties the account copies it points at, then fills both again
    with schemas.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_entry")).scalar() == CANARY_ROWS
        assert conn.execute(text("SELECT count(*) FROM plan")).scalar() == CANARY_ROWS


def test_reseeding_with_bound_parameters_puts_back_the_same_canaries(real_app, monkeypatch):
    """The reseed runs one literal script when the server takes it, else bound inserts: both agree."""
    _, schemas = real_app
    read = ";".join(f"SELECT '{t}', md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {_quoted(A)}.{t} x"
                    for t in TENANT_TABLES)

    def fingerprint() -> list:
        with schemas.engine.connect() as conn:
            return [conn.execute(text(q)).one() for q in read.split(";")] + [
                conn.execute(text("SELECT md5(string_agg(e::text, ',' ORDER BY e.id)) FROM audit_entry e")).one()]

    literal = fingerprint()
    monkeypatch.setattr(team_provisioning, "_script", lambda *args: None)
    schemas.reset(reseed_only_written=False)
    assert fingerprint() == literal


def test_team_steps_read_and_write_every_tenant_table(real_app):
    own_stack, schemas = real_app
    names = step_names(schemas.team)
    assert {f"team_insert:{t}" for t in ("account", "invoice", "ticket", "contact")} <= set(names)
    steps = tuple(n for n in names if not n.startswith("team_delete")) + ("commit",) + tuple(
        n for n in names if n.startswith(("team_read", "team_delete"))) + ("commit",)
    result = run_cell(own_stack, schemas, load_strategy("translate_map"), "transaction", "team",
                      Program(((Request(A, steps),),)))
    assert all(s.error is None for s in result.history.steps), explain(result)
    reads = [s for s in result.history.steps if s.step.startswith("team_read")]
    assert all(s.rows and {r.owner for r in s.rows} == {A} for s in reads), explain(result)
    assert not [f for f in result.findings if f.kind != "pool_pollution"], explain(result)


def test_schema_sql_provides_the_type_the_metadata_cannot_describe(harness_config, tmp_path):
    sql = tmp_path / "types.sql"
    sql.write_text("BEGIN;\n" + DOMAIN_SQL + "COMMIT;\n")  # as alembic upgrade head --sql prints it
    team = load_team(dataclasses.replace(harness_config, models="team_real_app_models:CrmBase", schema_sql=sql))
    with start_stack(harness_config) as own_stack:
        schemas = Tenancy(own_stack, (A, B), team=team)
        try:
            schemas.provision()
            with schemas.engine.connect() as conn:
                for tenant in (A, B):
                    rows = conn.execute(text(f"SELECT name, reply_to, archived FROM {_quoted(tenant)}.lead")).all()
                    assert len(rows) == CANARY_ROWS and all(tenant_tag(tenant) in n for n, _, _ in rows)
                    assert {(r, a) for _, r, a in rows} == {("support@example.org", False)}  # its server default
        finally:
            schemas.close()


def test_schema_sql_that_does_not_create_the_type_is_refused_naming_it(harness_config, tmp_path):
    sql = tmp_path / "types.sql"
    sql.write_text("CREATE DOMAIN email AS text;\n")  # another name than the one the models use
    team = load_team(dataclasses.replace(harness_config, models="team_real_app_models:CrmBase", schema_sql=sql))
    with start_stack(harness_config) as own_stack:
        schemas = Tenancy(own_stack, (A, B), team=team)
        try:
            with pytest.raises(UsageError) as refused:
                schemas.provision()
        finally:
            schemas.close()
    message = str(refused.value)
    assert f"after --schema-sql {sql} ran" in message and "email_address (used by lead.email, lead.reply_to)" in message
    assert "to_regtype('email_address')" in message


def test_a_canary_the_table_refuses_names_the_table_the_constraint_and_what_the_server_said(harness_config):
    metadata = MetaData()
    Table("voucher", metadata, Column("id", Integer, primary_key=True), Column("code", String(12), nullable=False),
          CheckConstraint("code ~ '^[A-Z]{4}-[0-9]{4}$'", name="voucher_code_format"), schema="tenant")
    team = Team(team_models("test:voucher", metadata, metadata))
    with start_stack(harness_config) as own_stack:
        schemas = Tenancy(own_stack, (A, B), team=team)
        try:
            with pytest.raises(CanaryError) as refused:
                schemas.provision()
        finally:
            schemas.close()
    message = str(refused.value)
    assert "voucher" in message and "voucher_code_format" in message and "violates check constraint" in message
    assert "CHECK constraint" in message
