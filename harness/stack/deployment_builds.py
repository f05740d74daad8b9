"""Where a deployment's binaries (native) and images (docker) are, once scripts/build-deployment built them.

``scripts/build-deployment SUITE`` debootstraps a suite's root filesystem once into the deployments
folder. The native backend runs that root's own binaries on the host (they load the root's libraries, not
the host's); the docker backend runs images imported from the same root, found by their
``tenant-harness.deployment`` label. The host's own packages serve a deployment of their versions
(bookworm on a bookworm host).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

from harness.deployments import BUILD_COMMAND, POOLERS, Deployment, deployment
from harness.errors import SetupError

#: where scripts/build-deployment keeps each suite's root (readable by the server account, unlike /root)
DEFAULT_DIR = Path("/var/cache/tenant-harness/deployments")
MANIFEST = "deployment.json"
IMAGE_LABEL = "tenant-harness.deployment"
#: the build of scripts/build-deployment an image comes from: the images of one build share it
IMAGE_VERSION_LABEL = "tenant-harness.image-version"


def deployments_dir() -> Path:
    return Path(os.environ.get("HARNESS_DEPLOYMENTS_DIR") or DEFAULT_DIR)


def manifest(name: str) -> dict | None:
    """What scripts/build-deployment recorded of a suite's root, or None when it was not built."""
    try:
        return json.loads((deployments_dir() / name / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


@functools.cache  # two --version runs; the host's packages do not change under a run
def host_offers(wanted: Deployment) -> tuple[Path, Path] | None:
    """The host's own packages, when they are this deployment's versions (bookworm on a bookworm host)."""
    from harness.stack.binaries import find_binaries, find_pg_bindir, postgres_version as version_of

    try:
        if wanted.pooler != "pgbouncer":
            bindir = find_pg_bindir(None)
            pooler = host_pooler(wanted)
            postgres_version = version_of(bindir)
        else:
            binaries = find_binaries(None, None)
            bindir, pooler, postgres_version = binaries.postgres.parent, binaries.pgbouncer, binaries.postgres_version()
            if binaries.pgbouncer_version() != wanted.pooler_version:
                return None
    except SetupError:
        return None
    if pooler is None or postgres_version.split(".")[0] != wanted.postgres:
        return None
    return bindir, pooler


def host_pooler(wanted: Deployment) -> Path | None:
    """The host's own binary of the deployment's pooler (Debian's pgpool2 on a bookworm host), when it is the
    deployment's version."""
    from harness.stack.binaries import pooler_version

    found = shutil.which(POOLER_BINARIES[wanted.pooler], path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None or pooler_version(Path(found)) != wanted.pooler_version:
        return None
    return Path(found)


#: the program of each pooler
POOLER_BINARIES = {"pgbouncer": "pgbouncer", "pgpool": "pgpool", "pgagroal": "pgagroal"}


def native_binaries(name: str | Deployment) -> tuple[Path, Path]:
    """(bindir of initdb and postgres, the pooler's binary) of a deployment on this host (a built-in's name, or
    a deployment of a pooler whose part is tested before its deployment is built in)."""
    wanted = name if isinstance(name, Deployment) else deployment(name)
    host = host_offers(wanted)
    if host is not None:
        return host
    built = manifest(wanted.debian_suite)
    if built is None:
        raise SetupError(f"Deployment {wanted.describe} is not built on this host.",
                         checked=[str(deployments_dir() / wanted.debian_suite / MANIFEST) + " (missing)",
                                  f"the host's own postgresql and {POOLER_BINARIES[wanted.pooler]} packages (missing, or other versions)"],
                         fix=[wanted.build_hint(),
                              "or set HARNESS_DEPLOYMENTS_DIR to the folder you built deployments into"])
    if wanted.pooler not in built:
        raise SetupError(f"Deployment {wanted.describe}: the {wanted.debian_suite} root holds no {wanted.pooler}.",
                         checked=[str(deployments_dir() / wanted.debian_suite / MANIFEST) + f" (no {wanted.pooler})"],
                         fix=[wanted.build_hint()])
    bindir, pooler = Path(built["pg_bindir"]), Path(built[wanted.pooler])
    missing = [str(p) for p in (bindir / "initdb", bindir / "postgres", pooler) if not os.access(p, os.X_OK)]
    if missing:
        raise SetupError(f"Deployment {wanted.describe}: its root is incomplete.",
                         checked=[f"{p} (not an executable)" for p in missing],
                         fix=[f"build it again: scripts/build-deployment {wanted.debian_suite} --rebuild"])
    return bindir, pooler


#: the Debian package of each pooler: scripts/build-deployment names its image after it
#: (tenant-harness/pgpool2:bookworm-<version>)


def docker_images(client, name: str) -> tuple[str, str]:
    """(PostgreSQL image, pooler image) of a deployment: the newest images built with its suite's label; the
    pooler image is its pooler's (PgBouncer's, Pgpool-II's, pgagroal's), a commit of the same import as the
    PostgreSQL image (the same ``tenant-harness.image-version``), so that both come from one root."""
    wanted = deployment(name)
    suite, package = wanted.debian_suite, POOLERS[wanted.pooler].package
    with_package = "" if wanted.pooler == "pgbouncer" else f" --with {package}"
    build = (f"scripts/build-deployment {suite} --images{with_package} builds them from Debian's packages "
             "(make images builds every deployment's)")

    def newest(part: str, **labels: str):
        filters = [f"{IMAGE_LABEL}={suite}", *(f"{key}={value}" for key, value in labels.items())]
        found = client.images.list(filters={"label": filters, "reference": f"*/{part}:*"})
        tagged = sorted((image for image in found if image.tags), key=lambda image: image.attrs.get("Created", ""))
        return tagged[-1] if tagged else None

    postgres = newest("postgres")
    if postgres is None:
        raise SetupError(f"Deployment {wanted.describe}: no postgres image with label {IMAGE_LABEL}={suite}.",
                         checked=[f"docker images --filter label={IMAGE_LABEL}={suite}"], fix=[build])
    version = (postgres.attrs.get("Config") or {}).get("Labels", {}).get(IMAGE_VERSION_LABEL, "")
    pooler = newest(package, **{IMAGE_VERSION_LABEL: version}) if version else newest(package)
    if pooler is None:
        raise SetupError(f"Deployment {wanted.describe}: no {package} image beside {postgres.tags[0]}.",
                         checked=[f"docker images --filter label={IMAGE_LABEL}={suite} --filter "
                                  f"label={IMAGE_VERSION_LABEL}={version} --filter reference='*/{package}:*'"],
                         fix=[build])
    return postgres.tags[0], pooler.tags[0]
