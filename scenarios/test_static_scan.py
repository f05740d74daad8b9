"""8. Static scan: no SET search_path leftovers, found with ast (file:line, non-zero exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "scan"


def harness_scan(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "scan", *map(str, paths)], capture_output=True,
                          text=True, timeout=60)


def test_8_static_scan_flags_legacy_code_with_file_and_line():
    result = harness_scan(FIXTURES)
    assert result.returncode == 1, result.stdout + result.stderr
    flagged = {line.split(":")[0] for line in result.stdout.splitlines() if ": [" in line}
    assert {str(FIXTURES / name) for name in ("legacy_session.py", "legacy_multiline.py", "legacy_helpers.py",
                                              "raw_tenant_prefix.py", "legacy_set_config.py")} <= flagged
    assert str(FIXTURES / "clean_translate_map.py") not in flagged


def test_8_static_scan_passes_clean_code():
    result = harness_scan(FIXTURES / "clean_translate_map.py")
    assert result.returncode == 0, result.stdout
    assert "no search_path leftovers" in result.stdout
