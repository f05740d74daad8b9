"""Fast tests of the static scan (scenario 8): exact rule and line per fixture, and the CLI contract.

The fixtures in ``tests/fixtures/scan`` are data the scanner reads, never
imports; their line numbers are asserted here, so edit both together.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness.scan import ScanFinding, main, scan_path, scan_source

FIXTURES = Path(__file__).parent / "fixtures" / "scan"

EXPECTED: dict[str, set[tuple[str, int]]] = {
    "legacy_session.py": {
        ("set-search-path-sql", 7),    # f-string
        ("set-search-path-sql", 11),   # "..." + schema, SET LOCAL
        ("set-search-path-sql", 15),   # lower case SET SESSION, % formatting
        ("set-search-path-sql", 16),   # two spaces, .format()
    },
    "legacy_multiline.py": {
        ("set-search-path-sql", 7),    # third line of a triple-quoted constant
        ("set-search-path-sql", 16),   # implicit concatenation: the piece holding search_path
        ("set-search-path-sql", 22),   # triple-quoted f-string, SET and search_path on two lines
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
        ("hardcoded-tenant-prefix", 9),    # module constant bound below the function
        ("hardcoded-tenant-prefix", 13),   # exec_driver_sql(f"... tenant.{table}")
        ("hardcoded-tenant-prefix", 20),   # text("... tenant.product")
        ("hardcoded-tenant-prefix", 21),   # sa.text('... "tenant"."order"')
        ("hardcoded-tenant-prefix", 22),   # sqlalchemy.text(... + "Tenant . customer ...")
        ("hardcoded-tenant-prefix", 27),   # function-level constant
    },
    "clean_translate_map.py": set(),
}


def _rules_and_lines(findings: list[ScanFinding]) -> set[tuple[str, int]]:
    return {(f.rule, f.line) for f in findings}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_findings_are_exact(name: str) -> None:
    findings = scan_path(FIXTURES / name)
    assert _rules_and_lines(findings) == EXPECTED[name]
    assert len(findings) == len(EXPECTED[name]), "one finding per (line, rule)"
    assert all(f.path == str(FIXTURES / name) for f in findings)


def test_findings_carry_a_snippet_and_a_one_sentence_message() -> None:
    findings = {f.line: f for f in scan_path(FIXTURES / "legacy_multiline.py")}
    assert findings[7].snippet == "SET LOCAL search_path TO acme, public;"
    for finding in scan_path(FIXTURES):
        assert finding.message.endswith(".") and finding.message.count(". ") == 0, finding.message
        assert "schema_translate_map" in finding.message or finding.rule == "hardcoded-tenant-prefix"


def test_docstrings_and_comments_are_not_findings_but_other_strings_are() -> None:
    source = '''"""Module: we used to SET search_path here."""
# SET search_path TO acme  (a comment)
class Manager:
    """Class: no SET LOCAL search_path any more."""
    def run(self):
        """Function: set_config('search_path', ...) is gone too."""
        "SET search_path TO acme"
'''
    assert _rules_and_lines(scan_source(source)) == {("set-search-path-sql", 7)}


def test_one_finding_per_rule_for_a_string_matching_several_patterns() -> None:
    source = ('conn.execute(text(f"SET search_path TO {s}; SELECT set_config(\'search_path\', \'x\', true); '
              'SELECT * FROM tenant.product"))\n')
    assert _rules_and_lines(scan_source(source)) == {
        ("set-search-path-sql", 1), ("set-config-search-path", 1), ("hardcoded-tenant-prefix", 1)}


@pytest.mark.parametrize("source", [
    'x = "RESET search_path"\n',
    'x = "SHOW search_path"\n',
    'conn.execute(text("SELECT * FROM my_tenant.product"))\n',
    'conn.execute(select(func.set_config("work_mem", "64MB", True)))\n',
    'sql = "SELECT * FROM tenant.product"\nlabel = sql.upper()\n',
    'def set_tenant(conn): pass\nreset_search_path_cache()\n',
    # a local name rebound to a non-string shadows the module constant
    'SQL = "SELECT * FROM tenant.x"\ndef f(c):\n    SQL = build()\n    c.execute(text(SQL))\n',
])
def test_near_misses_are_not_findings(source: str) -> None:
    assert scan_source(source) == []


def test_unparsable_and_non_utf8_files_do_not_crash(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\ndef f(:\n    pass\n")
    (tmp_path / "latin1.py").write_bytes(b'# caf\xe9\nset_search_path(conn, "caf\xe9")\n')
    findings = scan_path(tmp_path)
    assert [(Path(f.path).name, f.rule, f.line) for f in findings] == [
        ("broken.py", "unparsable", 2), ("latin1.py", "search-path-helper", 2)]
    assert findings[0].snippet == "def f(:"
    assert [f.rule for f in scan_source("x = 1\0\n")] == ["unparsable"]


def test_folder_scan_finds_every_fixture_and_skips_tool_folders(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "app")
    for skipped in (".venv/lib", "venv", ".git", "app/__pycache__", "node_modules/pkg", "lib/site-packages"):
        (tmp_path / skipped).mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped / "vendored.py").write_text("set_search_path(conn, 'acme')\n")
    findings = scan_path(tmp_path)
    by_file = {name: {(f.rule, f.line) for f in findings if Path(f.path).name == name} for name in EXPECTED}
    assert by_file == EXPECTED
    assert {Path(f.path).name for f in findings} == {n for n, expected in EXPECTED.items() if expected}
    assert findings == sorted(findings, key=lambda f: (f.path, f.line, f.rule))


def test_main_clean_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FIXTURES / "clean_translate_map.py")]) == 0
    assert capsys.readouterr().out == "no search_path leftovers in 1 file(s) scanned\n"


def test_main_findings_exit_1_with_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FIXTURES)]) == 1
    lines = capsys.readouterr().out.splitlines()
    total = sum(len(expected) for expected in EXPECTED.values())
    assert lines[-1] == f"{total} finding(s) in {len(EXPECTED)} file(s) scanned"
    assert len(lines) == total + 1
    assert lines[0].startswith(f"{FIXTURES / 'legacy_helpers.py'}:3: [schema-manager] SchemaManager ")
    assert all(re.fullmatch(r"\S+\.py:\d+: \[[a-z-]+\] [^\n]+\.", line) for line in lines[:-1])


def test_main_json_lists_the_findings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FIXTURES / "legacy_set_config.py"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["rule"], d["line"]) for d in data] == [("set-config-search-path", n) for n in (8, 12, 16)]
    assert set(data[0]) == {"path", "line", "rule", "message", "snippet"}


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
