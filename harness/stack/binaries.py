"""Finding the PostgreSQL and PgBouncer binaries, and installing them on request.

Search order (issue: foundation):
- PostgreSQL server: ``HARNESS_PG_BINDIR``, then PATH, then
  ``/usr/lib/postgresql/*/bin`` newest major version first.
- PgBouncer: ``HARNESS_PGBOUNCER``, then PATH, then ``/usr/sbin``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

from harness.errors import SetupError

DEBIAN_PACKAGES = ("postgresql", "pgbouncer")
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
PG_PROGRAMS = ("initdb", "postgres")


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Resolved paths of every program the native stack runs."""

    initdb: Path
    postgres: Path
    pgbouncer: Path

    def postgres_version(self) -> str:
        return postgres_version(self.postgres.parent)

    def pgbouncer_version(self) -> str:
        return binary_version(self.pgbouncer)


def binary_version(pgbouncer: Path) -> str:
    """The version a pgbouncer binary gives (``pgbouncer --version``: "PgBouncer 1.18.0" gives "1.18.0")."""
    return _version(pgbouncer, r"PgBouncer (\S+)")


def pooler_version(binary: Path) -> str:
    """The version a pooler binary gives (``--version``: "PgBouncer 1.18.0", "pgpool-II version 4.3.5
    (tamahomeboshi)", "pgagroal 1.6.0"): its first dotted number."""
    return _version(binary, r"(\d+\.\d+(?:\.\d+)?)")


def postgres_version(bindir: Path) -> str:
    """The version of the ``postgres`` binary in ``bindir``."""
    return _version(bindir / "postgres", r"(\d+(?:\.\d+)*)")


def _version(binary: Path, pattern: str) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    out = done.stdout or done.stderr  # pgpool prints its version on stderr
    match = re.search(pattern, out)
    return match.group(1) if match else out.strip()


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _remedy(variable: str) -> list[str]:
    return [
        "run `make setup` as root on Debian/Ubuntu: it installs the packages "
        + " and ".join(DEBIAN_PACKAGES),
        "or install them yourself: apt-get install " + " ".join(DEBIAN_PACKAGES),
        f"or point {variable} at the binaries you already have",
    ]


def _debian_bindirs() -> list[Path]:
    if not DEBIAN_PG_ROOT.is_dir():
        return []
    versions = [p for p in DEBIAN_PG_ROOT.iterdir() if (p / "bin").is_dir()]

    def major(path: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path.name)) or (0,)

    return [p / "bin" for p in sorted(versions, key=major, reverse=True)]


def find_pg_bindir(pg_bindir: Path | None) -> Path:
    """The folder holding ``initdb`` and ``postgres``."""
    checked: list[str] = []
    if pg_bindir is not None:
        missing = [name for name in PG_PROGRAMS if not _executable(pg_bindir / name)]
        if missing:
            raise SetupError(
                f"HARNESS_PG_BINDIR={pg_bindir} does not hold the PostgreSQL server binaries "
                f"(missing: {', '.join(missing)}).",
                checked=[str(pg_bindir / name) for name in PG_PROGRAMS],
                fix=[
                    "point HARNESS_PG_BINDIR at the folder that holds initdb and postgres "
                    "(on Debian: /usr/lib/postgresql/<version>/bin)",
                    "or unset HARNESS_PG_BINDIR to search PATH and /usr/lib/postgresql",
                ],
            )
        return pg_bindir
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    checked.append("PATH (initdb)")
    candidates.extend(_debian_bindirs())
    checked.append(f"{DEBIAN_PG_ROOT}/*/bin")
    for folder in candidates:
        if all(_executable(folder / name) for name in PG_PROGRAMS):
            return folder
    raise SetupError(
        "The PostgreSQL server binaries (initdb, postgres) were not found.",
        checked=["HARNESS_PG_BINDIR (unset)", *checked],
        fix=_remedy("HARNESS_PG_BINDIR"),
    )


def find_pgbouncer(pgbouncer: Path | None) -> Path:
    """The ``pgbouncer`` executable."""
    if pgbouncer is not None:
        if not _executable(pgbouncer):
            raise SetupError(
                f"HARNESS_PGBOUNCER={pgbouncer} is not an executable pgbouncer binary.",
                checked=[str(pgbouncer)],
                fix=["point HARNESS_PGBOUNCER at the pgbouncer binary (on Debian: /usr/sbin/pgbouncer)",
                     "or unset HARNESS_PGBOUNCER to search PATH and /usr/sbin"],
            )
        return pgbouncer
    on_path = shutil.which("pgbouncer")
    if on_path:
        return Path(on_path)
    if _executable(Path("/usr/sbin/pgbouncer")):
        return Path("/usr/sbin/pgbouncer")
    raise SetupError(
        "The pgbouncer binary was not found.",
        checked=["HARNESS_PGBOUNCER (unset)", "PATH", "/usr/sbin/pgbouncer"],
        fix=_remedy("HARNESS_PGBOUNCER"),
    )


def find_binaries(pg_bindir: Path | None, pgbouncer: Path | None) -> Binaries:
    folder = find_pg_bindir(pg_bindir)
    return Binaries(initdb=folder / "initdb", postgres=folder / "postgres",
                    pgbouncer=find_pgbouncer(pgbouncer))


def install_debian_packages() -> None:
    """Install Debian's postgresql and pgbouncer (root with apt-get only).

    The packages' own services are not wanted: the harness starts its own
    throwaway servers, so any service the packages started is stopped again.
    """
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SetupError(
            "PostgreSQL or PgBouncer is missing and cannot be installed automatically "
            "(that needs root and apt-get).",
            fix=_remedy("HARNESS_PG_BINDIR / HARNESS_PGBOUNCER"),
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES],
                   check=True, env=env)
    for service in DEBIAN_PACKAGES:
        subprocess.run(["service", service, "stop"], check=False, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ensure_binaries(pg_bindir: Path | None, pgbouncer: Path | None, *, install: bool) -> Binaries:
    """Find the binaries; when asked, install Debian's packages if they are missing."""
    try:
        return find_binaries(pg_bindir, pgbouncer)
    except SetupError:
        if not install or pg_bindir is not None or pgbouncer is not None:
            raise
    install_debian_packages()
    return find_binaries(pg_bindir, pgbouncer)
