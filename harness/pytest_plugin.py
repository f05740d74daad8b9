"""pytest glue: the ``stack`` fixture, the resolved config, server logs on failure.

Registered through the ``pytest11`` entry point, so ``scenarios/`` and
``tests/`` get the fixtures without importing anything.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from harness.config import SETTINGS, HarnessConfig, resolve_config
from harness.stack import Stack, signals, start_stack

CONFIG_KEY = pytest.StashKey[HarnessConfig]()
STACK_KEY = pytest.StashKey[Stack]()
LOG_OFFSETS_KEY = pytest.StashKey[dict]()
SIGNALS_KEY = pytest.StashKey[dict]()

PLUGIN_SETTINGS = ("backend", "pg_bindir", "pgbouncer", "cache_dir", "keep_tmp", "start_timeout")


def _option(name: str) -> str:
    return "--harness-" + name.replace("_", "-")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "tenant isolation harness")
    for setting in SETTINGS:
        if setting.name in PLUGIN_SETTINGS:
            group.addoption(_option(setting.name), dest=f"harness_{setting.name}", default=None,
                            help=f"{setting.help} (env {setting.env})")


def pytest_configure(config: pytest.Config) -> None:
    cli = {name: config.getoption(f"harness_{name}") for name in PLUGIN_SETTINGS}
    config.stash[CONFIG_KEY] = resolve_config(cli, cwd=config.rootpath)
    config.stash[SIGNALS_KEY] = signals.install()
    config.addinivalue_line("markers", "server: the test needs a running stack")


def pytest_unconfigure(config: pytest.Config) -> None:
    signals.restore(config.stash.get(SIGNALS_KEY, {}))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def harness_config(pytestconfig: pytest.Config) -> HarnessConfig:
    """The run's resolved :class:`~harness.config.HarnessConfig`."""
    return pytestconfig.stash[CONFIG_KEY]


@pytest.fixture(scope="session")
def stack(pytestconfig: pytest.Config, harness_config: HarnessConfig) -> Iterator[Stack]:
    """One stack for the whole session; torn down at the end, also on Ctrl-C or SIGTERM."""
    with start_stack(harness_config) as running:
        pytestconfig.stash[STACK_KEY] = running
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    running = item.config.stash.get(STACK_KEY, None)
    if running is not None:
        item.stash[LOG_OFFSETS_KEY] = running.log_offsets()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    running = item.config.stash.get(STACK_KEY, None)
    offsets = item.stash.get(LOG_OFFSETS_KEY, None)
    if report.failed and call.when == "call" and running is not None and offsets is not None:
        for name, text in running.logs_since(offsets).items():
            if text.strip():
                report.sections.append((f"server log of this test: {name}", text[-20000:]))
    return report
