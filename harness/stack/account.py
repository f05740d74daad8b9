"""The unprivileged account the servers run as when the harness runs as root.

``initdb`` and ``postgres`` refuse to run as root, and PgBouncer refuses too.
As root the servers run as the ``postgres`` account when it exists, otherwise
as an account the harness creates (``harness-pg``).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from harness.errors import SetupError

PREFERRED = "postgres"
CREATED = "harness-pg"


@dataclasses.dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    def own(self, path: Path) -> None:
        """Give ``path`` (recursively) to this account, when that is needed."""
        if os.geteuid() != 0 or self.uid == 0:
            return
        if not path.is_dir():
            os.chown(path, self.uid, self.gid, follow_symlinks=False)
            return
        for folder, dirs, files in os.walk(path):
            os.chown(folder, self.uid, self.gid)
            for name in files:
                os.chown(os.path.join(folder, name), self.uid, self.gid, follow_symlinks=False)

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def server_account(create: bool = True) -> Account:
    """The account that runs initdb, postgres and pgbouncer."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    for name in (PREFERRED, CREATED):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    if not create or shutil.which("useradd") is None:
        raise SetupError(
            "Running as root, but there is no unprivileged account to run PostgreSQL "
            "and PgBouncer (they refuse to run as root).",
            checked=[f"account {PREFERRED!r}", f"account {CREATED!r}"],
            fix=[f"create one: useradd --system --no-create-home {CREATED}",
                 "or run the harness as an ordinary user"],
        )
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", CREATED],
                   check=True)
    entry = pwd.getpwnam(CREATED)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
