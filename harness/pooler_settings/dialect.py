"""What every pooler's settings share: :class:`PoolerSettings`, :class:`PoolerDialect` (which names a pooler
carries over and keeps, how a value is checked, how its file reads) and the readers of its file. Each pooler's
module (:mod:`.pgbouncer`, :mod:`.pgpool`, :mod:`.pgagroal`) declares its dialect on these."""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.deployments import POOLERS
from harness.errors import UsageError

#: how deep ``include`` directives may nest before a file is taken for a loop
INCLUDE_DEPTH = 10
#: a name this close to a carried one (difflib ratio) but not it is taken for a misspelling of it
MISSPELLING_CUTOFF = 0.9

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_INDEXED = re.compile(r"^(?P<base>[a-z_]+?)\d+$")

#: name -> (value, "file:line"), in the order a pooler applies them (a later line wins and moves last);
#: a section other than the pooler's own is there by its name in brackets ("[databases]"), with no value
Found = dict[str, tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class PoolerSettings:
    """The team's settings of one pooler, in the order they are applied (a later one wins)."""

    #: name -> value, as written into the pooler's configuration
    values: dict[str, str]
    #: name -> where it came from ("pgbouncer.ini:12", "--pgbouncer-set")
    origins: dict[str, str]
    #: names of the team's file the harness keeps its own values of (or leaves out)
    ignored: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.values)

    def describe(self) -> str:
        """One line for the report: what was carried over, from where, and what was ignored."""
        carried = ", ".join(f"{name} = {value}" for name, value in self.values.items()) or "none"
        ignored = f"; ignored (the harness's own): {', '.join(self.ignored)}" if self.ignored else ""
        return f"carried over: {carried}{ignored}"


@dataclasses.dataclass(frozen=True)
class PoolerDialect:
    """How one kind of pooler's settings are read and which of them the harness carries over.

    Declared once per pooler; everything the configuration and the stack ask of the team's settings (the
    file, ``--<kind>-set`` items, misspellings, the fold of both) is derived from it, so the three poolers
    refuse the same mistakes with the same words.
    """

    #: the pooler's kind (:data:`harness.deployments.POOLERS`); its settings are ``<kind>_config`` and ``<kind>_set``
    kind: str
    #: the names carried over from the team's file (and the only ones ``--<kind>-set`` takes)
    carried: tuple[str, ...]
    #: the names the harness keeps its own values of: listed as ignored, never carried
    kept: tuple[str, ...]
    #: (name, value) -> the value as the harness writes it; ValueError says what the pooler would make of it.
    #: Line breaks are refused before it is called.
    check: Callable[[str, str], str]
    #: the team's file -> what it sets, and whether it has the pooler's section (:data:`Found`)
    read: Callable[[Path], tuple[Found, bool]]
    #: the file a team runs the pooler with ("pgbouncer.ini")
    file_name: str
    #: the section the pooler's settings are in; None for a file without sections (pgpool.conf)
    section: str | None
    #: what the pooler does with a name it does not know, said when the team's file has a misspelled one
    on_unknown: str
    #: the pooler reads names (and sections) case-insensitively: they are folded to lower case
    fold_case: bool = False
    #: a name in neither list is an error (the pooler refuses what the harness's stack cannot run with)
    #: rather than left out and counted
    refuse_others: bool = False
    #: a kept name followed by a number is kept too (Pgpool-II's ``backend_hostname0``)
    indexed_kept: bool = False
    #: quotes taken off a ``--<kind>-set`` value, as the pooler's file would
    unquote: str = ""

    @property
    def title(self) -> str:
        return POOLERS[self.kind].title

    @property
    def config_setting(self) -> str:
        return f"{self.kind}_config"

    @property
    def set_setting(self) -> str:
        return f"{self.kind}_set"

    @property
    def config_option(self) -> str:
        return f"--{self.kind}-config"

    @property
    def set_option(self) -> str:
        return f"--{self.kind}-set"

    # -- names ------------------------------------------------------------------------------------------------
    def fold(self, name: str) -> str:
        return name.lower() if self.fold_case else name

    def is_kept(self, name: str) -> bool:
        if name in self.kept:
            return True
        indexed = _INDEXED.match(name) if self.indexed_kept else None
        return indexed is not None and indexed.group("base") in self.kept

    def misspelled(self, name: str) -> str | None:
        """The carried setting ``name`` looks like a misspelling of (another case, one letter off), if any:
        the pooler would not take it for the carried one."""
        name = self.fold(name)
        if name in self.carried:
            return None
        if name.lower() in self.carried:
            return name.lower()
        close = difflib.get_close_matches(name, self.carried, n=1, cutoff=MISSPELLING_CUTOFF)
        return close[0] if close else None

    def not_carried(self, name: str) -> str:
        """Why ``--<kind>-set NAME=...`` is refused: a misspelling, one of the harness's own, or unknown here."""
        guess = self.misspelled(name)
        case = f" {self.title} reads names case-sensitively" if guess and guess == name.lower() else ""
        hint = f" (did you mean {guess}?{case})" if guess else ""
        return (f"{name} is not a {self.title} setting the harness carries over{hint}"
                + (" (the harness keeps its own)" if self.is_kept(name) else "")
                + f"; it carries over: {', '.join(self.carried)}")

    # -- values and items -------------------------------------------------------------------------------------
    def check_value(self, name: str, value: str) -> str:
        """The value of the carried setting ``name`` as the harness writes it; ValueError says what is wrong."""
        if "\n" in value or "\r" in value:
            raise ValueError(f"the value of {name} holds a line break")
        return self.check(name, value)

    def parse_assignment(self, item: str) -> tuple[str, str]:
        """``NAME=VALUE`` (``--<kind>-set``) -> (name, value), checked; the name must be one it carries over."""
        match = _NAME.match(item)
        if not match:
            raise ValueError(f"expected NAME=VALUE (a {self.title} setting), got {item!r}")
        name, value = self.fold(match.group(1)), item[match.end():].strip()
        if self.unquote and len(value) >= 2 and value[0] == value[-1] and value[0] in self.unquote:
            value = value[1:-1]
        if name not in self.carried:
            raise ValueError(self.not_carried(name))
        return name, self.check_value(name, value)

    def split_assignments(self, value: Any) -> tuple[str, ...]:
        """``--<kind>-set`` items, each ``NAME=VALUE``, checked.

        A list (repeated option, [tool.harness] list) gives one item each; a string (``HARNESS_<KIND>_SET``)
        is comma-separated, and a piece that does not start with ``NAME=`` continues the value before it, so
        a list-valued setting keeps its commas: ``ignore_startup_parameters=extra_float_digits,options,
        query_timeout=5`` is two items.
        """
        if isinstance(value, (list, tuple)):
            items = [str(item).strip() for item in value]
        else:
            items = []
            for piece in str(value).split(","):
                if items and not _NAME.match(piece):
                    items[-1] += "," + piece
                else:
                    items.append(piece)
            items = [item.strip() for item in items]
        return tuple(f"{name}={val}" for name, val in (self.parse_assignment(item) for item in items if item))

    # -- the team's file --------------------------------------------------------------------------------------
    def from_file(self, path: Path) -> PoolerSettings:
        """The carried-over settings of a team's file.

        A name that misspells a carried one, and a carried setting with a value the pooler would misread,
        are errors; so is any other name where the dialect refuses others. The harness's own names (and
        other sections) are listed as ignored; every other name is left out and counted.
        """
        if not path.is_file():
            raise UsageError(f"{self.config_option} {path}: no such file.",
                             fix=[f"give the path of your production {self.file_name}"])
        found, has_section = self.read(path)
        if self.section is not None and not has_section:
            raise UsageError(f"{self.config_option} {path}: the file has no [{self.section}] section.",
                             checked=[f"{path}: sections read"],
                             fix=[f"give the {self.file_name} your {self.title} runs with (its settings are in "
                                  f"[{self.section}])",
                                  f"or give single settings with {self.set_option} NAME=VALUE"])
        sections = [name for name in found if name.startswith("[")]
        named = {name: place for name, place in found.items() if not name.startswith("[")}
        misspelled = {name: guess for name in named if (guess := self.misspelled(name)) is not None}
        if misspelled:
            raise UsageError(
                f"{self.config_option} {path}: {', '.join(misspelled)} is not a {self.title} setting; "
                f"{self.on_unknown}.",
                checked=[f"{name} at {named[name][1]}: did you mean {guess}?" for name, guess in misspelled.items()],
                fix=["fix the name in the file given to the harness (and in production)"])
        others = [name for name in named if name not in self.carried and not self.is_kept(name)]
        if others and self.refuse_others:
            raise UsageError(
                f"{self.config_option} {path}: not carried over: {', '.join(others)}.",
                checked=[f"{name} at {named[name][1]}" for name in others],
                fix=["remove them from the file given to the harness (a copy of yours), or give a supported "
                     f"setting with {self.set_option} NAME=VALUE instead",
                     f"carried over: {', '.join(self.carried)}",
                     f"ignored, the harness keeps its own: {', '.join(self.kept)}"])
        values, origins = {}, {}
        for name, (value, where) in named.items():
            if name in self.carried:
                try:
                    values[name] = self.check_value(name, value)
                except ValueError as exc:
                    raise UsageError(f"{where}: {exc}.",
                                     fix=["fix the value in the file given to the harness, or give it with "
                                          f"{self.set_option} NAME=VALUE"]) from None
                origins[name] = where
        kept = [name for name in named if self.is_kept(name)]
        counted = (f"{len(others)} more that do not decide what a pooled connection carries",) if others else ()
        return PoolerSettings(values, origins, tuple(sections + kept) + counted)

    def requested(self, config_file: Path | None, assignments: Iterable[str]) -> PoolerSettings:
        """The settings the team asked for: the file's, then each ``--<kind>-set`` (a later one wins)."""
        base = self.from_file(config_file) if config_file is not None else PoolerSettings({}, {})
        values, origins = dict(base.values), dict(base.origins)
        for item in assignments:
            try:
                name, value = self.parse_assignment(item)
            except ValueError as exc:
                raise UsageError(f"{self.set_option} {item}: {exc}.",
                                 fix=[f"give a setting the harness carries over: {', '.join(self.carried)}"]
                                 ) from None
            values.pop(name, None)  # re-inserted last: the order they are applied in
            values[name], origins[name] = value, self.set_option
        return PoolerSettings(values, origins, base.ignored)


# -- reading files ----------------------------------------------------------------------------------------------

def read_text(path: Path, dialect: PoolerDialect, depth: int = 0, include: str = "include") -> str:
    """A file of the team's (or one it includes), as text; a UsageError that says what to give instead."""
    if depth > INCLUDE_DEPTH:
        raise UsageError(f"{path}: {include} nests more than {INCLUDE_DEPTH} deep.",
                         fix=[f"check the {include} lines for a loop"])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{dialect.config_option} {path}: the file cannot be read ({exc}).",
                         fix=[f"give the path of a readable {dialect.file_name} (the one your production "
                              f"{dialect.title} uses)"]) from exc


def included(path: Path, target: str) -> Path:
    """The file an include line names: relative to the including file's folder."""
    named = Path(target).expanduser()
    return named if named.is_absolute() else path.parent / named


def strip_comment(line: str) -> str:
    """A line without its trailing comment (``#`` or ``;`` outside quotes), as pgagroal reads one."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "#;":
            return line[:index]
    return line


def read_ini(path: Path, dialect: PoolerDialect, *, include: str | None = None,
             inline_comments: bool = False) -> tuple[Found, bool]:
    """The dialect's section of an INI file (pgbouncer.ini, pgagroal.conf), and whether the file has it.

    ``;`` and ``#`` start a comment line, and with ``inline_comments`` also the rest of a line outside
    quotes (pgagroal); names are folded where the pooler folds them; a later line wins and is applied last;
    ``include`` (PgBouncer's ``%include FILE``) reads another file in place, relative to the including one.
    """
    found: Found = {}
    section: list[str | None] = [None]
    has_section = _read_ini_into(path, dialect, found, section, 0, include, inline_comments)
    return found, has_section


def _read_ini_into(path: Path, dialect: PoolerDialect, found: Found, section: list[str | None], depth: int,
                   include: str | None, inline_comments: bool) -> bool:
    text = read_text(path, dialect, depth, include or "include")
    has_section = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = (strip_comment(raw) if inline_comments else raw).strip()
        if not line or line[0] in ";#":
            continue
        where = f"{path}:{number}"
        if include is not None and line.lower().startswith(include):
            has_section |= _read_ini_into(included(path, line[len(include):].strip()), dialect, found, section,
                                          depth + 1, include, inline_comments)
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UsageError(f"{where}: {raw.strip()!r} is not a section header.",
                                 fix=[f"fix the line: a section is written [{dialect.section}]"])
            section[0] = dialect.fold(line[1:-1].strip())
            has_section |= section[0] == dialect.section
            if section[0] != dialect.section:
                found.setdefault(f"[{section[0]}]", ("", where))  # another section: the harness's own
            continue
        if section[0] != dialect.section:
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{where}: {raw.strip()!r} is not a NAME = VALUE line.",
                             fix=[f"fix the line, or give the settings with {dialect.set_option} NAME=VALUE"])
        name = dialect.fold(name.strip())
        found.pop(name, None)  # re-inserted last: the order the pooler applies them in
        found[name] = (value.strip(), where)
    return has_section
