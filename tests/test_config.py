"""The configuration resolves once with CLI > env > pyproject > defaults."""

from pathlib import Path

import pytest

from harness.config import resolve_config
from harness.errors import UsageError


def write_pyproject(folder: Path, body: str) -> None:
    (folder / "pyproject.toml").write_text("[tool.harness]\n" + body)


def test_defaults_apply_without_any_source(tmp_path):
    config = resolve_config({}, env={}, cwd=tmp_path)
    assert config.backend == "auto"
    assert config.keep_tmp is False
    assert config.sources["start_timeout"] == "default"


def test_cli_beats_env_beats_pyproject(tmp_path):
    write_pyproject(tmp_path, 'start_timeout = 7\nsession_pool_size = 11\nkeep_tmp = true\n')
    config = resolve_config({"start_timeout": "3"}, env={"HARNESS_SESSION_POOL_SIZE": "22"}, cwd=tmp_path)
    assert config.start_timeout == 3.0 and config.sources["start_timeout"] == "cli"
    assert config.session_pool_size == 22 and config.sources["session_pool_size"] == "env"
    assert config.keep_tmp is True and config.sources["keep_tmp"] == "pyproject"


def test_pyproject_is_found_in_a_parent_folder(tmp_path):
    write_pyproject(tmp_path, 'transaction_pool_size = 4\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert resolve_config({}, env={}, cwd=nested).transaction_pool_size == 4


def test_unknown_pyproject_key_is_a_usage_error(tmp_path):
    write_pyproject(tmp_path, 'pool_sise = 4\n')
    with pytest.raises(UsageError, match="pool_sise"):
        resolve_config({}, env={}, cwd=tmp_path)


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(UsageError, match="HARNESS_KEEP_TMP"):
        resolve_config({}, env={"HARNESS_KEEP_TMP": "maybe"}, cwd=tmp_path)


def test_config_is_frozen(tmp_path):
    config = resolve_config({}, env={}, cwd=tmp_path)
    with pytest.raises(AttributeError):
        config.backend = "docker"  # type: ignore[misc]
