"""Tenant names: validation, the default set, quoting; and the route/strategy settings that name them."""

from __future__ import annotations

import pytest

from harness.config import resolve_config
from harness.errors import UsageError
from harness.tenancy.tenants import (DEFAULT_TENANTS, HOSTILE_TENANTS, MAX_IDENTIFIER_BYTES, default_tenants,
                                     needs_quoting, validate_tenant, validate_tenants)


@pytest.mark.parametrize("name", DEFAULT_TENANTS + HOSTILE_TENANTS)
def test_every_default_and_hostile_name_is_valid(name):
    assert validate_tenant(name) == name


def test_the_longest_hostile_name_is_exactly_the_limit():
    assert max(len(n.encode("utf-8")) for n in HOSTILE_TENANTS) == MAX_IDENTIFIER_BYTES == 63


def test_a_name_of_64_utf8_bytes_is_rejected_with_the_limit_in_the_message():
    name = "t" * 62 + "ä"
    assert len(name) == 63 and len(name.encode("utf-8")) == 64
    with pytest.raises(UsageError) as caught:
        validate_tenant(name)
    message = str(caught.value)
    assert "64 bytes" in message and "63 bytes" in message
    assert "nothing was created" in message


@pytest.mark.parametrize("name, words", [
    ("", "non-empty string"),
    ("a\x00b", "NUL"),
    ("public", "reserved"),
    ("PUBLIC", "reserved"),
    ("tenant", "reserved"),
    ("information_schema", "reserved"),
    ("pg_x", "pg_"),
    (None, "non-empty string"),
    (42, "non-empty string"),
    (b"acme", "non-empty string"),
])
def test_names_that_cannot_be_schemas_are_rejected(name, words):
    with pytest.raises(UsageError, match=words):
        validate_tenant(name)


def test_a_duplicate_name_is_rejected():
    with pytest.raises(UsageError, match="holds a name twice"):
        validate_tenants(["acme", "globex", "acme"])


def test_names_differing_only_by_case_are_not_duplicates():
    assert validate_tenants(["acme", "Acme"]) == ("acme", "Acme")


@pytest.mark.parametrize("names", [[], ["acme"]])
def test_fewer_than_two_tenants_are_rejected(names):
    with pytest.raises(UsageError, match="At least two tenants"):
        validate_tenants(names)


def test_validate_tenants_rejects_the_set_when_one_name_is_bad():
    with pytest.raises(UsageError, match="pg_catalog2"):
        validate_tenants(["acme", "globex", "pg_catalog2"])


def test_the_default_set_holds_names_that_differ_only_by_case():
    assert default_tenants(4) == ("acme", "Acme", "umbrella corp", "globex")
    assert default_tenants() == DEFAULT_TENANTS


def test_more_tenants_than_the_fixed_four_are_numbered():
    assert default_tenants(6) == ("acme", "Acme", "umbrella corp", "globex", "tenant_05", "tenant_06")


def test_fewer_than_four_takes_a_prefix():
    assert default_tenants(2) == ("acme", "Acme")


@pytest.mark.parametrize("count", [1, 0, -3])
def test_fewer_than_two_default_tenants_is_a_usage_error(count):
    with pytest.raises(UsageError, match=f"--tenants {count}"):
        default_tenants(count)


@pytest.mark.parametrize("name, expected", [
    ("acme", False),
    ("tenant_05", False),
    ("_private", False),
    ("a$b", False),
    ("a1", False),
    ("Acme", True),
    ("ACME", True),
    ("umbrella corp", True),
    ("1st tenant", True),
    ("9lives", True),
    ("café", False),  # PostgreSQL takes non-ASCII letters unquoted
    ("東京", False),
    ('quote"double', True),
    ("o'hara", True),
    ("x-y", True),
    ("$x", True),
    ("x; DROP SCHEMA public CASCADE; --", True),
])
def test_needs_quoting(name, expected):
    assert needs_quoting(name) is expected


def test_hostile_names_need_quoting_except_the_plain_non_ascii_ones_and_the_prefix_pairs():
    # café, 東京 and the 63-byte name are valid unquoted identifiers: they test non-ASCII and length;
    # x, tenant_x and x_y test layers that derive or match tenants by prefix.
    assert [n for n in HOSTILE_TENANTS if not needs_quoting(n)] == ["café", "東京", "t" * 59 + "ää",
                                                                     "x", "tenant_x", "x_y"]


# -- settings naming routes and strategies ---------------------------------------------------------
def test_an_unknown_route_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError) as caught:
        resolve_config({}, env={"HARNESS_ROUTES": "direct,bogus"}, cwd=tmp_path)
    message = str(caught.value)
    assert "bogus" in message and "direct, session, transaction" in message


def test_an_empty_route_list_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="none given"):
        resolve_config({}, env={"HARNESS_ROUTES": " , "}, cwd=tmp_path)


def test_routes_are_parsed_from_a_comma_list(tmp_path):
    config = resolve_config({}, env={"HARNESS_ROUTES": " transaction ,direct "}, cwd=tmp_path)
    assert config.routes == ("transaction", "direct")
    assert config.sources["routes"] == "env"


def test_strategies_are_parsed_from_a_comma_list(tmp_path):
    config = resolve_config({"strategies": "translate_map, myapp.tenancy:make ,,search_path_set"}, env={},
                            cwd=tmp_path)
    assert config.strategies == ("translate_map", "myapp.tenancy:make", "search_path_set")
    assert config.sources["strategies"] == "cli"


def test_strategies_are_parsed_from_a_pyproject_list(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.harness]\nstrategies = ["translate_map_pinned", " myapp.tenancy:make "]\n')
    config = resolve_config({}, env={}, cwd=tmp_path)
    assert config.strategies == ("translate_map_pinned", "myapp.tenancy:make")
    assert config.sources["strategies"] == "pyproject"


def test_no_strategies_means_every_built_in(tmp_path):
    assert resolve_config({}, env={}, cwd=tmp_path).strategies == ()


def test_reserved_words_need_quoting_too():
    from harness.tenancy.tenants import needs_quoting

    assert needs_quoting("user") and needs_quoting("select") and needs_quoting("order")
    assert not needs_quoting("acme")
