"""Tenant names: the default set, the hostile set, and validation.

A tenant's schema is named exactly like the tenant, so a tenant name must be a
valid PostgreSQL schema name. The harness quotes every identifier it writes;
names that need quoting are there on purpose, to catch layers that do not.
"""

from __future__ import annotations

import re

from sqlalchemy.dialects.postgresql.base import RESERVED_WORDS

from harness.errors import UsageError

# PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes (63), silently
# (with a NOTICE): two long names would then share one schema.
MAX_IDENTIFIER_BYTES = 63
PLACEHOLDER_SCHEMA = "tenant"
PUBLIC = "public"
RESERVED = {PUBLIC, PLACEHOLDER_SCHEMA, "information_schema"}

# Always present: two names that differ only by case, and a name with a space.
DEFAULT_TENANTS = ("acme", "Acme", "umbrella corp", "globex")

HOSTILE_TENANTS = (
    'quote"double',
    "o'hara",
    "x; DROP SCHEMA public CASCADE; --",
    "with space",
    "1st tenant",
    "café",
    "東京",
    "t" * 59 + "ää",  # exactly 63 bytes in UTF-8
    # Prefix pairs: plain names, hostile to a layer that derives or matches tenants by prefix. A library
    # that strips "tenant_" from a role name serves tenant_x as x; one that matches LIKE 'x%' or
    # startswith("x") serves x_y as x (or the reverse). Each pair's rows are told apart by their owner.
    "x",
    "tenant_x",
    "x_y",
)

# PostgreSQL's unquoted identifiers: a letter (any non-ASCII letter too) or
# underscore, then letters, digits, _ or $. Only ASCII A-Z is folded, so an
# upper-case ASCII letter is what makes a name change when left unquoted.
_PLAIN = re.compile(r"(?:[a-z_]|[^\x00-\x7f])(?:[a-z0-9_$]|[^\x00-\x7f])*")


def needs_quoting(name: str) -> bool:
    """True when ``name`` is not a plain lower-case SQL identifier, or is a reserved word."""
    return _PLAIN.fullmatch(name) is None or name in RESERVED_WORDS


def validate_tenant(name: object) -> str:
    """Return ``name`` if it can be a schema name; raise a UsageError otherwise."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"Tenant name {name!r} is not a non-empty string.")
    problem = None
    size = len(name.encode("utf-8"))
    if "\x00" in name:
        problem = "contains a NUL character, which PostgreSQL identifiers cannot hold"
    elif size > MAX_IDENTIFIER_BYTES:
        problem = (f"is {size} bytes long in UTF-8; PostgreSQL truncates identifiers to "
                   f"{MAX_IDENTIFIER_BYTES} bytes, so two tenants could share one schema")
    elif name.lower() in RESERVED:
        problem = f"is reserved ({', '.join(sorted(RESERVED))} are used by the harness or PostgreSQL)"
    elif name.startswith("pg_"):
        problem = "starts with pg_, which PostgreSQL reserves for system schemas"
    if problem:
        raise UsageError(f"Tenant name {name!r} cannot be a schema name: it {problem}.",
                         fix=["choose another tenant name; nothing was created"])
    return name


def validate_tenants(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate every name before anything is created; reject duplicates."""
    checked = tuple(validate_tenant(n) for n in names)
    if len(set(checked)) != len(checked):
        raise UsageError("The tenant set holds a name twice.", fix=["list each tenant once"])
    if len(checked) < 2:
        raise UsageError("At least two tenants are needed to observe isolation.",
                         fix=["give two or more tenants"])
    return checked


def parse_tenants(value: object) -> int | tuple[str, ...]:
    """The ``tenants`` setting: a count (``6``, ``"6"``) or a list of names (``"acme,tenant_acme"`` or a
    TOML list). Names are validated by :func:`tenant_set`, counts by the settings' bounds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a count or a list of tenant names, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)  # validated whole by tenant_set: a non-string gets its own message
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return tuple(name.strip() for name in text.split(",") if name.strip())


def tenant_set(setting: int | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The tenant set a ``tenants`` setting names: the default set of that size, or the names given
    (at least two, each a valid schema name, no name twice)."""
    if isinstance(setting, int):
        return default_tenants(setting)
    try:
        return validate_tenants(tuple(setting))
    except UsageError as exc:
        raise UsageError(f"--tenants / HARNESS_TENANTS / [tool.harness] tenants = {list(setting)!r}: {exc.problem}",
                         fix=[*exc.fix, "give a count (--tenants 6) or two or more names (--tenants acme,globex; "
                                        "in [tool.harness]: tenants = [\"acme\", \"globex\"]); a name holding a "
                                        "comma can only be given in the TOML list"]) from exc


def default_tenants(count: int = len(DEFAULT_TENANTS)) -> tuple[str, ...]:
    """The default tenant set: the four names above, then ``tenant_05``... when more are asked for."""
    if count < 2:
        raise UsageError(f"--tenants {count}: at least two tenants are needed.", fix=["use --tenants 2 or more"])
    extra = tuple(f"tenant_{i:02d}" for i in range(len(DEFAULT_TENANTS) + 1, count + 1))
    return (DEFAULT_TENANTS + extra)[:count]
