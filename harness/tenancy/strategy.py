"""The strategy interface and how a strategy is loaded by name.

A strategy is named ``package.module:attr`` (or a built-in's short name).
``attr`` is a factory called with the SQLAlchemy URL of the route under test;
it returns an object with ``session(tenant)`` (a context manager yielding a
``Session`` bound to that tenant) and ``close()``, and optionally ``models``,
``raw_sql``, ``engine``, ``layout``, ``settings`` (custom GUC names the pool
probe should read) and ``provision``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any, Callable, Sequence

from sqlalchemy.engine import URL

from harness.config import import_user_module
from harness.errors import UsageError
from harness.tenancy import drivers
from harness.tenancy.models import FLAVOURS

BUILTIN_MODULES = {
    "harness.tenancy.strategies.builtin": ("search_path_set", "search_path_restore", "search_path_local",
                                           "set_config_local", "translate_map", "translate_map_pinned"),
    "harness.tenancy.strategies.rls": ("rls_guc_session", "rls_guc_pinned", "rls_role_session", "rls_role_pinned"),
    "harness.tenancy.strategies.asynchronous": ("translate_map_pinned_async", "rls_guc_pinned_async",
                                                "search_path_set_async"),
    "harness.tenancy.strategies.connection": ("connect_event_search_path", "search_path_per_connection",
                                              "startup_options_search_path", "translate_map_prepared"),
}
BUILTIN_SPECS = {name: f"{module}:{name}" for module, names in BUILTIN_MODULES.items() for name in names}
BUILTINS = tuple(BUILTIN_SPECS)
RAW_STYLES = ("unqualified", "qualified")
LAYOUTS = ("schema", "rls")


def resolve_spec(spec: str) -> str:
    """A built-in short name becomes its full spec; anything else must be package.module:attr."""
    if spec in BUILTIN_SPECS:
        return BUILTIN_SPECS[spec]
    if ":" not in spec:
        raise UsageError(f"Strategy {spec!r} is neither a built-in nor of the form package.module:attr.",
                         fix=[f"use one of the built-ins: {', '.join(BUILTINS)}",
                              "or name your factory, e.g. myapp.tenancy:make_strategy"])
    return spec


def short_name(spec: str) -> str:
    name = spec.split(":", 1)[-1]
    return name if BUILTIN_SPECS.get(name) == spec else spec


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """A loaded, not yet instantiated, strategy: its name and its factory."""

    name: str
    spec: str
    factory: Callable[[URL], Any]
    #: the driver the route URL names for this strategy (``--drivers``); None: the stack's URL as it is
    driver: str | None = None
    #: the layout read off an instance, for a factory that does not declare it (read once, not per cell)
    _layout_seen: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def layout(self, probe_url: URL) -> str:
        """The strategy's layout: a class attribute of the factory, or read off one instance (once)."""
        declared = getattr(self.factory, "layout", None)
        if isinstance(declared, str):
            return declared
        if "layout" not in self._layout_seen:
            probe = self.create(probe_url)
            try:
                self._layout_seen["layout"] = probe.layout
            finally:
                probe.close()
        return self._layout_seen["layout"]

    @property
    def drivers(self) -> tuple[str, ...] | None:
        """The drivers the factory declares it runs on (a ``drivers`` attribute), None when it does not say."""
        declared = getattr(self.factory, "drivers", None)
        return tuple(declared) if isinstance(declared, (tuple, list)) else None

    def runs_on(self, driver: str | None) -> bool:
        return driver is None or self.drivers is None or driver in self.drivers

    def on_driver(self, driver: str | None) -> "StrategySpec":
        """This strategy with the route URL naming ``driver``."""
        return self if driver == self.driver else dataclasses.replace(self, driver=driver, _layout_seen={})

    def url_for(self, url: URL) -> URL:
        """The URL the factory gets: the route's, with this strategy's driver."""
        return url if self.driver is None else drivers.driver(self.driver).url(url)

    def create(self, url: URL) -> "Strategy":
        url = self.url_for(url)
        try:
            instance = self.factory(url)
        except Exception as exc:
            raise UsageError(f"Strategy {self.name!r}: the factory {self.spec} raised "
                             f"{type(exc).__name__}: {exc}.",
                             fix=["fix the factory; it is called with the SQLAlchemy URL of the route"]) from exc
        strategy = Strategy.wrap(self.name, instance)
        strategy.url = url
        return strategy


def load_strategy(spec: str, pythonpath: Sequence[str] | None = None) -> StrategySpec:
    """Import a strategy factory; a clear error names the spec when it cannot be used.

    The module is imported with the ``pythonpath`` folders first on sys.path (see
    :func:`harness.config.import_user_module`).
    """
    full = resolve_spec(spec)
    module_name, _, attr = full.partition(":")
    # Also for a built-in: the team's models and actions, loaded next, are imported from the same folders.
    module = import_user_module(f"Strategy {spec!r}", module_name, pythonpath)
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"Strategy {spec!r}: module {module_name!r} has no attribute {attr!r}.",
                             fix=["name a callable that takes the route URL"])
    if not callable(factory):
        raise UsageError(f"Strategy {spec!r}: {attr!r} is not callable.",
                         fix=["name a factory: a callable that takes the route URL and returns the strategy"])
    return StrategySpec(short_name(full), full, factory)


@dataclasses.dataclass
class Strategy:
    """A live strategy instance with its declared properties resolved."""

    name: str
    instance: Any
    models: str
    raw_sql: tuple[str, ...]
    layout: str
    settings: tuple[str, ...]
    #: the URL the factory got (its driver tells how a layer without one engine connects)
    url: URL | None = None

    @classmethod
    def wrap(cls, name: str, instance: Any) -> "Strategy":
        if not callable(getattr(instance, "session", None)):
            raise UsageError(f"Strategy {name!r}: the factory returned a {type(instance).__name__} "
                             "without a session(tenant) method.",
                             fix=["return an object with session(tenant) -> context manager yielding a Session, "
                                  "and close()"])
        models = getattr(instance, "models", "placeholder")
        if models not in FLAVOURS:
            raise UsageError(f"Strategy {name!r}: models = {models!r}; use one of {', '.join(FLAVOURS)}.")
        raw_sql = getattr(instance, "raw_sql", ("unqualified",)) or ()
        try:
            raw_sql = (raw_sql,) if isinstance(raw_sql, str) else tuple(raw_sql)
        except TypeError:
            raise UsageError(f"Strategy {name!r}: raw_sql = {raw_sql!r}; give a tuple of styles "
                             f"from {', '.join(RAW_STYLES)}.") from None
        unknown = [s for s in raw_sql if s not in RAW_STYLES]
        if unknown:
            raise UsageError(f"Strategy {name!r}: unknown raw_sql style(s) {unknown}; "
                             f"use {', '.join(RAW_STYLES)}.")
        layout = getattr(instance, "layout", "schema")
        if layout not in LAYOUTS:
            raise UsageError(f"Strategy {name!r}: layout {layout!r} is unknown; use one of {', '.join(LAYOUTS)}.")
        settings = getattr(instance, "settings", ()) or ()
        settings = (settings,) if isinstance(settings, str) else settings
        try:
            settings = tuple(str(s) for s in settings)
        except TypeError:
            raise UsageError(f"Strategy {name!r}: settings = {settings!r}; give a tuple of setting names "
                             "like ('app.tenant_id',).") from None
        return cls(name, instance, models, raw_sql, layout, settings)

    def session(self, tenant: str):
        return self.instance.session(tenant)

    @property
    def engine(self):
        return getattr(self.instance, "engine", None)

    @property
    def is_async(self) -> bool:
        """The layer's sessions are AsyncSessions: its engine is an AsyncEngine, or, for a layer that exposes
        no engine (one per tenant), the URL it got names an async driver."""
        if self.engine is not None:
            return drivers.is_async(self.engine)
        return self.url is not None and self.url.get_dialect().is_async

    @property
    def driver_used(self) -> str:
        """The driver the layer's engine really uses (read from the engine, not from the URL it got)."""
        return drivers.used_by(self.engine) if self.engine is not None else ""

    def close(self, loop=None) -> None:
        """Release engines and pools; an async close() runs on ``loop`` (or a fresh one)."""
        close = getattr(self.instance, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                if loop is not None and not loop.is_closed():
                    loop.run_until_complete(result)
                else:
                    asyncio.run(result)
