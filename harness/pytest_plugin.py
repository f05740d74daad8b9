"""pytest glue: the ``stack`` fixture, the resolved config, server logs on failure.

Registered through the ``pytest11`` entry point, so ``scenarios/`` and
``tests/`` get the fixtures without importing anything.
"""

from __future__ import annotations

import contextlib

import random
from typing import Iterator

import pytest

from harness.config import (SETTINGS, HarnessConfig, apply_team_environment, put_first_on_sys_path, resolve_config,
                            setting_text)
from harness.stack import Missing, Stack, signals, start_stack
from harness.team import load_team
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import BUILTINS, StrategySpec, load_strategy, resolve_spec, short_name
from harness.tenancy.tenants import HOSTILE_TENANTS, tenant_set
from harness.report.explain import verdict_matrix, write_cell_results
from harness.workload.cell import CellResult
from harness.workload.generated import Profile
from harness.workload.scenarios import (GENERATED, HAMMER, CellContext, Replay, replay_command, replay_settings,
                                        run_scenario as run_registered)

CONFIG_KEY = pytest.StashKey[HarnessConfig]()
STACK_KEY = pytest.StashKey[Stack]()
LOG_OFFSETS_KEY = pytest.StashKey[dict]()
SIGNALS_KEY = pytest.StashKey[dict]()

PLUGIN_SETTINGS = ("backend", "driver", "schema_sql", "pg_bindir", "pgbouncer", "cache_dir", "keep_tmp", "start_timeout", "strategies",
                   "postgres_image", "pgbouncer_image", "direct_dsn", "session_dsn", "transaction_dsn",
                   "superuser_dsn", "i_own_this_database", "pgbouncer_config", "pgbouncer_set",
                   "pgpool_config", "pgpool_set", "pgagroal_config", "pgagroal_set",
                   "routes", "tenants", "report_dir", "models", "env_file", "decoys", "profile", "derandomize", "seed",
                   "example_db", "hammer_threads", "hammer_requests", "hammer_seconds", "step_deadline")
RESULTS_KEY = pytest.StashKey[list]()


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
    config.stash[CONFIG_KEY] = resolved = resolve_config(cli, cwd=config.rootpath)
    put_first_on_sys_path(resolved.pythonpath)  # as pytest's own pythonpath: strategies, models, actions import
    apply_team_environment(resolved)  # and with the app's settings in the environment
    config.stash[SIGNALS_KEY] = signals.install()
    config.addinivalue_line("markers", "server: the test needs a running stack")
    config.stash[RESULTS_KEY] = []


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``strategy`` and ``route`` arguments run over the configured strategies and routes."""
    config = metafunc.config.stash[CONFIG_KEY]
    explicit = {name for mark in metafunc.definition.iter_markers("parametrize")
                for name in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])}
    if "strategy" in metafunc.fixturenames and "strategy" not in explicit:
        names = config.strategies or BUILTINS
        metafunc.parametrize("strategy", [load_strategy(n, config.pythonpath).on_driver(config.driver) for n in names], ids=[short_name(resolve_spec(n)) for n in names],
                             scope="session")
    if "route" in metafunc.fixturenames and "route" not in explicit:
        metafunc.parametrize("route", list(config.routes), scope="session")


@contextlib.contextmanager
def provisioned(stack: Stack, config: HarnessConfig) -> Iterator[Tenancy]:
    """The run's tenant schemas (its tenant set plus the hostile names) on ``stack``, closed on exit."""
    schemas = Tenancy(stack, tenant_set(config.tenants), decoys=config.decoys, team=load_team(config),
                      step_deadline=config.step_deadline)
    try:
        schemas.provision()
        schemas.provision(HOSTILE_TENANTS)
        yield schemas
    finally:
        schemas.close()


@pytest.fixture(scope="session")
def tenancy(stack: Stack, harness_config: HarnessConfig) -> Iterator[Tenancy]:
    """The tenant schemas (the default set plus the hostile names), provisioned once per session."""
    with provisioned(stack, harness_config) as schemas:
        yield schemas


@pytest.fixture(scope="session")
def cell_results(pytestconfig: pytest.Config) -> list:
    """Every CellResult of the session, for the summary and the report."""
    return pytestconfig.stash[RESULTS_KEY]


@pytest.fixture(scope="session")
def generation_seed(harness_config: HarnessConfig) -> int:
    """The seed of this run's generated programs: the configured one, or a fresh one."""
    return harness_config.seed if harness_config.seed is not None else random.SystemRandom().getrandbits(32)


@pytest.fixture
def cell_context(request: pytest.FixtureRequest, stack: Stack, tenancy: Tenancy, harness_config: HarnessConfig,
                 generation_seed: int) -> CellContext:
    """What every cell of this session shares; a cell's replay names this test."""
    return CellContext(stack, tenancy, harness_config, generation_seed, gate=bool(harness_config.strategies),
                       replay=replay_in_pytest(harness_config, generation_seed, request.node.nodeid))


def replay_in_pytest(config: HarnessConfig, seed: int, nodeid: str) -> Replay:
    """The pytest command that runs one cell of the test ``nodeid`` again, with every setting that decides it."""

    def options(name: str, value: object) -> list[str] | None:
        # A setting the plugin has no option for goes before the command as its HARNESS_* variable.
        return [f"{_option(name)}={setting_text(value)}"] if name in PLUGIN_SETTINGS else None

    def replay(strategy: StrategySpec, route: str, scenario: str, profile: Profile) -> str:
        settings = replay_settings(config, strategy, scenario, profile.name, seed)
        if config.strategies:  # the test's id names a strategy of this setting
            settings["strategies"] = (strategy.spec,)
        kept = f" (failures are also kept in {config.example_db})" if scenario == GENERATED else ""
        return replay_command(["pytest", nodeid], settings, options) + kept
    return replay


@pytest.fixture
def run_scenario(cell_context: CellContext, cell_results: list):
    """Run any scenario of the registry for a strategy on a route; return its CellResult."""

    def run(strategy: StrategySpec, route: str, scenario: str) -> CellResult:
        result = run_registered(cell_context, strategy, route, scenario)
        cell_results.append(result)
        return result

    return run


@pytest.fixture
def explore_programs(run_scenario):
    """Search generated programs for a strategy on a route; return its CellResult (with the replay command)."""
    return lambda strategy, route: run_scenario(strategy, route, GENERATED)


@pytest.fixture
def run_hammer(run_scenario):
    """Hammer a strategy on a route with real threads; return its CellResult (figures in ``result.figures``)."""
    return lambda strategy, route: run_scenario(strategy, route, HAMMER)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS_KEY, [])
    if not results:
        return
    terminalreporter.section("isolation verdicts (measured; * = differs from the expectation)")
    for line in verdict_matrix(results):
        terminalreporter.write_line(line)
    path = write_cell_results(results, config.stash[CONFIG_KEY].report_dir)
    terminalreporter.write_line(f"cell results: {path}")


@pytest.fixture(scope="session")
def stack(pytestconfig: pytest.Config, harness_config: HarnessConfig) -> Iterator[Stack]:
    """One stack for the whole session; torn down at the end, also on Ctrl-C or SIGTERM."""
    with start_stack(harness_config) as running:
        pytestconfig.stash[STACK_KEY] = running
        yield running


@pytest.fixture(autouse=True)
def _route_on_this_stack(request: pytest.FixtureRequest) -> None:
    """A route the stack lacks (the external backend without its DSN) is not run, and says so."""
    if "route" in request.fixturenames and "stack" in request.fixturenames:
        route, running = request.getfixturevalue("route"), request.getfixturevalue("stack")
        if isinstance(route, str) and route not in running.routes:
            pytest.skip(f"not run: route {route}: {running.why_not(Missing.ROUTE, route, 'not on this stack')}")


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
