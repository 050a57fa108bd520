"""A real Jupyter Notebook image for the few tests where a real notebook server matters.

Built once per machine from Debian's own packages (``debootstrap --variant=minbase bookworm``,
then ``python3-notebook``; no container registry needed, see ../shared/ENGINE.md §2b) and
reused while ``docker image inspect`` finds it. Unlike the recipe there, its CMD does *not*
pass ``--NotebookApp.token=``: the server takes its token from ``JUPYTER_TOKEN`` (Notebook 6.4
reads it from the environment) and makes up a random one when that is unset, as the
jupyter/docker-stacks images do.

Two test runs building at once (two sessions on one machine) take turns on a lock file; the
second finds the image the first made.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

JUPYTER_IMAGE = "swarm-manager-test/jupyter:1"
JUPYTER_PORT = 8888
SUITE = "bookworm"
PACKAGES = ("python3-notebook", "python3-ipykernel", "jupyter-notebook")
CMD = ["jupyter", "notebook", "--ip=0.0.0.0", f"--port={JUPYTER_PORT}", "--no-browser", "--allow-root"]
LOCK = Path("/tmp/swarm-manager-jupyter-image.lock")
BUILD_TIMEOUT = 900  # seconds for the whole build; about 2-3 minutes on the test machines


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({proc.returncode}):\n{tail}")


def _present(client: docker.DockerClient) -> bool:
    try:
        client.images.get(JUPYTER_IMAGE)
    except docker.errors.ImageNotFound:
        return False
    return True


@contextlib.contextmanager
def _proc_mounted(root: Path) -> Iterator[None]:
    proc = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)], 30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(proc)], capture_output=True, timeout=30, check=False)


def build_jupyter_image(client: docker.DockerClient) -> str:
    """Make :data:`JUPYTER_IMAGE` unless the engine has it; return its reference."""
    if _present(client):
        return JUPYTER_IMAGE
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (Debian package debootstrap; `make test` installs it)")
    if os.geteuid() != 0:
        raise RuntimeError("building the Jupyter test image needs root (debootstrap, chroot, mount)")
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _present(client):  # another run built it while we waited
            return JUPYTER_IMAGE
        began = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="smjupyter-", dir="/var/tmp"))
        root = work / "root"
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        try:
            _run(["debootstrap", "--variant=minbase", SUITE, str(root)], BUILD_TIMEOUT, env)
            with _proc_mounted(root):
                install = (
                    "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                    + " ".join(PACKAGES)
                    + " && apt-get clean && rm -rf /var/lib/apt/lists/*"
                )
                _run(["chroot", str(root), "bash", "-c", install], BUILD_TIMEOUT, env)
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            try:
                _run_import(tar)
            finally:
                if tar.stdout:
                    tar.stdout.close()
                tar.wait(60)
        finally:
            # Never rmtree across a mount that is still there.
            with contextlib.suppress(OSError):
                if not os.path.ismount(root / "proc"):
                    shutil.rmtree(work, ignore_errors=True)
        print(f"built {JUPYTER_IMAGE} in {time.monotonic() - began:.0f}s")
    return JUPYTER_IMAGE


def _run_import(tar: subprocess.Popen[bytes]) -> None:
    changes = [
        f"CMD {json.dumps(CMD)}",
        f"EXPOSE {JUPYTER_PORT}",
        "ENV HOME=/root",
    ]
    args = ["docker", "-H", "unix:///var/run/docker.sock", "import"]
    for change in changes:
        args += ["--change", change]
    args += ["-", JUPYTER_IMAGE]
    proc = subprocess.run(args, stdin=tar.stdout, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"docker import of {JUPYTER_IMAGE} failed: {proc.stderr.strip()}")


@pytest.fixture(scope="session")
def jupyter_image(docker_client: docker.DockerClient) -> str:
    """The real Jupyter Notebook image (built on first use, about 2-3 minutes)."""
    try:
        return build_jupyter_image(docker_client)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not build the Jupyter test image: {exc}", pytrace=False)
