"""The team's own application: its tables (``--models``) and code paths (``--actions``).

With them the harness stops testing only a model of the app: every tenant's copy
of the team's tables holds canary rows (:mod:`harness.team.models`), every read of
them is attributed to its tenant (:mod:`harness.team.observer`), and generated
programs and the hammer draw the team's steps (:mod:`harness.team.steps`) next to
the built-in ones.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from harness.config import HarnessConfig, apply_team_environment, import_user_module
from harness.errors import UsageError
from harness.team.models import TeamModels, team_models

ACTION_PREFIX = "action:"


@dataclasses.dataclass(frozen=True)
class TeamAction:
    """One ``package.module:func`` code path, run as a step: ``func(session, tenant)``."""

    spec: str
    step: str  # the step name programs and histories use
    call: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.call)


@dataclasses.dataclass(frozen=True)
class Team:
    models: TeamModels | None
    actions: tuple[TeamAction, ...] = ()

    def action(self, step: str) -> TeamAction:
        for candidate in self.actions:
            if candidate.step == step:
                return candidate
        raise KeyError(step)

    def describe(self) -> dict[str, Any]:
        """What the report's environment says about the team's code."""
        return {"models": None if self.models is None else self.models.spec,
                "tenant_tables": [] if self.models is None else [t.name for t in self.models.tenant_tables],
                "actions": [a.spec for a in self.actions]}


def _resolve(spec: str, what: str, pythonpath: tuple[str, ...] | None = None) -> Any:
    """``package.module:attr`` of the user's code, imported with the pythonpath folders first on sys.path."""

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{what} {spec!r} is not of the form package.module:attr.")
    target = import_user_module(f"{what} {spec!r}", module_name, pythonpath)
    try:
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError as exc:
        raise UsageError(f"{what} {spec!r} could not be loaded: {exc}.",
                         fix=[f"check that {module_name} defines {attr}"]) from exc
    return target


def load_action(spec: str, pythonpath: tuple[str, ...] | None = None) -> TeamAction:
    call = _resolve(spec, "Action", pythonpath)
    if not callable(call):
        raise UsageError(f"Action {spec!r} is a {type(call).__name__}, not a callable.",
                         fix=["point it at a function taking (session, tenant)"])
    try:
        inspect.signature(call).bind(object(), "tenant")
    except TypeError as exc:
        raise UsageError(f"Action {spec!r} cannot be called as func(session, tenant): {exc}.",
                         fix=["give it the signature (session, tenant)"]) from exc
    except ValueError:  # no signature to read (a builtin): trust it
        pass
    return TeamAction(spec, ACTION_PREFIX + spec.partition(":")[2], call)


def load_team(config: HarnessConfig) -> Team | None:
    """The team's models and actions of a run, or None when it names neither. Fails before any server starts."""
    if not config.models and not config.actions:
        return None
    apply_team_environment(config)  # the app's settings, before its code is imported
    models = None
    if config.models:
        from harness.tenancy.models import load_user_metadata

        metadata = load_user_metadata(config.models, config.pythonpath)
        models = team_models(config.models, _resolve(config.models, "Models spec", config.pythonpath), metadata,
                             config.schema_sql)
        from harness.tenancy.models import model_set

        ours = {t.name for t in model_set("placeholder").metadata.tables.values()}
        clash = sorted(ours & {t.name for t in models.tenant_tables})
        if clash:
            raise UsageError(f"Models spec {config.models!r} has tenant table(s) named like the harness's own: "
                             f"{', '.join(clash)}.",
                             fix=["the harness keeps its own tables next to yours in every tenant schema: "
                                  "give it a models set without those names (a test copy of the metadata)"])
        from harness.team import observer

        observer.install()  # before any strategy makes a pool: every connection reports what it reads
    actions = tuple(load_action(spec, config.pythonpath) for spec in config.actions)
    steps = [a.step for a in actions]
    twice = sorted({s for s in steps if steps.count(s) > 1})
    if twice:
        raise UsageError(f"Two actions share the name {', '.join(twice)}.",
                         fix=["give each action a function name of its own"])
    return Team(models, actions)
