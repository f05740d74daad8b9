"""Row-level security layouts and async layers on real servers."""

from __future__ import annotations

from sqlalchemy import text

from harness.report.explain import explain
from harness.tenancy.strategy import load_strategy
from harness.workload.cell import run_cell
from harness.workload.generated import PROFILES, explore
from harness.workload.named import NAMED_SCENARIOS


def run(stack, tenancy, spec: str, route: str, scenario: str):
    program = NAMED_SCENARIOS[scenario].program(tenancy.tenants, tenancy.hostile)
    return run_cell(stack, tenancy, load_strategy(spec), route, scenario, program)


def test_rls_tables_are_shared_owned_by_the_login_role_and_hold_every_tenant(stack, tenancy):
    rls = tenancy.for_layout("rls")
    rls.reset()  # the seeds, whatever cells ran before
    with rls.engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")).all())
        assert owners and set(owners.values()) == {"app"}
        assert conn.execute(text("SELECT bool_and(relrowsecurity) FROM pg_class WHERE relname = ANY(:t)"),
                            {"t": list(owners)}).scalar()
        per_owner = dict(conn.execute(text("SELECT owner, count(*) FROM product GROUP BY owner")).all())
    assert set(per_owner) == set(rls.seeded) and set(per_owner.values()) == {8}
    assert {"Acme", "acme"} <= set(per_owner)


def test_forced_policies_isolate_and_unforced_ones_let_the_owner_read_everything(stack, tenancy):
    forced = run(stack, tenancy, "rls_guc_pinned", "transaction", "simultaneous_tenants")
    assert forced.verdict.value == "pass", explain(forced)
    unforced = run(stack, tenancy, "layout_strategies:UnforcedGucPinned", "transaction", "fresh_session")
    assert unforced.verdict.value == "fail", explain(unforced)
    assert {f.kind for f in unforced.findings} >= {"cross_tenant_read"}
    assert all(s.user == "app" for s in unforced.history.steps if s.rows)


def test_a_lost_role_runs_as_the_owner_and_the_history_shows_who_ran_each_step(stack, tenancy):
    result = run(stack, tenancy, "rls_role_session", "direct", "after_rollback")
    assert result.verdict.value == "fail"
    leaking = [s for s in result.history.steps if any(r.owner != s.tenant for r in s.rows)]
    assert leaking and all(s.user == "app" for s in leaking)
    assert any(s.user == s.tenant for s in result.history.steps if s.rows)


def test_a_session_level_guc_is_pool_pollution(stack, tenancy):
    result = run(stack, tenancy, "rls_guc_session", "transaction", "pool_state")
    polluted = [f for f in result.findings if f.kind == "pool_pollution"]
    assert polluted and "app.tenant_id" in polluted[0].explanation


def test_async_layers_run_the_same_steps_and_checks(stack, tenancy):
    sound = run(stack, tenancy, "translate_map_pinned_async", "transaction", "after_commit")
    assert sound.verdict.value == "pass", explain(sound)
    leaky = run(stack, tenancy, "search_path_set_async", "transaction", "after_commit")
    assert leaky.verdict.value == "fail"
    users_raw = run(stack, tenancy, "layout_strategies:async_translate_map", "direct", "raw_text")
    assert users_raw.verdict.value == "fail"
    assert {f.kind for f in users_raw.findings if f.gating} >= {"cross_tenant_read"}


def test_generated_programs_run_for_rls_and_async_layers(stack, tenancy):
    for spec, expected in (("rls_guc_pinned_async", "pass"), ("rls_role_session", "fail")):
        result, seen = explore(stack, tenancy, load_strategy(spec), "transaction", PROFILES["dev"], seed=3)
        assert result.verdict.value == expected, explain(result)
        assert seen.examples >= 1


def test_the_declarative_shared_classes_read_the_shared_tables_through_a_layer(stack, tenancy):
    from sqlalchemy import func, select

    from harness.tenancy.declarative import MarketplaceJob, Product
    from harness.workload.cell import CellSetup

    with CellSetup(stack, tenancy, load_strategy("rls_guc_pinned"), "transaction") as cell:
        with cell.strategy.session("Acme") as session:
            products = session.scalars(select(Product).order_by(Product.id)).all()
            jobs = session.scalar(select(func.count()).select_from(MarketplaceJob))
    assert products and {p.owner for p in products} == {"Acme"}  # the policies, not a WHERE of ours
    assert [p.id for p in products] == sorted({p.id for p in products}) and jobs
