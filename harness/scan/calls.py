"""Which definition a call reaches: resolved through scopes and imports, as Python would, never by name alone.

A call ``f()`` is the module's own ``f`` (a def nested in the calling function
or in a function enclosing it, never a method of the class it sits in; then
the module's, the last def of that name), else the ``f`` it imports (``from
app.db import f``, followed through a package's re-exports); ``db.f()`` is
``f`` of the module ``db`` names (``import a.b`` then ``a.b.f()`` too, also in
namespace packages); ``self.m()`` is ``m`` of the calling method's class or of
its bases, ``super().m()`` of its bases only; ``repo.m()`` where ``repo =
Repository(...)`` is ``Repository.m``; ``Repository(...)`` runs its
``__init__``. A call the scan cannot resolve this way (a method of an object of
unknown type, a function of a module outside the scanned code) reaches nothing:
two functions called ``main`` in two scripts are two functions.

Modules are named by their path under the folder scanned and under its parent
(``app/jobs/nightly.py`` is ``app.jobs.nightly``, and ``jobs.nightly`` if
``app`` was scanned); an absolute import matches the module with that name, or
the one module whose name ends with it after a folder that is not a package
(``src/acme/db.py`` for ``acme.db``, not ``app/acme/db.py`` of package ``app``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from harness.scan.visitor import CallSite, FunctionFacts, ImportRef, ModuleReport

_DEPTH = 8  # re-exports and base classes followed at most this deep


@dataclass(frozen=True)
class Target:
    """A def in a scanned module: ``path`` and its qualified name there."""

    path: str
    qualified: str
    facts: FunctionFacts

    @property
    def where(self) -> str:
        return f"{self.path}:{self.facts.line}"


@dataclass(frozen=True)
class _Entity:
    kind: str  # "module", "class" or "function"
    module: str  # the module's path
    qualified: str = ""


def module_names(relatives: Iterable[str]) -> list[str]:
    """The dotted names of a file known by ``relatives`` (``/``-separated paths)."""
    names = []
    for relative in relatives:
        parts = relative.removesuffix(".py").split("/")
        if parts and parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(part.isidentifier() for part in parts):
            names.append(".".join(parts))
    return names


class Project:
    """Every scanned module by name, and the calls between them."""

    def __init__(self, modules: Iterable[tuple[str, list[str], ModuleReport]]):
        self.reports: dict[str, ModuleReport] = {}
        self.names: dict[str, list[str]] = {}  # path -> its dotted names, longest first
        self.by_name: dict[str, set[str]] = {}
        for path, names, report in modules:
            self.reports[path] = report
            self.names[path] = sorted(names, key=len, reverse=True)
            for name in names:
                self.by_name.setdefault(name, set()).add(path)
        packages = {name for path, names in self.names.items() if path.endswith("__init__.py") for name in names}
        # The tail of a name after a folder that is not a package (src/acme/db.py: acme.db and db under src/)
        # -> paths: what an absolute import may name when the scan's names start above the import root.
        self.by_suffix: dict[str, set[str]] = {}
        for path, names in self.names.items():
            for name in names:
                parts = name.split(".")
                for start in range(1, len(parts)):
                    if ".".join(parts[:start]) not in packages:
                        self.by_suffix.setdefault(".".join(parts[start:]), set()).add(path)
        self._reach: dict[tuple[str, str], tuple[str, int] | None] = {}
        self._scoped: dict[str, dict[str, list[CallSite]]] = {}

    def calls_in(self, path: str, scope: str) -> list[CallSite]:
        """The calls made in def ``scope`` of module ``path``."""
        scoped = self._scoped.get(path)
        if scoped is None:
            scoped = self._scoped[path] = {}
            for call in self.reports[path].calls:
                scoped.setdefault(call.scope, []).append(call)
        return scoped.get(scope, [])

    # -- modules -------------------------------------------------------------------------------
    def module(self, name: str) -> str | None:
        """The path of the module an absolute import names; None when it is not scanned or is ambiguous."""
        exact = self.by_name.get(name)
        if exact is not None:
            return next(iter(exact)) if len(exact) == 1 else None
        candidates = self.by_suffix.get(name, ())
        return next(iter(candidates)) if len(candidates) == 1 else None

    def imported_module(self, path: str, ref: ImportRef) -> str | None:
        if ref.level == 0:
            return self.module(ref.module)
        for own in self.names[path]:  # relative to the importing module's package
            parts = own.split(".")
            package = parts if path.endswith("__init__.py") else parts[:-1]
            if ref.level - 1 > len(package):
                continue
            base = package[:len(package) - (ref.level - 1)]
            found = self.by_name.get(".".join(base + ([ref.module] if ref.module else [])))
            if found is not None and len(found) == 1:
                return next(iter(found))
        return None

    # -- names -----------------------------------------------------------------------------------
    def member(self, entity: _Entity, name: str, depth: int = 0) -> _Entity | None:
        """``name`` of a module (a def, a class, a submodule or a re-export) or of a class (a method,
        also inherited)."""
        if depth > _DEPTH:
            return None
        report = self.reports[entity.module]
        if entity.kind == "module":
            return self._global(entity.module, name, depth)
        if entity.kind == "class":
            method = f"{entity.qualified}.{name}"
            if method in report.functions:
                return _Entity("function", entity.module, method)
            return self.inherited(entity, name, depth)
        return None

    def inherited(self, entity: _Entity, name: str, depth: int = 0) -> _Entity | None:
        """``name`` of the bases of class ``entity``, in order."""
        for base in self.reports[entity.module].classes.get(entity.qualified, ()):
            found = self.dotted(entity.module, "", base, depth + 1)
            if found is not None and found.kind == "class":
                inherited = self.member(found, name, depth + 1)
                if inherited is not None:
                    return inherited
        return None

    def _global(self, path: str, name: str, depth: int) -> _Entity | None:
        report = self.reports[path]
        if name in report.functions:
            return _Entity("function", path, name)
        if name in report.classes:
            return _Entity("class", path, name)
        ref = report.imports.get(name)
        if ref is not None:
            return self.imported(path, ref, depth + 1)
        for own in self.names[path]:  # a submodule of a package
            sub = self.by_name.get(f"{own}.{name}")
            if sub is not None and len(sub) == 1 and path.endswith("__init__.py"):
                return _Entity("module", next(iter(sub)))
        return None

    def imported(self, path: str, ref: ImportRef, depth: int) -> _Entity | None:
        if depth > _DEPTH:
            return None
        if ref.name is None:
            module = self.imported_module(path, ref)
            return None if module is None else _Entity("module", module)
        module = self.imported_module(path, ref)
        if module is not None:
            found = self._global(module, ref.name, depth)
            if found is not None:
                return found
        # from package import submodule
        submodule = self.imported_module(path, ImportRef(f"{ref.module}.{ref.name}" if ref.module else ref.name,
                                                         None, ref.level))
        return None if submodule is None else _Entity("module", submodule)

    def dotted(self, path: str, scope: str, names: tuple[str, ...], depth: int = 0) -> _Entity | None:
        """What ``a.b.c`` names in module ``path`` seen from def ``scope``."""
        report = self.reports[path]
        first = names[0]
        entity = None
        # The defs enclosing the call (a class's body is no enclosing scope of its methods' bodies).
        parts = [part.partition("@")[0] for part in scope.split(".")] if scope else []
        while parts:  # a def nested in the calling def (or in one enclosing it)
            if ".".join(parts) in report.functions:
                nested = ".".join([*parts, first])
                if nested in report.functions:
                    entity = _Entity("function", path, nested)
                    break
            parts.pop()
        if entity is None:
            ref = report.imports.get(first)
            if ref is not None and ref.name is None and ref.level == 0 and len(names) > 1:
                # import a.b.c binds a: a.b.c.f() is f of module a.b.c, a package or not
                for end in range(len(names) - 1, 0, -1):
                    module = self.module(".".join([ref.module, *names[1:end]]))
                    if module is not None:
                        entity, names = _Entity("module", module), names[end - 1:]
                        break
        if entity is None:
            entity = self._global(path, first, depth)
        for name in names[1:]:
            if entity is None:
                return None
            entity = self.member(entity, name, depth)
        return entity

    def resolve(self, path: str, call: CallSite) -> Target | None:
        """The def ``call`` (in module ``path``) reaches, or None."""
        if call.callee[0] in ("self", "cls", "super"):
            if call.owner is None or len(call.callee) != 2:
                return None
            owner = _Entity("class", path, call.owner)
            if call.callee[0] == "super":
                entity = self.inherited(owner, call.callee[1])
            else:
                entity = self.member(owner, call.callee[1])
        else:
            entity = self.dotted(path, call.scope, call.callee)
        if entity is not None and entity.kind == "class":  # Repository(...) runs Repository.__init__
            entity = self.member(entity, "__init__")
        if entity is None or entity.kind != "function":
            return None
        return Target(entity.module, entity.qualified, self.reports[entity.module].functions[entity.qualified])

    # -- what a def does -----------------------------------------------------------------------
    def binding(self, target: Target) -> tuple[str, int] | None:
        """The session-level binding a call of ``target`` runs: its own, or that of a def it calls
        (path, line of the SET); None if it binds nothing."""
        visited: list[tuple[str, str]] = []
        found, _ = self._binding(target.path, target.qualified, {}, visited)
        if found is None:  # everything reachable from it was walked: none of it binds
            for key in visited:
                self._reach[key] = None
        return found

    def _binding(self, path: str, qualified: str, stack: dict[tuple[str, str], int],
                 visited: list[tuple[str, str]]) -> tuple[tuple[str, int] | None, int]:
        """(the binding, the depth of the shallowest def on the stack its answer leaned on). A def found
        binding nothing while a def below it on the stack was still being walked is not remembered: that
        def may bind through a later call."""
        key = (path, qualified)
        if key in self._reach:
            return self._reach[key], len(stack)
        if key in stack:
            return None, stack[key]
        depth = stack[key] = len(stack)
        visited.append(key)
        facts = self.reports[path].functions[qualified]
        found, leans = (None, depth) if facts.binds is None else ((path, facts.binds), depth)
        if found is None:
            for call in self.calls_in(path, facts.scope or qualified):
                target = self.resolve(path, call)
                if target is None:
                    continue
                found, deepest = self._binding(target.path, target.qualified, stack, visited)
                leans = min(leans, deepest)
                if found is not None:
                    break
        del stack[key]
        if found is not None or leans >= depth:
            self._reach[key] = found
        return found, leans

    def calls(self) -> Iterator[tuple[str, CallSite, Target]]:
        """Every resolved call of a def that matters to the scan: (the calling module's path, the call, its
        target). A def matters when it binds search_path, runs a parameter as SQL, or calls one that does;
        the names of such defs only narrow which calls are resolved, never decide what a call reaches."""
        names = self._names_that_matter()
        for path, report in self.reports.items():
            for call in report.calls:
                if call.callee[-1] in names:
                    target = self.resolve(path, call)
                    if target is not None:
                        yield path, call, target

    def _names_that_matter(self) -> set[str]:
        names = {name for report in self.reports.values() for f in report.functions.values()
                 if f.binds is not None or f.sql_params for name in _called_as(f)}
        callers: dict[str, set[str]] = {}  # the last name of a callee -> the names of the defs calling it
        aliases: dict[str, set[str]] = {}  # a name imported under another -> those other names
        for report in self.reports.values():
            for call in report.calls:
                if call.scope:
                    callers.setdefault(call.callee[-1], set()).update(_called_as(report.functions[call.scope]))
            for local, ref in report.imports.items():
                if ref.name is not None and local != ref.name:
                    aliases.setdefault(ref.name, set()).add(local)
        frontier = list(names)
        while frontier:  # the defs calling them, whatever the depth, and the names they are imported as
            name = frontier.pop()
            for more in callers.get(name, set()) | aliases.get(name, set()):
                if more not in names:
                    names.add(more)
                    frontier.append(more)
        return names


def _called_as(facts: FunctionFacts) -> tuple[str, ...]:
    """The last names a call of def ``facts`` may end with: its own, and its class's for an ``__init__``."""
    if facts.name == "__init__" and facts.owner:
        return facts.name, facts.owner.rpartition(".")[2]
    return (facts.name,)
