"""Where a finding sits: app code, scripts, tests or migrations; and which of them gate.

A migration that runs ``SET search_path`` once per tenant schema, or a test
that pins a schema on purpose, is not the leak an application request is: each
finding is tagged by its file's path (relative to the folder given to the scan,
or to that folder's parent) so the gate can leave migrations out while the
report still lists them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import UsageError

APP = "app"
# Checked in this order; a file matching none is app code.
DEFAULT_TAGS: dict[str, tuple[str, ...]] = {
    "migrations": ("**/migrations/**", "**/alembic/**"),
    "tests": ("**/tests/**", "**/test/**", "**/test_*.py", "**/*_test.py", "**/conftest.py"),
    "scripts": ("**/scripts/**", "**/bin/**", "**/tools/**", "**/manage.py"),
}
# Listed and counted, gating only when asked (--gate): a migration runs SET search_path once per schema on
# purpose, a test pins a schema, a script is run by hand. App code, and any tag the team adds, gates.
NOT_GATING = ("migrations", "tests", "scripts")


def glob_pattern(glob: str) -> re.Pattern[str]:
    """A path glob as a regex over ``/``-separated paths: ``**`` spans folders, ``*`` and ``?`` do not."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("(?:/.*)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class Tags:
    """Globs per tag, checked in order, and the tags whose findings gate."""

    globs: tuple[tuple[str, tuple[str, ...]], ...]
    gating: frozenset[str]

    @classmethod
    def from_options(cls, tags: list[str] | None = None, gate: str | None = None) -> Tags:
        """From ``--tag NAME=GLOB[,GLOB]`` (replaces that tag's globs, or adds a tag; an empty list drops
        the tag) and ``--gate TAG[,TAG]`` (default: app and the team's own tags)."""
        chosen: dict[str, tuple[str, ...]] = {}
        for option in tags or ():
            name, equals, globs = option.partition("=")
            name = name.strip()
            if not equals or not re.fullmatch(r"[a-z][a-z0-9_-]*", name) or name == APP:
                raise UsageError(f"--tag {option!r} is not NAME=GLOB[,GLOB...] with a lower-case name other "
                                 f"than {APP!r}.", fix=["for example --tag migrations=alembic/**,**/migrations/**"])
            chosen[name] = tuple(g.strip() for g in globs.split(",") if g.strip())
        ordered = {**chosen, **{name: globs for name, globs in DEFAULT_TAGS.items() if name not in chosen}}
        known = {APP, *ordered}
        gating = (tuple(known.difference(NOT_GATING)) if gate is None
                  else tuple(t.strip() for t in gate.split(",") if t.strip()))
        unknown = [t for t in gating if t not in known]
        if unknown:
            raise UsageError(f"--gate {gate!r} names {', '.join(unknown)}, which is not a tag.",
                             fix=[f"use some of: {', '.join(sorted(known))}"])
        return cls(tuple((name, globs) for name, globs in ordered.items() if globs), frozenset(gating))

    def tag(self, *relatives: str) -> str:
        """The tag of a file known by ``relatives`` (``/``-separated paths: under the scanned folder, and
        under its parent, so that scanning ``app/migrations`` still finds migrations)."""
        for name, globs in self.globs:
            if any(_compiled(glob).fullmatch(relative) for glob in globs for relative in relatives):
                return name
        return APP


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(glob: str) -> re.Pattern[str]:
    pattern = _PATTERNS.get(glob)
    if pattern is None:
        pattern = _PATTERNS[glob] = glob_pattern(glob)
    return pattern
