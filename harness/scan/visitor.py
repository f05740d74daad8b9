"""One module's walk: what it binds, the SQL it runs, the models it declares, the calls it makes.

Only strings that reach a SQL call are judged as SQL: the argument of
``text()``/``exec_driver_sql()``/``execute()``/..., directly or through a name
bound earlier, as today's ``names`` lookup does. A log message, a comparison,
a ``startswith`` argument or a string nobody uses is not SQL, whatever it says.
Table references are kept as facts: whether ``products`` is a tenant table is
known only once every module's models have been read.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import harness.scan.bindings as bindings
from harness.scan.findings import message
from harness.scan.literals import TRANSPARENT_CALLS, Resolver, SqlText, call_name, snippet, split_lines
from harness.scan.models import CoreTable, MappedClass, ModelFacts
from harness.scan.sql import SET_CONFIG, SET_CONFIG_PARAM, SET_SEARCH_PATH, TABLE, analyse
from harness.scan.syntax import ParsedModule

# Fields holding contexts and operators (Load, Add, Eq, ...) or plain values: nothing below them to judge.
_LEAF_FIELDS = frozenset({"ctx", "op", "ops", "id", "attr", "arg", "name", "module", "asname", "level",
                          "type_comment", "kind", "conversion", "is_async"})


@functools.cache
def _fields(kind: type) -> tuple[str, ...]:
    return tuple(name for name in kind._fields if name not in _LEAF_FIELDS)  # type: ignore[attr-defined]
# Arguments that may be strings a helper runs as SQL (a call's result is not followed).
_MAYBE_STRINGS = frozenset({ast.Constant, ast.JoinedStr, ast.BinOp, ast.Name, ast.Attribute, ast.Subscript})
# Rules that mean "this code binds the tenant through search_path": a function holding one binds at each call.
BINDING_RULES = frozenset({"set-search-path-sql", "set-config-search-path", "libpq-search-path-option",
                           "asyncpg-server-settings", "django-tenancy-call", "search-path-helper"})


@dataclass(frozen=True)
class Hit:
    """A finding of one module before it is tagged: ``rule`` at ``line``."""

    line: int
    rule: str
    message: str
    snippet: str
    table: str | None = None


@dataclass(frozen=True)
class TableRef:
    """A table named in SQL that reaches a SQL call: judged once the tenant tables are known. ``scope`` is the
    qualified name of the function running it ("" at module level)."""

    line: int
    table: str
    schema: str | None
    snippet: str
    scope: str = ""
    #: the line of the call that runs it (a constant's SQL runs where it is executed, not where it is written)
    ran_at: int = 0


@dataclass
class FunctionFacts:
    """A ``def``: where it is, the class it is a method of, its parameters, and what its body does to
    search_path and with SQL it is given."""

    name: str
    line: int
    owner: str | None  # the qualified name of its class, for a method
    params: tuple[str, ...]
    #: the key of its body's calls, SQL and bindings: its qualified name, with ``@line`` for a redefinition
    scope: str = ""
    #: the first line of its own body (nested functions apart) that binds search_path, if any
    binds: int | None = None
    #: parameters whose value its body runs as SQL: (position, name)
    sql_params: set[tuple[int, str]] = field(default_factory=set)


@dataclass(frozen=True)
class ImportRef:
    """What an import binds a local name to: a module (``name`` None) or a name inside one; ``level`` counts
    the dots of a relative import."""

    module: str
    name: str | None
    level: int = 0


@dataclass(frozen=True)
class CallSite:
    """A call the project may define: ``callee`` is its dotted form (``("f",)``, ``("db", "f")``,
    ``("self", "m")``; a local made by ``Foo(...)`` stands as ``Foo``), ``scope`` the function it is in,
    ``owner`` that function's class, ``strings`` its arguments that are strings (position or keyword)."""

    line: int
    callee: tuple[str, ...]
    scope: str
    owner: str | None
    strings: tuple[tuple[int | str, SqlText], ...] = ()


@dataclass
class ModuleReport:
    """Everything the scan keeps of one module after its walk."""

    hits: dict[tuple[int, str, str | None], Hit] = field(default_factory=dict)
    refs: list[TableRef] = field(default_factory=list)
    models: ModelFacts = field(default_factory=ModelFacts)
    #: every def by qualified name (``f``, ``Cls.m``, ``f.inner``), the last of a name redefined (the one
    #: called), and each redefinition also by its scope (``f@12``)
    functions: dict[str, FunctionFacts] = field(default_factory=dict)
    #: every class by qualified name: its bases, dotted
    classes: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    #: imports: local name -> what it names
    imports: dict[str, ImportRef] = field(default_factory=dict)
    calls: list[CallSite] = field(default_factory=list)
    #: session-level bindings of search_path: (scope, the line running it, the line of the binding itself)
    bindings: list[tuple[str, int, int]] = field(default_factory=list)


class ModuleScan(ast.NodeVisitor):
    """Walks one module in source order."""

    def __init__(self, parsed: ParsedModule, source: str, path: str):
        self.resolver = Resolver(parsed.text)
        self.source = source
        self.path = path
        self.report = ModuleReport()
        self._lines: list[str] | None = None
        # Names bound to a string (SqlText) or a dict literal, innermost scope last; None: rebound to anything else.
        self.scopes: list[dict[str, SqlText | ast.Dict | Param | None]] = [{}]
        # Locals made by calling a dotted name (``repo = Repository(...)``): their methods resolve through it.
        self.made: list[dict[str, tuple[str, ...]]] = [{}]
        # Whether each scope is a class body: a def inside a class does not see the class's names.
        self.class_body: list[bool] = [False]
        self.functions: list[FunctionFacts] = []  # the defs being walked, innermost last
        self.scope_names: list[str] = []  # their qualified names
        self.qualified: list[str] = []  # the names of the defs and classes being walked, innermost last
        self.qualified_kinds: list[str] = []  # "function" or "class", for each of them
        self.classes: list[str] = []
        self.class_scopes: dict[str, dict[str, SqlText | ast.Dict | Param | None]] = {}
        self.django_calls: list[tuple[int, str, str]] = []  # (line, name, scope): judged once the imports are known
        self.judged: set[int] = set()  # ids of wrapper calls a runner has already judged with its parameters
        self.owners: list[MappedClass | CoreTable] = []  # the model a ForeignKey(...) belongs to
        self._dispatch: dict[type, Callable[[Any], None]] = {}
        # Nodes with nothing below them to judge: strings are judged where they reach a SQL call, not
        # where they stand, and a bare name matters only when it is SchemaManager.
        self._skip: set[type] = {ast.Constant} if "SchemaManager" in source else {ast.Constant, ast.Name}

    def run(self, tree: ast.Module) -> ModuleReport:
        self.visit(tree)
        if any(bindings.is_django_import(ref.module) for ref in self.report.imports.values() if ref.level == 0):
            for line, name, scope in self.django_calls:
                self.hit(line, "django-tenancy-call", scope=scope, name=name)
        # What the walk needed and the second pass does not: the module's facts are kept until every
        # module is read, so keep them small.
        self.scopes, self.made, self.class_scopes, self.judged, self._dispatch = [{}], [{}], {}, set(), {}
        self.class_body = [False]
        return self.report

    @property
    def scope(self) -> str:
        """The qualified name of the innermost def being walked ("" at module level)."""
        return self.scope_names[-1] if self.scope_names else ""

    # -- walking (ast.NodeVisitor's, without its per-node getattr and iter_fields) -------------
    def visit(self, node: ast.AST) -> None:
        kind = type(node)
        (self._dispatch.get(kind) or self._method(kind))(node)

    def _method(self, kind: type) -> Callable[[Any], None]:
        method = self._dispatch[kind] = getattr(self, "visit_" + kind.__name__, None) or self.generic_visit
        return method

    def generic_visit(self, node: ast.AST) -> None:
        skip, dispatch = self._skip, self._dispatch
        for name in _fields(type(node)):
            value = getattr(node, name, None)
            if type(value) is list:
                for item in value:
                    kind = type(item)
                    if kind not in skip and isinstance(item, ast.AST):
                        (dispatch.get(kind) or self._method(kind))(item)
            elif value is not None:
                kind = type(value)
                if kind not in skip and isinstance(value, ast.AST):
                    (dispatch.get(kind) or self._method(kind))(value)

    # -- reporting ---------------------------------------------------------------------------
    def snippet(self, line: int) -> str:
        if self._lines is None:
            self._lines = split_lines(self.source)
        return snippet(self._lines, line)

    def hit(self, line: int, rule: str, table: str | None = None, scope: str | None = None, ran_at: int = 0,
            binds: bool = True, **values: str) -> None:
        """A finding; one of BINDING_RULES also makes def ``scope`` (the def being walked) bind search_path,
        unless ``binds`` is False (a def named like a legacy helper: its own calls are flagged by name)."""
        key = (line, rule, table)
        if key not in self.report.hits:
            self.report.hits[key] = Hit(line, rule, message(rule, **values), self.snippet(line), table)
        if binds and rule in BINDING_RULES:
            scope = self.scope if scope is None else scope
            self.report.bindings.append((scope, ran_at or line, line))
            function = self.report.functions.get(scope)
            if function is not None and function.binds is None:
                function.binds = line

    # -- scopes ------------------------------------------------------------------------------
    def names(self) -> _Names:
        return _Names(self.visible(self.scopes), self.class_scopes, self.owner)

    def visible(self, scopes: list[Any]) -> list[Any]:
        """Of ``scopes`` (one per scope being walked), those whose names the innermost sees: a class body's
        only from that body itself, as in Python."""
        if not any(self.class_body[:-1]):
            return scopes
        return [scope for scope, body in zip(scopes[:-1], self.class_body) if not body] + scopes[-1:]

    @property
    def owner(self) -> str | None:
        """The class of the method being walked: ``self`` in a def nested in a method is that method's."""
        for function in reversed(self.functions):
            if function.owner is not None:
                return function.owner
        return None

    def lookup_dict(self, node: ast.expr) -> ast.Dict | None:
        if isinstance(node, ast.Dict):
            return node
        value = self.names().value(node.id) if isinstance(node, ast.Name) else None
        return value if isinstance(value, ast.Dict) else None

    def bind(self, targets: list[ast.expr], value: ast.expr | None) -> None:
        for target in targets:  # label, sql = "report", "SELECT ..."
            if isinstance(target, ast.Tuple):
                values = value.elts if isinstance(value, ast.Tuple) and len(value.elts) == len(target.elts) \
                    else [None] * len(target.elts)
                for item, item_value in zip(target.elts, values):
                    self.bind([item], item_value)
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if not names:
            return
        bound: SqlText | ast.Dict | Param | None
        if isinstance(value, ast.Dict):
            bound = value
        elif value is None:
            bound = None
        else:  # sql = text(query): still the parameter, run as SQL wherever sql is
            bound = self.parameter(value) or self.resolver.resolve(value, self.names())
        made = _dotted(value.func) if isinstance(value, ast.Call) else None
        for name in names:
            self.scopes[-1][name] = bound
            if made:
                self.made[-1][name] = made
            else:
                self.made[-1].pop(name, None)

    def parameter(self, node: ast.expr) -> Param | None:
        """The parameter of the def being walked that ``node`` is (or wraps in text()/SQL()), if any."""
        while isinstance(node, ast.Call) and call_name(node) in TRANSPARENT_CALLS and node.args:
            node = node.args[0]
        value = self.names().value(node.id) if isinstance(node, ast.Name) else None
        return value if isinstance(value, Param) else None

    # -- statements --------------------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> None:
        # Module constants are visible to functions defined above them, so bind them first.
        for stmt in node.body:
            if isinstance(stmt, ast.Assign):
                self.bind(stmt.targets, stmt.value)
            elif isinstance(stmt, ast.AnnAssign):
                self.bind([stmt.target], stmt.value)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        self.bind(node.targets, node.value)
        if not self.functions and not self.classes:
            self.module_binding(node.targets, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        self.bind([node.target], node.value)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.generic_visit(node)
        self.bind([node.target], node.value)  # if (sql := "SELECT ..."):

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.generic_visit(node)
        if isinstance(node.target, ast.Name) and isinstance(node.op, ast.Add):  # sql += " WHERE ..."
            self.bind([node.target], ast.BinOp(node.target, ast.Add(), node.value, lineno=node.lineno,
                                               col_offset=node.col_offset))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if bindings.is_legacy_helper(node.name):
            self.hit(node.lineno, "search-path-helper", binds=False, name=node.name)
        for decorator in node.decorator_list:
            self.visit(decorator)
        arguments = node.args
        params = tuple(a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs))
        owner = ".".join(self.qualified) if self.qualified and self.qualified_kinds[-1] == "class" else None
        qualified = ".".join([*self.qualified, node.name])
        # A name defined again (an @overload stub, then the implementation) is the last def when called.
        scope = f"{qualified}@{node.lineno}" if qualified in self.report.functions else qualified
        facts = FunctionFacts(node.name, node.lineno, owner, params, scope=scope)
        self.report.functions[qualified] = self.report.functions[scope] = facts
        self.functions.append(facts)
        self.scope_names.append(scope)
        self.qualified.append(node.name)
        self.qualified_kinds.append("function")
        self.scopes.append({name: Param(position, name) for position, name in enumerate(params)})
        self.made.append({})
        self.class_body.append(False)
        for item in (arguments, node.returns):
            if item is not None:
                self.visit(item)
        for stmt in node.body:
            self.visit(stmt)
        self.class_body.pop()
        self.made.pop()
        self.scopes.pop()
        self.qualified_kinds.pop()
        self.qualified.pop()
        self.scope_names.pop()
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.name == "SchemaManager":
            self.hit(node.lineno, "schema-manager")
        cls = self.mapped_class(node)
        self.report.models.classes.append(cls)
        qualified = ".".join([*self.qualified, node.name])
        self.report.classes.setdefault(qualified, tuple(filter(None, map(_dotted, node.bases))))
        self.classes.append(node.name)
        self.qualified.append(node.name)
        self.qualified_kinds.append("class")
        self.owners.append(cls)
        # Class constants are read through self.NAME / Cls.NAME by methods above or below them.
        scope = self.class_scopes[qualified] = {}
        self.scopes.append(scope)
        self.made.append({})
        self.class_body.append(True)
        for stmt in node.body:
            if isinstance(stmt, ast.Assign):
                self.bind(stmt.targets, stmt.value)
        self.generic_visit(node)
        self.class_body.pop()
        self.made.pop()
        self.scopes.pop()
        self.owners.pop()
        self.qualified_kinds.pop()
        self.qualified.pop()
        self.classes.pop()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if "SchemaManager" in (alias.name.rpartition(".")[2], alias.asname):
                self.hit(node.lineno, "schema-manager")
            # import a.b binds a (the package); import a.b as c binds c to a.b
            local = alias.asname or alias.name.partition(".")[0]
            self.report.imports.setdefault(local, ImportRef(alias.name if alias.asname else local, None))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if "SchemaManager" in (alias.name.rpartition(".")[2], alias.asname):
                self.hit(node.lineno, "schema-manager")
            if alias.name != "*":
                self.report.imports.setdefault(alias.asname or alias.name,
                                               ImportRef(node.module or "", alias.name, node.level))

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == "SchemaManager":
            self.hit(node.lineno, "schema-manager")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "SchemaManager":
            self.hit(node.lineno, "schema-manager")
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            name = bindings.constant_key(key)
            if name == "options":  # connect_args={"options": "-c search_path=..."}
                self.judge_connection_string(value)
            elif name == "server_settings":
                self.judge_server_settings(value)
            elif name == "schema_translate_map":
                self.translate_map(value)
        self.generic_visit(node)

    # -- calls -------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        name = call_name(node)
        if name:
            self.call(node, name)
        if name == "Table" and node.args and bindings.constant_key(node.args[0]) is not None:
            self.owners.append(self.core_table(node))
            self.generic_visit(node)
            self.owners.pop()
            return
        if name == "ForeignKey" and self.owners and node.args and bindings.constant_key(node.args[0]) is not None:
            self.owners[-1].foreign_keys.append((node.lineno, node.args[0].value))  # type: ignore[attr-defined]
        self.generic_visit(node)

    def call(self, node: ast.Call, name: str) -> None:
        if bindings.is_legacy_helper(name):
            self.hit(node.lineno, "search-path-helper", name=name)
        elif name in bindings.DJANGO_CALLS:
            self.django_calls.append((node.lineno, name, self.scope))
            self.call_site(node)
        else:
            self.call_site(node)
        first = bindings.sql_argument(node)
        if name == "set_config" and bindings.constant_key(first) == "search_path":
            self.hit(node.lineno, "set-config-search-path")  # func.set_config("search_path", ...)
        if name in bindings.SQL_RUNNERS and first is not None:
            self.judge_runner(node, first)
        elif name in bindings.SQL_WRAPPERS and first is not None and id(node) not in self.judged:
            self.judge_sql(self.resolver.resolve(first, self.names()))
        elif name == "format" and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call) \
                and call_name(node.func.value) == "SQL":
            self.judge_sql(self.resolver.resolve(node, self.names()))  # sql.SQL("SET {} TO {}").format(...)
        for keyword in node.keywords:
            if keyword.arg == "options" or (keyword.arg in bindings.DSN_KEYWORDS and name in bindings.CONNECT_CALLS):
                self.judge_connection_string(keyword.value)
            elif keyword.arg == "server_settings":
                self.judge_server_settings(keyword.value)
            elif keyword.arg == "schema_translate_map":
                self.translate_map(keyword.value)
        if name in bindings.CONNECT_CALLS:
            for argument in node.args:
                self.judge_connection_string(argument)

    def call_site(self, node: ast.Call) -> None:
        """Keep a call whose callee is a dotted name (a project function perhaps: judged once every module
        is read), with its string arguments (a helper may run them as SQL)."""
        callee = _dotted(node.func)
        if callee is None and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call) \
                and call_name(node.func.value) == "super":
            callee = ("super", node.func.attr)  # super().m(): m of the calling method's class's bases
        if callee is None:
            return
        made = self.made_by(callee[0]) if len(callee) > 1 else None
        if made:  # repo.run() where repo = Repository(...)
            callee = made + callee[1:]
        strings: list[tuple[int | str, SqlText]] = []
        names = None
        arguments = [*enumerate(node.args), *((k.arg, k.value) for k in node.keywords if k.arg)]
        for key, argument in arguments:
            if type(argument) in _MAYBE_STRINGS:
                names = names or self.names()
                text = self.resolver.resolve(argument, names)
                if text is not None:
                    strings.append((key, text))
        self.report.calls.append(CallSite(node.lineno, callee, self.scope, self.owner, tuple(strings)))

    def made_by(self, name: str) -> tuple[str, ...] | None:
        for scope, made in zip(reversed(self.visible(self.scopes)), reversed(self.visible(self.made))):
            if name in scope:
                return made.get(name)
        return None

    def judge_runner(self, runner: ast.Call, statement: ast.expr) -> None:
        """A runner's SQL, with the parameters it binds (for ``set_config(:name, ...)``)."""
        extra: dict[str, ast.expr] = {}
        inner = statement
        while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) \
                and inner.func.attr == "bindparams":  # text(...).bindparams(name="search_path")
            extra.update({k.arg: k.value for k in inner.keywords if k.arg})
            inner = inner.func.value
        if isinstance(inner, ast.Call) and call_name(inner) in bindings.SQL_WRAPPERS:
            self.judged.add(id(inner))
            inner = bindings.sql_argument(inner) or inner
        self.judge_sql(self.resolver.resolve(inner, self.names()), runner, extra, ran_at=runner.lineno)
        self.sql_parameter(inner)

    def sql_parameter(self, node: ast.expr) -> None:
        """A def that runs one of its parameters as SQL: its callers' strings are judged at their call."""
        param = self.parameter(node)
        if param is not None and self.functions:
            self.functions[-1].sql_params.add((param.position, param.name))

    def judge_sql(self, text: SqlText | None, runner: ast.Call | None = None,
                  extra: dict[str, ast.expr] | None = None, scope: str | None = None, ran_at: int = 0) -> None:
        """Judge a string that reaches SQL: run by ``runner`` at line ``ran_at``, in def ``scope``."""
        if text is None:
            return
        scope = self.scope if scope is None else scope
        for fact in analyse(text.text):
            line = self.resolver.line_of(text, fact.offset)
            if fact.kind == SET_SEARCH_PATH:
                self.hit(line, "set-search-path-sql", scope=scope, ran_at=ran_at)
            elif fact.kind == SET_CONFIG:
                self.hit(line, "set-config-search-path", scope=scope, ran_at=ran_at)
            elif fact.kind == SET_CONFIG_PARAM and runner is not None and fact.param is not None \
                    and bindings.bound_parameter(runner, fact.param, extra or {}) == "search_path":
                self.hit(line, "set-config-search-path", scope=scope, ran_at=ran_at)
            elif fact.kind == TABLE and fact.table is not None:
                self.report.refs.append(TableRef(line, fact.table, fact.schema, self.snippet(line), scope,
                                                 ran_at or line))

    def judge_connection_string(self, node: ast.expr) -> None:
        text = self.resolver.resolve(node, self.names())
        if text is None:
            return
        for match in bindings.LIBPQ_SEARCH_PATH.finditer(text.text):
            self.hit(self.resolver.line_of(text, match.start("anchor")), "libpq-search-path-option")

    def judge_server_settings(self, node: ast.expr) -> None:
        settings = self.lookup_dict(node)
        key = None if settings is None else bindings.search_path_key(settings)
        if key is not None:
            self.hit(key.lineno, "asyncpg-server-settings")

    # -- models ------------------------------------------------------------------------------
    def translate_map(self, node: ast.expr) -> None:
        mapping = self.lookup_dict(node)
        for key in mapping.keys if mapping is not None else ():
            if isinstance(key, ast.Constant) and (key.value is None or isinstance(key.value, str)):
                self.report.models.translate_keys.add(key.value)

    def mapped_class(self, node: ast.ClassDef) -> MappedClass:
        cls = MappedClass(self.path, node.lineno, node.name, tuple(filter(None, map(_base_name, node.bases))),
                          snippet=self.snippet(node.lineno))
        for stmt in node.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else (
                [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
            value = getattr(stmt, "value", None)
            for target in targets:
                attr = target.id if isinstance(target, ast.Name) else None
                if attr == "__tablename__" and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    cls.tablename = value.value
                elif attr == "__table_args__":
                    cls.has_table_args = True
                    local = self.lookup_dict(value) if isinstance(value, ast.Name) else value
                    if local is None and isinstance(value, ast.Name):
                        cls.table_args_name = value.id  # imported: resolved with every module's constants
                    cls.table_args_schema = _table_args_schema(local)
                elif attr == "metadata" and isinstance(value, ast.Call) and call_name(value) == "MetaData":
                    cls.metadata_schema = _keyword_constant(value, "schema")
        return cls

    def core_table(self, node: ast.Call) -> CoreTable:
        metadata = node.args[1] if len(node.args) > 1 else None
        schema = next((k.value for k in node.keywords if k.arg == "schema"), None)
        table = CoreTable(self.path, node.lineno, node.args[0].value,  # type: ignore[attr-defined]
                          metadata.id if isinstance(metadata, ast.Name) else None,
                          schema.value if isinstance(schema, ast.Constant) and isinstance(schema.value, str) else None,
                          schema is not None, snippet=self.snippet(node.lineno))
        self.report.models.tables.append(table)
        return table

    def module_binding(self, targets: list[ast.expr], value: ast.expr) -> None:
        """``md = MetaData(schema=...)``, ``Base = declarative_base(metadata=MetaData(schema=...))`` and
        ``TENANT_ARGS = {"schema": "tenant"}`` (a ``__table_args__`` another module may import)."""
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if isinstance(value, (ast.Dict, ast.Tuple)):
            for name in names:
                self.report.models.table_args[name] = _table_args_schema(value)
        if not isinstance(value, ast.Call):
            return
        called = call_name(value)
        if called == "MetaData":
            for name in names:
                self.report.models.metadata[name] = _keyword_constant(value, "schema")
        elif called in ("declarative_base", "generate_base", "as_declarative"):
            metadata = next((k.value for k in value.keywords if k.arg == "metadata"), None)
            schema = _keyword_constant(metadata, "schema") if isinstance(metadata, ast.Call) else (
                self.report.models.metadata.get(metadata.id) if isinstance(metadata, ast.Name) else None)
            for name in names:
                self.report.models.declarative[name] = schema


@dataclass(frozen=True)
class Param:
    """A name bound to a parameter of the def being walked: its value is the caller's."""

    position: int
    name: str


class _Names:
    """The names in scope, innermost first, looked up without merging the scopes; ``self.NAME``,
    ``cls.NAME`` and ``Cls.NAME`` are the class constants of the class being walked or named."""

    def __init__(self, scopes: list[dict[str, SqlText | ast.Dict | Param | None]],
                 classes: dict[str, dict[str, SqlText | ast.Dict | Param | None]], owner: str | None):
        self.scopes, self.classes, self.owner = scopes, classes, owner

    def value(self, name: str) -> SqlText | ast.Dict | Param | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def get(self, name: str) -> SqlText | None:
        value = self.value(name)
        return value if isinstance(value, SqlText) else None

    def attribute(self, receiver: str, name: str) -> SqlText | ast.Dict | None:
        cls = self.owner if receiver in ("self", "cls") else receiver
        value = self.classes.get(cls or "", {}).get(name)
        return value if isinstance(value, (SqlText, ast.Dict)) else None


def _dotted(node: ast.expr) -> tuple[str, ...] | None:
    """``a.b.c`` as ("a", "b", "c"); None for anything but names and attributes of names."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return tuple(reversed(parts))


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _base_name(node.value)
    return None


def _keyword_constant(call: ast.Call, keyword: str) -> str | None:
    value = next((k.value for k in call.keywords if k.arg == keyword), None)
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None


def _table_args_schema(value: ast.expr | None) -> str | None:
    """The ``schema`` of ``__table_args__``: a dict, or a tuple whose last item is a dict."""
    if isinstance(value, ast.Tuple) and value.elts:
        value = value.elts[-1]
    if isinstance(value, ast.Dict):
        for key, item in zip(value.keys, value.values):
            if bindings.constant_key(key) == "schema" and isinstance(item, ast.Constant) \
                    and isinstance(item.value, str):
                return item.value
    return None

