"""The images of the deployments, without a Docker engine: which images scripts/build-images asks for, which
ones the docker backend picks, and the shell a Pgpool-II or pgagroal container runs its pooler under."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from harness.deployments import DEPLOYMENTS, POOLERS
from harness.errors import SetupError
from harness.stack import containers
from harness.stack.wait import wait_until
from harness.stack.deployment_builds import IMAGE_LABEL, IMAGE_VERSION_LABEL, docker_images

ROOT = Path(__file__).resolve().parents[1]


def test_every_pooler_has_the_debian_package_its_image_is_named_after():
    assert all(p.package for p in POOLERS.values())
    assert POOLERS["pgpool"].package == "pgpool2"


def test_make_images_builds_every_deployments_suite_with_the_packages_of_its_poolers(tmp_path):
    """`make images` runs scripts/build-images per suite; it asks scripts/build-deployment for every pooler of
    the suite's deployments (a stand-in build-deployment prints what it was asked)."""
    listed = re.search(r"^IMAGE_DEPLOYMENTS := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert listed is not None
    suites = listed.group(1).split()
    shutil.copy(ROOT / "scripts" / "build-images", tmp_path / "build-images")
    (tmp_path / "build-deployment").write_text('#!/bin/sh\necho "$@"\n')
    (tmp_path / "build-deployment").chmod(0o755)
    asked = {}
    for suite in suites:
        done = subprocess.run([tmp_path / "build-images"], capture_output=True, text=True, check=True,
                              env={**os.environ, "HARNESS_DEBIAN_SUITE": suite})
        asked[suite] = done.stdout.split()
    for wanted in DEPLOYMENTS.values():
        assert wanted.debian_suite in suites, f"make images does not build {wanted.name}'s suite"
        args = asked[wanted.debian_suite]
        assert args[:3] == [wanted.debian_suite, "--images", "--no-native"]
        if wanted.pooler != "pgbouncer":
            assert f"--with {POOLERS[wanted.pooler].package}" in " ".join(args), (wanted.name, args)


class FakeImage:
    def __init__(self, tag: str, created: str, labels: dict[str, str]):
        self.tags = [tag]
        self.attrs = {"Created": created, "Config": {"Labels": labels}}


class FakeImages:
    """``client.images.list`` over a few images, filtering by label and reference as the engine does."""

    def __init__(self, images: list[FakeImage]):
        self.images = images

    def list(self, filters):
        labels = filters["label"] if isinstance(filters["label"], list) else [filters["label"]]
        part = filters["reference"].split("/")[1].split(":")[0]
        return [image for image in self.images
                if image.tags[0].split("/")[1].split(":")[0] == part
                and all(image.attrs["Config"]["Labels"].get(k) == v for k, v in (x.split("=", 1) for x in labels))]


class FakeClient:
    def __init__(self, *images: FakeImage):
        self.images = FakeImages(list(images))


def built(suite: str, version: str, created: str, *parts: str) -> list[FakeImage]:
    labels = {IMAGE_LABEL: suite, IMAGE_VERSION_LABEL: version}
    return [FakeImage(f"tenant-harness/{part}:{suite}-{version}", created, labels) for part in parts]


def test_a_deployment_runs_its_poolers_image_from_the_same_build_as_its_postgres_image():
    client = FakeClient(*built("bookworm", "old", "2026-01-01", "postgres", "pgbouncer", "pgpool2"),
                        *built("bookworm", "new", "2026-02-01", "postgres", "pgbouncer", "pgpool2"),
                        *built("trixie", "new", "2026-02-01", "postgres", "pgbouncer", "pgagroal"))
    assert docker_images(client, "bookworm") == ("tenant-harness/postgres:bookworm-new",
                                                 "tenant-harness/pgbouncer:bookworm-new")
    assert docker_images(client, "bookworm-pgpool") == ("tenant-harness/postgres:bookworm-new",
                                                        "tenant-harness/pgpool2:bookworm-new")
    assert docker_images(client, "trixie-pgagroal") == ("tenant-harness/postgres:trixie-new",
                                                        "tenant-harness/pgagroal:trixie-new")


def test_a_build_without_the_poolers_package_is_a_clear_error_naming_the_build_that_adds_it():
    client = FakeClient(*built("bookworm", "old", "2026-01-01", "postgres", "pgbouncer", "pgpool2"),
                        *built("bookworm", "new", "2026-02-01", "postgres", "pgbouncer"))
    with pytest.raises(SetupError) as caught:
        docker_images(client, "bookworm-pgpool")
    message = str(caught.value)
    assert "no pgpool2 image beside tenant-harness/postgres:bookworm-new" in message
    assert "scripts/build-deployment bookworm --images --with pgpool2" in message
    with pytest.raises(SetupError, match="no postgres image with label tenant-harness.deployment=trixie"):
        docker_images(FakeClient(), "trixie-pgagroal")


# -- the shell a pooler container runs its pooler under ----------------------------------------------------------

def supervisor(tmp_path: Path, command: list[str]) -> tuple[subprocess.Popen, Path, Path]:
    pid_file, restart = tmp_path / "pooler.pid", tmp_path / "restart"
    script = containers._SUPERVISOR.format(title=command[0], prepare="echo prepared", signal="TERM",
                                           restart=restart, pid_file=pid_file, leftovers=tmp_path / "*.left",
                                           command=" ".join(command))
    (tmp_path / "start").write_text(script)
    shell = subprocess.Popen(["sh", tmp_path / "start"], stdout=subprocess.PIPE, text=True)
    return shell, pid_file, restart


def pooler_pid(pid_file: Path, other_than: int = 0) -> int:
    def new_pid() -> int:
        pid = int(pid_file.read_text())
        if pid == other_than:
            raise ValueError(f"still {other_than}")
        return pid

    return wait_until(new_pid, what=f"a pooler pid other than {other_than} in {pid_file}", timeout=5, interval=0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_the_pooler_restarts_in_place_and_a_stop_of_the_container_stops_it(tmp_path):
    (tmp_path / "old.left").write_text("a pid file the pooler would refuse to start over")
    shell, pid_file, restart = supervisor(tmp_path, ["sleep", "1000"])
    try:
        first = pooler_pid(pid_file)
        assert not (tmp_path / "old.left").exists()
        assert os.getpgid(first) == first  # a session of its own: the restart may SIGKILL it as a group
        done = subprocess.run(["sh", "-c", containers._RESTART.format(pid_file=pid_file, restart=restart,
                                                                      signal="TERM", kill_after=50, give_up=100)])
        assert done.returncode == 0 and not alive(first)
        second = pooler_pid(pid_file, other_than=first)
        assert alive(second) and shell.poll() is None
        shell.send_signal(signal.SIGTERM)  # docker stop
        assert shell.wait(5) == 0
        assert not alive(second)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


def test_a_pooler_that_exits_by_itself_ends_the_container_with_its_status(tmp_path):
    shell, _, _ = supervisor(tmp_path, ["sh", "-c", "'exit 3'"])
    assert shell.wait(5) == 3
    assert shell.stdout is not None and shell.stdout.read() == "prepared\n"


def test_a_pooler_that_ignores_its_stop_signal_is_killed_by_the_restart(tmp_path):
    shell, pid_file, restart = supervisor(tmp_path, ["sh", "-c", "'trap \"\" TERM; while :; do sleep 0.05; done'"])
    try:
        first = pooler_pid(pid_file)
        # killed after kill_after polls, long before it would give up (a run that waited for that times out)
        done = subprocess.run(["sh", "-c", containers._RESTART.format(pid_file=pid_file, restart=restart,
                                                                      signal="TERM", kill_after=20, give_up=300)],
                              timeout=10)
        assert done.returncode == 0 and not alive(first)
        assert pooler_pid(pid_file, other_than=first)
    finally:
        shell.kill()
        shell.wait()
        for leftover in subprocess.run(["pgrep", "-g", str(pooler_pid(pid_file))], capture_output=True,
                                       text=True).stdout.split():
            os.kill(int(leftover), signal.SIGKILL)
