"""Built-in row-level security strategies: one shared table per model, policies per tenant.

Tables are owned by the login role, as migrations leave them. The table owner
skips row-level security unless it is FORCEd, so:
- the GUC strategies FORCE their policies (the owner is the role that queries);
- the role strategies do not: their queries run as a tenant role, and only a
  statement that runs as the owner (the role got lost) sees every row.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from harness.tenancy.drivers import open_session
from harness.tenancy.strategies.builtin import _EngineStrategy, _quoted

TABLES = ("product", "vinted_product", "marketplace_job", "marketplace_task", "publication_history", "attribute",
          "product_attribute")
GUC = "app.tenant_id"
PIN_SETTING = text("SELECT set_config(:name, :tenant, true)")


def _provision(admin_url: URL, statements: list[str]) -> None:
    engine = create_engine(admin_url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


class _RlsStrategy(_EngineStrategy):
    layout = "rls"
    models = "unqualified"


class RlsGucSession(_RlsStrategy):
    """Policies on current_setting('app.tenant_id'), set with set_config(..., false) when the session opens."""

    settings = (GUC,)

    @staticmethod
    def provision(admin_url: URL, tenants) -> None:
        policy = f"owner = current_setting('{GUC}', true)"
        _provision(admin_url, [s for t in TABLES for s in (
            f"CREATE POLICY tenant_isolation ON {t} USING ({policy}) WITH CHECK ({policy})",
            f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY")])

    def session(self, tenant: str):
        return open_session(self.engine, on_open=lambda session: session.execute(
            text("SELECT set_config(:name, :tenant, false)"), {"name": GUC, "tenant": tenant}))


class RlsGucPinned(RlsGucSession):
    """The same policies; the setting made transaction-local in every transaction (after_begin)."""

    def session(self, tenant: str):
        def pin(sess, transaction, connection) -> None:
            connection.execute(PIN_SETTING, {"name": GUC, "tenant": tenant})
        return open_session(self.engine, on_begin=pin)


class RlsRoleSession(_RlsStrategy):
    """One role per tenant, policies on current_user, SET ROLE once when the session opens."""

    @staticmethod
    def provision(admin_url: URL, tenants) -> None:
        engine = create_engine(admin_url)
        q = lambda name: _quoted(engine, name)  # noqa: E731
        statements = []
        for tenant in tenants:
            statements += [
                f"DO $$ BEGIN CREATE ROLE {q(tenant)} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
                f"GRANT {q(tenant)} TO app",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {q(tenant)}",
            ]
        engine.dispose()
        policy = "owner = current_user::text"
        statements += [f"CREATE POLICY tenant_isolation ON {t} USING ({policy}) WITH CHECK ({policy})"
                       for t in TABLES]
        _provision(admin_url, statements)

    def session(self, tenant: str):
        statement = text(f"SET ROLE {_quoted(self.engine, tenant)}")
        return open_session(self.engine, on_open=lambda session: session.execute(statement))


class RlsRolePinned(RlsRoleSession):
    """The same roles; SET LOCAL ROLE in every transaction (after_begin)."""

    def session(self, tenant: str):
        statement = text(f"SET LOCAL ROLE {_quoted(self.engine, tenant)}")

        def pin(sess, transaction, connection) -> None:
            connection.execute(statement)
        return open_session(self.engine, on_begin=pin)


rls_guc_session = RlsGucSession
rls_guc_pinned = RlsGucPinned
rls_role_session = RlsRoleSession
rls_role_pinned = RlsRolePinned
