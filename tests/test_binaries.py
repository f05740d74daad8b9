"""Missing or misconfigured binaries give an error that says what to do, and start nothing."""

import glob
import os
import subprocess
import sys

import pytest

from harness.errors import SetupError
from harness.stack.binaries import find_pg_bindir, find_pgbouncer
from harness.stack.native import run_root


def test_bad_pg_bindir_names_the_variable_and_what_is_missing(tmp_path):
    with pytest.raises(SetupError) as info:
        find_pg_bindir(tmp_path)
    message = str(info.value)
    assert f"HARNESS_PG_BINDIR={tmp_path}" in message
    assert "initdb" in message and "postgres" in message
    assert "To fix this" in message


def test_bad_pgbouncer_path_names_the_variable(tmp_path):
    with pytest.raises(SetupError, match="HARNESS_PGBOUNCER"):
        find_pgbouncer(tmp_path / "pgbouncer")


def test_missing_binaries_name_the_debian_packages(monkeypatch, tmp_path):
    import harness.stack.binaries as binaries

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binaries, "DEBIAN_PG_ROOT", tmp_path / "nothing")
    with pytest.raises(SetupError) as info:
        binaries.find_pg_bindir(None)
    assert "apt-get install postgresql pgbouncer" in str(info.value)
    assert "HARNESS_PG_BINDIR" in str(info.value)


def _leftover_run_dirs() -> set[str]:
    return set(glob.glob(os.path.join(run_root(), "tenant-harness-*-*")))


@pytest.mark.parametrize("variable", ["HARNESS_PG_BINDIR", "HARNESS_PGBOUNCER"])
def test_harness_up_with_a_bad_binary_exits_2_and_starts_nothing(tmp_path, variable):
    before = _leftover_run_dirs()
    env = {**os.environ, variable: str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-m", "harness", "up", "--seconds", "1"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert "To fix this" in result.stderr
    assert "Traceback" not in result.stderr
    assert "postgresql+psycopg://" not in result.stdout
    assert _leftover_run_dirs() <= before
