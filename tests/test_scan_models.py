"""A model without a schema beside placeholder models: per tenant, shared, or unclear, from the evidence.

The fixture (tests/fixtures/scan_models/app) is a shop laid out like a real app: a ``models`` package
with its Base and TenantMixin, per-tenant ``tenant/`` modules, a ``shared/`` package, and models
elsewhere in the tree. Only a model the evidence says is per tenant is told to take the placeholder;
a shared one is listed, never flagged; one the scan cannot place gets information, not a gate.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.scan import scan_paths
from harness.scan.findings import RULES
from harness.scan.models import MappedClass, ModelFacts, TenantModels, read_models
from harness.scan.syntax import parse_module
from harness.scan.visitor import ModuleScan

FIXTURE = Path(__file__).parent / "fixtures" / "scan_models"
CLINIC_MODELS = Path(__file__).parent.parent / "examples" / "clinic" / "clinic" / "models.py"

EXPECTED: dict[str, set[tuple[str, int, bool]]] = {
    "app/models/tenant/catalog.py": {
        ("model-scope-unclear", 9, False),        # Brand: beside Product, yet Product points at it
        ("tenant-fk-to-public", 20, False),       # products -> brands.id
        ("model-missing-placeholder", 32, True),  # ProductNote: same module as Product
    },
    "app/models/tenant/orders.py": {
        ("tenant-fk-to-public", 13, False), ("tenant-fk-to-public", 14, False),  # orders -> shared tables
        # OrderLine: its own __table_args__ hides TenantMixin's (its keys into tenant tables are that finding)
        ("model-missing-placeholder", 17, True),
    },
    "app/models/tenant/events.py": {
        ("model-missing-placeholder", 14, True),  # Table("event_tags"): same module as Table("events")
    },
    "app/reports/models.py": {
        ("model-missing-placeholder", 9, True),   # SalesSnapshot: ForeignKey to tenant.products.id
    },
    "app/audit/models.py": {("model-scope-unclear", 9, False)},  # lone: nothing says which
}
SHARED = {("Subscription", "subscriptions"), ("Table('currencies')", "currencies"), ("Plan", "plans"),
          ("PlanFeature", "plan_features"), ("TenantAccount", "tenants")}


def _by_file(root: Path) -> dict[str, set[tuple[str, int, bool]]]:
    found: dict[str, set[tuple[str, int, bool]]] = {}
    for finding in scan_paths([root]).findings:
        found.setdefault(Path(finding.path).relative_to(root).as_posix(), set()).add(
            (finding.rule, finding.line, finding.gating))
    return found


def _models(root: Path, sql_schemas: dict[str, set[str | None]] | None = None) -> TenantModels:
    """The models of every file under ``root``, read as the scan reads them."""
    facts = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        parsed = parse_module(source, str(path))
        scan = ModuleScan(parsed, source, str(path))
        scan.run(parsed.tree)
        facts.append(scan.report.models)
    return read_models(facts, sql_schemas=sql_schemas)


def test_each_model_is_judged_by_the_evidence_of_its_scope() -> None:
    assert _by_file(FIXTURE) == EXPECTED


def test_shared_models_are_listed_with_their_reason_and_never_told_to_take_the_placeholder() -> None:
    models = _models(FIXTURE)
    assert {(m.name, m.table) for m in models.shared} == SHARED
    reasons = {m.name: m.reason for m in models.shared}
    assert reasons["Subscription"] == "tenant table Order points at it"
    assert "its path models/shared/plans.py says shared" in reasons["Plan"]
    assert "same module as Region, in public" in reasons["TenantAccount"]
    findings = scan_paths([FIXTURE]).findings
    shared_tables = {table for _, table in SHARED}
    assert not [f for f in findings if f.table in shared_tables and "placeholder" in f.message]
    assert not [f for f in findings if "/shared/" in f.path or "/billing/" in f.path]


def test_a_tenant_model_is_told_why_and_how_to_take_the_placeholder() -> None:
    messages = {f.table: f.message for f in scan_paths([FIXTURE]).findings if f.rule == "model-missing-placeholder"}
    assert "(same module as Product)" in messages["product_notes"]
    assert messages["product_notes"].endswith('give it __table_args__ = {"schema": "tenant"}.')
    assert "inherits TenantMixin's placeholder" in messages["order_lines"]
    assert messages["order_lines"].endswith('give it "schema": "tenant" in its __table_args__.')
    assert messages["event_tags"].startswith("Table('event_tags') has no schema")
    assert messages["event_tags"].endswith('give it schema="tenant".')
    assert "ForeignKey to tenant.products.id" in messages["sales_snapshots"]


def test_a_model_the_scan_cannot_place_is_told_to_name_either_schema_without_gating() -> None:
    assert RULES["model-scope-unclear"].gates is False
    unclear = {f.table: f for f in scan_paths([FIXTURE]).findings if f.rule == "model-scope-unclear"}
    assert set(unclear) == {"brands", "audit_entries"}
    for finding in unclear.values():
        assert not finding.gating and "give it" not in finding.message
        assert '"public" (or your shared schema) if it is shared' in finding.message
        assert "the 'tenant' placeholder if it is per tenant" in finding.message
    assert "per tenant: same module as Product; shared: tenant table Product points at it" in unclear["brands"].message
    assert "nothing in its module, package, path or foreign keys says which" in unclear["audit_entries"].message


def test_raw_sql_naming_a_schema_says_where_the_model_lives() -> None:
    def audit(sql_schemas):
        models = _models(FIXTURE, sql_schemas)
        return ([i.rule for i in models.issues if i.table == "audit_entries"],
                [m.reason for m in models.shared if m.table == "audit_entries"])

    assert audit({"audit_entries": {"public", None}}) == ([], ["raw SQL names public.audit_entries"])
    assert audit({"audit_entries": {"tenant"}}) == (["model-missing-placeholder"], [])
    assert audit({"audit_entries": {None, "{}"}}) == (["model-scope-unclear"], [])  # unqualified says nothing
    # Brand: raw SQL in public adds to the shared side, not enough against its tenant module.
    assert [i.rule for i in _models(FIXTURE, {"brands": {"public"}}).issues if i.table == "brands"] == [
        "model-scope-unclear"]


def test_only_the_path_below_the_scanned_folder_says_shared(tmp_path: Path) -> None:
    """A checkout under /srv/shared/ does not make every model shared."""
    root = tmp_path / "shared" / "public"
    shutil.copytree(FIXTURE, root)
    assert _by_file(root) == EXPECTED


def test_a_package_of_tenant_modules_is_weaker_than_the_model_itself(tmp_path: Path) -> None:
    (tmp_path / "catalog.py").write_text(
        "class Base(DeclarativeBase):\n    pass\n"
        "class Product(Base):\n    __tablename__ = 'products'\n    __table_args__ = {'schema': 'tenant'}\n")
    (tmp_path / "extras.py").write_text(
        "from catalog import Base\n"
        "class Extra(Base):\n    __tablename__ = 'extras'\n"
        "class Country(Base):\n    __tablename__ = 'countries'\n    __table_args__ = {'schema': 'public'}\n"
        "class Wish(Base):\n    __tablename__ = 'wishes'\n")
    (tmp_path / "loose.py").write_text(
        "from catalog import Base\nclass Loose(Base):\n    __tablename__ = 'loose'\n")
    findings = {(f.rule, f.table) for f in scan_paths([tmp_path]).findings}
    # Loose: alone in its module, only its package holds a tenant model: not enough to gate (a flat package
    # often holds the one shared table); Extra and Wish sit beside a public model.
    assert findings == {("model-scope-unclear", "loose")}
    found = scan_paths([tmp_path]).findings
    assert not found[0].gating and "(only its package says per tenant: same package as Product)" in found[0].message


def test_the_clinic_plan_without_its_explicit_public_is_not_told_to_take_the_placeholder(tmp_path: Path) -> None:
    """Plan shares a module with the tenant models, but a tenant table points at it: the scan cannot tell."""
    source = CLINIC_MODELS.read_text()
    assert '    __table_args__ = {"schema": "public"}' in source
    lines = source.splitlines(keepends=True)
    (tmp_path / "models.py").write_text("".join(line for line in lines if '"schema": "public"' not in line))
    for target in ("public.plan.code", "plan.code"):
        (tmp_path / "models.py").write_text((tmp_path / "models.py").read_text().replace("public.plan.code", target))
        findings = scan_paths([tmp_path]).findings
        assert not [f for f in findings if f.gating]
        plan = [f for f in findings if f.table == "plan"]
        assert [(f.rule, f.gating) for f in plan] == [("model-scope-unclear", False)]
        assert "tenant table Patient points at it" in plan[0].message


def test_raw_sql_naming_a_model_in_public_is_read_by_the_scan_as_shared_evidence(tmp_path) -> None:
    """Through the scanner: a lone schema-less model is unclear until the code's own raw SQL reads it as
    public.plans; then it is shared, listed and not flagged."""
    (tmp_path / "models.py").write_text(
        "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
        "class Base(DeclarativeBase):\n    pass\n"
        "class Order(Base):\n    __tablename__ = 'orders'\n    __table_args__ = {'schema': 'tenant'}\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n")
    (tmp_path / "billing.py").write_text(
        "from sqlalchemy.orm import Mapped, mapped_column\nfrom models import Base\n"
        "class Plan(Base):\n    __tablename__ = 'plans'\n    code: Mapped[str] = mapped_column(primary_key=True)\n")
    assert [(f.rule, f.gating) for f in scan_paths([tmp_path]).findings] == [("model-scope-unclear", False)]
    (tmp_path / "jobs.py").write_text("from sqlalchemy import text\n"
                                      "def plans(conn):\n    return conn.execute(text('SELECT code FROM public.plans'))\n")
    result = scan_paths([tmp_path])
    assert result.findings == []
    assert len(result.shared_models) == 1 and result.shared_models[0].startswith("Plan (plans, ")
    assert "public.plans" in result.shared_models[0]


BASE = ("from sqlalchemy import ForeignKey\nfrom sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
        "class Base(DeclarativeBase):\n    pass\n"
        "class TenantMixin:\n    __table_args__ = {'schema': 'tenant'}\n"
        "class Order(TenantMixin, Base):\n    __tablename__ = 'orders'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n")


def _tree(root: Path, files: dict[str, str]) -> Path:
    """``files`` (path below ``root`` -> source) written under ``root``, beside a models/base.py holding the
    Base, the TenantMixin and one tenant model (Order)."""
    for relative, source in {"models/base.py": BASE, **files}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(source)
    return root


def _model(name: str, table: str, *lines: str) -> str:
    return "\n".join(["from sqlalchemy import ForeignKey", "from sqlalchemy.orm import Mapped, mapped_column",
                      "from models.base import Base, TenantMixin", f"class {name}(Base):",
                      f"    __tablename__ = {table!r}", *(f"    {line}" for line in lines), ""])


def _judged(root: Path) -> tuple[dict[str, tuple[str, bool, str]], dict[str, str]]:
    """Table -> (rule, gating, message) of the model findings, and table -> reason of the shared models."""
    findings = {f.table: (f.rule, f.gating, f.message) for f in scan_paths([root]).findings
                if f.rule.startswith("model-")}
    return findings, {m.table: m.reason for m in _models(root).shared}


def test_a_key_from_a_shared_table_says_the_table_it_names_is_shared(tmp_path: Path) -> None:
    """A public table cannot point into a tenant's schema: what it points at is shared, as surely as a tenant
    module says per tenant (the two together are unclear, never a gate)."""
    root = _tree(tmp_path, {
        # Currency sits beside Order (a tenant module), yet public.countries points at it.
        "models/base.py": BASE + "class Currency(Base):\n    __tablename__ = 'currencies'\n"
                                 "    code: Mapped[str] = mapped_column(primary_key=True)\n",
        "geo/models.py": _model("Country", "countries", "__table_args__ = {'schema': 'public'}",
                                "code: Mapped[str] = mapped_column(primary_key=True)",
                                "currency: Mapped[str] = mapped_column(ForeignKey('currencies.code'))",
                                "language: Mapped[str] = mapped_column(ForeignKey('public.languages.code'))"),
        # Language: alone in its module and folder, nothing but Country's key says anything about it.
        "i18n/models.py": _model("Language", "languages", "code: Mapped[str] = mapped_column(primary_key=True)"),
    })
    findings, shared = _judged(root)
    assert set(findings) == {"currencies"}
    rule, gating, message = findings["currencies"]
    assert (rule, gating) == ("model-scope-unclear", False)
    assert "per tenant: same module as Order; shared: shared table Country (public) points at it" in message
    assert shared == {"languages": "shared table Country (public) points at it"}


def test_raw_sql_says_shared_only_in_public_or_a_schema_the_models_declare_shared(tmp_path: Path) -> None:
    """SQL naming one tenant's schema (acme_clinic.invoices, in a test, a fixture or a one-off job) says nothing
    about where invoices are meant to live; public or a schema the models put shared tables in does."""
    def audit(schemas: set[str | None]) -> tuple[list[str], list[str]]:
        models = _models(FIXTURE, {"audit_entries": schemas})
        return ([i.rule for i in models.issues if i.table == "audit_entries"],
                [m.reason for m in models.shared if m.table == "audit_entries"])

    assert audit({"acme_clinic"}) == (["model-scope-unclear"], [])
    assert audit({"public"}) == ([], ["raw SQL names public.audit_entries"])

    def job(schema: str) -> str:
        return ("from sqlalchemy import text\ndef totals(conn):\n"
                f"    return conn.execute(text('SELECT total FROM {schema}.invoices'))\n")

    root = _tree(tmp_path, {
        "billing/models.py": _model("Invoice", "invoices", "id: Mapped[int] = mapped_column(primary_key=True)"),
        "geo/models.py": _model("Country", "countries", "__table_args__ = {'schema': 'reference'}",
                                "code: Mapped[str] = mapped_column(primary_key=True)"),
        "jobs/totals.py": job("acme_clinic"),
    })
    findings, shared = _judged(root)
    assert findings["invoices"][:2] == ("model-scope-unclear", False) and "invoices" not in shared
    (root / "jobs" / "totals.py").write_text(job("reference"))  # reference: Country's schema, not the tenant's
    result = scan_paths([root])
    assert not [f for f in result.findings if f.table == "invoices"]
    assert [m for m in result.shared_models if m.startswith("Invoice (invoices, ")][0].endswith(
        ": raw SQL names reference.invoices)")


def test_only_a_whole_folder_or_module_name_says_shared(tmp_path: Path) -> None:
    """public_api/ and commonmark/ are not public and common; models/public.py and shared/ are."""
    lone = "id: Mapped[int] = mapped_column(primary_key=True)"
    root = _tree(tmp_path, {
        "public_api/models.py": _model("ApiKey", "api_keys", lone),
        "commonmark/render.py": _model("Rendered", "rendered", lone),
        "global_settings.py": _model("Setting", "settings", lone),
        "models/public.py": _model("Plan", "plans", lone),
        "shared/registry.py": _model("TenantAccount", "tenants", lone),
        "Common/lookups.py": _model("Colour", "colours", lone),
    })
    findings, shared = _judged(root)
    assert {table: rule for table, (rule, _, _) in findings.items()} == {
        "api_keys": "model-scope-unclear", "rendered": "model-scope-unclear", "settings": "model-scope-unclear"}
    assert shared == {"plans": "its path models/public.py says shared",
                      "tenants": "its path shared/registry.py says shared",
                      "colours": "its path Common/lookups.py says shared"}


def many_models(n: int, per_module: int = 20) -> list[ModelFacts]:
    """``n`` tenant models, each pointing at one of ``n`` shared schema-less ones, ``per_module`` to a module
    (bench/scan.py times the inference on these)."""
    base = ModelFacts(classes=[MappedClass("app/base.py", 1, "Base", ("DeclarativeBase",)),
                               MappedClass("app/base.py", 3, "TenantMixin", (), has_table_args=True,
                                           table_args_schema="tenant")])
    facts = [base]
    for k in range(n):
        facts.append(ModelFacts(classes=[
            MappedClass(f"app/tenant/m{k // per_module}.py", k, f"T{k}", ("TenantMixin", "Base"), f"t{k}",
                        foreign_keys=[(k, f"s{k}.id")]),
            MappedClass(f"app/catalog/m{k // per_module}.py", k, f"S{k}", ("Base",), f"s{k}")]))
    return facts


def test_the_scope_of_thousands_of_models_is_inferred_from_the_index() -> None:
    """2000 tenant models and the 2000 shared ones they point at: every shared one is found by its keys
    (the inference looks evidence up in an index; bench/scan.py reports its time)."""
    models = read_models(many_models(2000))
    assert len(models.shared) == 2000 and models.shared[7].reason == "tenant table T7 points at it"
    assert sum(issue.rule == "tenant-fk-to-public" for issue in models.issues) == 2000
