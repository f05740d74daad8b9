"""8. Static scan: no search_path bindings, no unqualified raw SQL on tenant tables, no model without the
placeholder (file:line, non-zero exit on a gating finding; migrations are listed, not gating)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "scan"


def harness_scan(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "scan", *map(str, args)], capture_output=True,
                          text=True, timeout=60)


def test_8_static_scan_flags_tenancy_leaks_with_file_and_line(tmp_path):
    sarif = tmp_path / "scan.sarif"
    result = harness_scan(FIXTURES, "--sarif", sarif)
    assert result.returncode == 1, result.stdout + result.stderr
    flagged = {line.split(":")[0] for line in result.stdout.splitlines() if ": [" in line}
    assert {str(FIXTURES / name) for name in (
        "legacy_session.py", "legacy_multiline.py", "legacy_helpers.py", "raw_tenant_prefix.py",
        "legacy_set_config.py", "binding_forms.py", "raw_unqualified.py", "models_missing_placeholder.py",
        "plpgsql_long.py", "py312_fstrings.py", "pep695.py", "helper_calls/views.py")} <= flagged
    assert not {str(FIXTURES / name) for name in ("clean_translate_map.py", "false_alarms.py")} & flagged
    assert f"{FIXTURES / 'raw_unqualified.py'}:22: [unqualified-tenant-table]" in result.stdout
    assert json.loads(sarif.read_text())["version"] == "2.1.0"


def test_8_static_scan_passes_clean_code_and_migrations_alone():
    result = harness_scan(FIXTURES / "clean_translate_map.py")
    assert result.returncode == 0, result.stdout
    assert "no search_path leftovers" in result.stdout
    migrations = harness_scan(FIXTURES / "migrations")
    assert migrations.returncode == 0, migrations.stdout
    assert "[migrations] (not gating)" in migrations.stdout
