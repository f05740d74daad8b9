"""Loading strategies and user models by name: every mistake is a UsageError that names the spec.

User-defined factories live in ``tests/strategy_fixtures.py``; pytest's default
``prepend`` import mode puts ``tests/`` on ``sys.path``, so they load as
``strategy_fixtures:<attr>``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import make_url

from harness.errors import UsageError
from harness.tenancy.models import load_user_metadata
from harness.tenancy.strategy import BUILTIN_SPECS, BUILTINS, Strategy, StrategySpec, load_strategy

URL = make_url("postgresql+psycopg://app:secret@127.0.0.1:6432/postgres")
FIXTURES = "strategy_fixtures"


def usage_error(call, *args) -> str:
    with pytest.raises(UsageError) as caught:
        call(*args)
    return str(caught.value)


def test_the_fixture_module_is_importable_from_the_tests_folder():
    module = importlib.import_module(FIXTURES)
    assert Path(module.__file__).parent == Path(__file__).parent
    assert str(Path(__file__).parent) in sys.path


# -- load_strategy ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
def test_every_built_in_loads_by_short_name_and_its_factory_is_a_class(name):
    spec = load_strategy(name)
    assert spec.name == name
    assert spec.spec == BUILTIN_SPECS[name]
    assert inspect.isclass(spec.factory)


def test_builtins_are_sixteen_and_distinct():
    # six schema-layout strategies, four row-level security ones, three async twins, three whose verdict
    # depends on the deployment (the tenant bound as a connection is made, the driver's prepare default)
    assert len(BUILTINS) == 17 == len(set(BUILTINS))


def test_an_unknown_short_name_is_neither_a_built_in_nor_a_spec():
    message = usage_error(load_strategy, "translate_mapp")
    assert "'translate_mapp'" in message
    assert "neither a built-in nor of the form package.module:attr" in message
    assert "translate_map_pinned" in message  # the built-ins are listed


def test_a_module_that_does_not_import_names_the_spec():
    message = usage_error(load_strategy, "no_such_module_xyz:factory")
    assert "'no_such_module_xyz:factory'" in message
    assert "module 'no_such_module_xyz' does not import" in message
    assert "ModuleNotFoundError" in message


def test_a_missing_attribute_names_the_spec():
    message = usage_error(load_strategy, f"{FIXTURES}:no_such_factory")
    assert f"'{FIXTURES}:no_such_factory'" in message
    assert "has no attribute 'no_such_factory'" in message


def test_a_missing_dotted_attribute_names_the_spec():
    message = usage_error(load_strategy, f"{FIXTURES}:Namespace.nope")
    assert f"'{FIXTURES}:Namespace.nope'" in message and "has no attribute 'Namespace.nope'" in message


def test_a_dotted_attribute_loads():
    spec = load_strategy(f"{FIXTURES}:Namespace.factory")
    assert spec.name == f"{FIXTURES}:Namespace.factory"
    assert spec.create(URL).name == spec.name


def test_an_attribute_that_is_not_callable_names_the_spec():
    message = usage_error(load_strategy, f"{FIXTURES}:NOT_CALLABLE")
    assert f"'{FIXTURES}:NOT_CALLABLE'" in message and "is not callable" in message


def test_a_user_spec_keeps_its_full_name():
    spec = load_strategy(f"{FIXTURES}:good")
    assert (spec.name, spec.spec) == (f"{FIXTURES}:good", f"{FIXTURES}:good")


# -- StrategySpec.create / Strategy.wrap ----------------------------------------------------------------
def test_a_good_factory_is_called_with_the_url_and_gets_the_defaults():
    strategy = load_strategy(f"{FIXTURES}:good").create(URL)
    assert strategy.instance.url == URL
    assert (strategy.models, strategy.raw_sql, strategy.layout, strategy.settings) == (
        "placeholder", ("unqualified",), "schema", ())
    assert strategy.engine is None
    strategy.close()
    assert strategy.instance.closed is True


def test_declared_properties_are_read():
    strategy = load_strategy(f"{FIXTURES}:qualified").create(URL)
    assert (strategy.models, strategy.raw_sql, strategy.settings) == (
        "unqualified", ("qualified", "unqualified"), ("app.tenant",))


def test_a_factory_that_raises_names_the_spec_and_the_exception():
    spec = load_strategy(f"{FIXTURES}:raises")
    message = usage_error(spec.create, URL)
    assert f"'{FIXTURES}:raises'" in message
    assert "RuntimeError: the factory exploded on purpose" in message


@pytest.mark.parametrize("attr", ["no_session", "session_not_callable"])
def test_an_object_without_a_session_method_names_the_spec(attr):
    message = usage_error(load_strategy(f"{FIXTURES}:{attr}").create, URL)
    assert f"'{FIXTURES}:{attr}'" in message and "without a session(tenant) method" in message


def test_a_bad_models_value_names_the_spec():
    message = usage_error(load_strategy(f"{FIXTURES}:bad_models").create, URL)
    assert f"'{FIXTURES}:bad_models'" in message
    assert "models = 'tenant_schema'" in message and "placeholder, unqualified" in message


def test_a_bad_raw_sql_style_names_the_spec():
    message = usage_error(load_strategy(f"{FIXTURES}:bad_raw_sql").create, URL)
    assert f"'{FIXTURES}:bad_raw_sql'" in message and "'templated'" in message
    assert "unqualified, qualified" in message


def test_an_unsupported_layout_names_the_spec():
    message = usage_error(load_strategy(f"{FIXTURES}:bad_layout").create, URL)
    assert f"'{FIXTURES}:bad_layout'" in message and "layout 'sharded'" in message


def test_wrap_checks_an_instance_directly():
    message = usage_error(Strategy.wrap, "mine", object())
    assert "'mine'" in message and "returned a object" in message


def test_a_hand_built_spec_reports_its_own_name():
    spec = StrategySpec("custom", "pkg.mod:custom", lambda url: 1 / 0)
    message = usage_error(spec.create, URL)
    assert "'custom'" in message and "pkg.mod:custom" in message and "ZeroDivisionError" in message


# -- load_user_metadata ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["strategy_fixtures", "strategy_fixtures:", ":tenant_metadata", ""])
def test_a_models_spec_must_be_module_colon_attr(spec):
    message = usage_error(load_user_metadata, spec)
    assert f"{spec!r}" in message and "not of the form package.module:attr" in message


def test_a_models_module_that_does_not_import_is_a_usage_error():
    message = usage_error(load_user_metadata, "no_such_module_xyz:metadata")
    assert "'no_such_module_xyz:metadata'" in message and "could not be loaded" in message


def test_a_missing_models_attribute_is_a_usage_error():
    message = usage_error(load_user_metadata, f"{FIXTURES}:no_such_metadata")
    assert f"'{FIXTURES}:no_such_metadata'" in message and "could not be loaded" in message


@pytest.mark.parametrize("attr, kind", [("NOT_CALLABLE", "str"), ("good", "function")])
def test_an_object_that_is_not_metadata_is_a_usage_error(attr, kind):
    message = usage_error(load_user_metadata, f"{FIXTURES}:{attr}")
    assert f"is a {kind}, not a MetaData" in message


@pytest.mark.parametrize("attr", ["public_metadata", "empty_metadata"])
def test_metadata_without_a_tenant_table_says_how_to_fix_it(attr):
    message = usage_error(load_user_metadata, f"{FIXTURES}:{attr}")
    assert f"'{FIXTURES}:{attr}'" in message
    assert "has no table in the 'tenant' schema" in message
    assert '__table_args__ = {"schema": "tenant"}' in message


def test_metadata_with_a_tenant_table_is_accepted():
    metadata = load_user_metadata(f"{FIXTURES}:tenant_metadata")
    assert isinstance(metadata, MetaData)
    assert list(metadata.tables) == ["tenant.invoice"]


def test_a_declarative_base_is_accepted_through_its_metadata():
    fixtures = importlib.import_module(FIXTURES)
    assert load_user_metadata(f"{FIXTURES}:Base") is fixtures.Base.metadata


def test_a_bare_string_raw_sql_is_one_style():
    from harness.tenancy.strategy import Strategy

    class Layer:
        raw_sql = "qualified"

        def session(self, tenant):
            raise NotImplementedError

    assert Strategy.wrap("layer", Layer()).raw_sql == ("qualified",)
