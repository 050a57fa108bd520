"""A real mutual-TLS Docker engine endpoint for tests: a second dockerd in its own network namespace.

What the ``tls_engine`` fixture builds (and always tears down):

- certificates made with ``openssl``: a CA, a server certificate for the engine's address
  (SAN IP, serverAuth) and a client certificate (clientAuth), laid out as the docker CLI
  expects (``ca.pem``, ``cert.pem``, ``key.pem`` in one folder); plus folders whose
  ``ca.pem`` comes from a second, unrelated CA ("wrong CA") and whose client certificate
  is signed by that unrelated CA ("untrusted client"); and, signed by the engine's own CA
  but expired in 2020, a client certificate folder and a server certificate
  (``certs["expired_client"]``, ``certs["expired_server_cert"]``/``["expired_server_key"]``);
- a network namespace ``smtls<hex>`` joined to the host by a veth pair in a random
  ``10.78.<n>.0/24`` (host side ``.1``, namespace side ``.2``);
- ``dockerd`` started with ``nsenter --net`` inside that namespace, with its own data-root,
  exec-root and unix socket under ``/tmp/smtls-<hex>/`` and a ``--tlsverify`` TCP listener
  on ``<namespace address>:2376``. (``ip netns exec`` remounts /sys and dockerd then fails,
  and a second dockerd in the host's namespace would fight the first over ``docker0``.)
- the busybox test image, copied from the main engine with ``docker save | docker load``.

Leftovers of a run that died without its teardown (same ``smtls`` prefix, owner process
gone) are removed first. Runs that are still alive are left alone: each writes an
``owner`` file with its pid and process start time before it creates anything.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import docker.models.containers
import pytest

from tests.support import image_ref, wait_for

PREFIX = "smtls"
TMP = Path("/tmp")
TLS_PORT = 2376
CLOSED_PORT = 2399  # nothing listens here in the namespace: "engine unreachable"
REQUIRED_TOOLS = ("ip", "nsenter", "openssl", "dockerd", "docker", "umount")
MAIN_ENGINE = "unix:///var/run/docker.sock"


@dataclass
class TlsEngine:
    """Handles to the namespace engine that tests use."""

    name: str  # namespace name, e.g. smtls1a2b3c
    base: Path  # /tmp/smtls-1a2b3c: data-root, exec-root, socket, pidfile, log
    host_ip: str  # host end of the veth
    engine_ip: str  # namespace end of the veth, where dockerd's TLS port listens
    good_certs: Path  # ca.pem (the engine's CA), cert.pem/key.pem (a client cert it trusts)
    wrong_ca_certs: Path  # ca.pem from an unrelated CA, the same valid client cert
    untrusted_client_certs: Path  # the engine's CA, but a client cert signed by the unrelated CA
    client: docker.DockerClient  # plain client on the namespace engine's unix socket
    image: str  # the test image, loaded into the namespace engine
    certs: dict[str, Path]  # everything make_certificates made (the server's too, for restarts)

    def stop_engine(self) -> None:
        """Stop the namespace dockerd (an engine outage); its containers stop with it."""
        pid = int((self.base / "pid").read_text().strip())
        _signal([pid], signal.SIGTERM)
        left = _wait_gone([pid], 30)
        _signal(left, signal.SIGKILL)
        _wait_gone(left, 10)

    def start_engine(self) -> None:
        """Start it again on the same data root, address and certificates."""
        proc = _start_dockerd(self.name, self.base, self.engine_ip, self.certs)
        self.client = _wait_engine(proc, self.base, self.engine_ip)

    @property
    def socket_url(self) -> str:
        return f"unix://{self.base}/docker.sock"

    @property
    def tls_host(self) -> str:
        return f"tcp://{self.engine_ip}:{TLS_PORT}"

    @property
    def closed_host(self) -> str:
        return f"tcp://{self.engine_ip}:{CLOSED_PORT}"

    @property
    def log(self) -> Path:
        return self.base / "dockerd.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def containers(self, instance: str | None = None) -> list[docker.models.containers.Container]:
        filters = {"label": f"swarm-manager.instance={instance}"} if instance else {}
        return self.client.containers.list(all=True, filters=filters)


# -- small helpers ---------------------------------------------------------------------------
def _run(
    *args: str, check: bool = True, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _require_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if missing:
        pytest.fail(
            f"the TLS engine tests need {', '.join(missing)} on PATH (Debian: iproute2, util-linux, openssl, "
            "docker.io; `make test` installs them)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the TLS engine tests create a network namespace and a dockerd: run them as root", pytrace=False)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(base: Path) -> bool:
    try:
        pid_text, started = (base / "owner").read_text().split()
        return _start_time(int(pid_text)) == started
    except (OSError, ValueError):
        return False


def _claim(base: Path) -> None:
    base.mkdir(mode=0o700)
    (base / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")


def _pids_using(base: Path, netns: str | None = None) -> list[int]:
    """Processes whose command line names ``base`` (our dockerd, its containerd and shims), and
    with ``netns`` also every process inside that network namespace (e.g. docker-proxy)."""
    needle = str(base).encode()
    ns_inode = None
    if netns:
        with contextlib.suppress(OSError):
            ns_inode = os.stat(f"/var/run/netns/{netns}").st_ino
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            in_ns = ns_inode is not None and os.stat(entry / "ns" / "net").st_ino == ns_inode
        except OSError:
            continue
        if in_ns or any(arg == needle or arg.startswith(needle + b"/") for arg in cmdline.split(b"\0")):
            out.append(int(entry.name))
    return out


def _container_ids(base: Path) -> set[str]:
    try:
        return {d.name for d in (base / "data" / "containers").iterdir() if re.fullmatch(r"[0-9a-f]{64}", d.name)}
    except OSError:
        return set()


def _container_pids(ids: set[str]) -> list[int]:
    """Processes of our engine's containers, by their container id in /proc/<pid>/cgroup."""
    if not ids:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(f"/{cid}" in cgroups for cid in ids):
            out.append(int(entry.name))
    return out


def _remove_container_cgroups(ids: set[str]) -> None:
    """A dockerd that was killed leaves its containers' (empty) cgroups behind."""
    for cid in ids:
        for path in Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"):
            with contextlib.suppress(OSError):
                path.rmdir()


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    return alive


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _unmount_under(base: Path) -> None:
    prefix = str(base) + "/"
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        _run("umount", "-l", point, check=False)


def _links() -> list[str]:
    out = _run("ip", "-o", "link", "show").stdout
    return [m.group(1) for m in re.finditer(r"^\d+:\s+([^:@\s]+)", out, re.M)]


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def _stop_dockerd(base: Path, netns: str, pid: int | None) -> None:
    """SIGTERM the dockerd (pidfile first), wait, SIGKILL; then anything else still using ``base``."""
    pids = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((base / "pid").read_text().strip()))
    if pid:
        pids.add(pid)
    ours = _pids_using(base)
    targets = [p for p in pids if p in ours]  # only a process that really is our dockerd
    _signal(targets, signal.SIGTERM)
    left = _wait_gone(targets, 30)
    _signal(left, signal.SIGKILL)
    _wait_gone(left, 10)
    # A dockerd that was killed leaves its containers, containerd, shims and proxies behind.
    ids = _container_ids(base)
    procs = _container_pids(ids)
    _signal(procs, signal.SIGKILL)
    _wait_gone(procs, 10)
    _remove_container_cgroups(ids)
    rest = _pids_using(base, netns)
    _signal(rest, signal.SIGTERM)
    left = _wait_gone(rest, 10)
    _signal(left, signal.SIGKILL)
    _wait_gone(left, 10)


def _destroy(tag: str, base: Path, pid: int | None = None) -> None:
    """Everything one run made, in reverse: dockerd and its children, mounts, namespace, veth, files."""
    name = f"{PREFIX}{tag}"
    _stop_dockerd(base, name, pid)
    if base.exists():
        _unmount_under(base)
    if name in _namespaces():
        _run("ip", "netns", "del", name, check=False)
    for link in _links():
        if link in (f"{name}h", f"{name}n"):
            _run("ip", "link", "del", link, check=False)
    if base.exists():
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def cleanup_leftovers() -> list[str]:
    """Remove what earlier runs that died left behind; never touch a run whose owner still lives."""
    tags: set[str] = set()
    for ns in _namespaces():
        if ns.startswith(PREFIX):
            tags.add(ns[len(PREFIX) :])
    for link in _links():
        if link.startswith(PREFIX) and link[-1:] in ("h", "n"):
            tags.add(link[len(PREFIX) : -1])
    for path in TMP.glob(f"{PREFIX}-*"):
        tags.add(path.name[len(PREFIX) + 1 :])
    removed = []
    for tag in sorted(tags):
        if not re.fullmatch(r"[0-9a-f]{6}", tag):
            continue
        base = TMP / f"{PREFIX}-{tag}"
        if _owner_alive(base):
            continue
        if base.exists() and not (base / "owner").exists() and time.time() - base.stat().st_mtime < 60:
            continue  # another run that is just starting (it writes its owner file right away)
        _destroy(tag, base)
        removed.append(tag)
    return removed


# -- certificates ----------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    _run("openssl", *args, cwd=cwd)


EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        *["req", "-x509", *EC_KEY, "-days", "2", "-subj", f"/CN=swarm-manager test {name}"],
        *["-keyout", f"{name}-key.pem", "-out", f"{name}.pem"],
        *["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        cwd=d,
    )


def _make_leaf(d: Path, name: str, ca: str, cn: str, extensions: str) -> None:
    _openssl("req", "-new", *EC_KEY, "-subj", f"/CN={cn}", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    serial = str(int.from_bytes(secrets.token_bytes(8), "big"))
    _openssl(
        *["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem"],
        *["-set_serial", serial, "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem"],
        cwd=d,
    )


#: Validity of the expired certificates: two days in 2020 (``openssl x509`` cannot date a
#: certificate in the past; ``openssl ca`` can, with -startdate/-enddate).
EXPIRED_DATES = ("20200101000000Z", "20200102000000Z")


def _make_expired_leaf(d: Path, name: str, ca: str, cn: str, extensions: str) -> None:
    """A certificate signed by ``ca`` that expired in 2020 (a minimal ``openssl ca`` setup)."""
    _openssl("req", "-new", *EC_KEY, "-subj", f"/CN={cn}", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    ca_dir = d / f"{name}-ca"
    ca_dir.mkdir()
    (ca_dir / "index.txt").write_text("")
    (ca_dir / "serial").write_text(secrets.token_hex(8) + "\n")
    (ca_dir / "ca.cnf").write_text(
        "[ca]\ndefault_ca = ca_default\n"
        f"[ca_default]\ndatabase = {ca_dir}/index.txt\nnew_certs_dir = {ca_dir}\nserial = {ca_dir}/serial\n"
        "default_md = sha256\npolicy = policy_any\nunique_subject = no\n"
        "[policy_any]\ncommonName = supplied\n"
    )
    _openssl(
        *["ca", "-batch", "-notext", "-config", str(ca_dir / "ca.cnf")],
        *["-cert", f"{ca}.pem", "-keyfile", f"{ca}-key.pem"],
        *["-in", f"{name}.csr", "-out", f"{name}-cert.pem", "-extfile", f"{name}.ext"],
        *["-startdate", EXPIRED_DATES[0], "-enddate", EXPIRED_DATES[1]],
        cwd=d,
    )


def _client_folder(folder: Path, ca: Path, cert: Path, key: Path) -> Path:
    folder.mkdir(mode=0o700)
    shutil.copy(ca, folder / "ca.pem")
    shutil.copy(cert, folder / "cert.pem")
    shutil.copy(key, folder / "key.pem")
    (folder / "key.pem").chmod(0o600)
    return folder


def make_certificates(d: Path, engine_ip: str) -> dict[str, Path]:
    """CA + server cert for ``engine_ip`` + client cert; an unrelated CA; the three client folders."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    server_ext = f"subjectAltName=IP:{engine_ip}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
    _make_leaf(d, "server", "ca", engine_ip, server_ext)
    client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    _make_leaf(d, "client", "ca", "swarm-manager-tests", client_ext)
    _make_leaf(d, "stranger", "other-ca", "swarm-manager-stranger", client_ext)
    # Signed by the engine's own CA, but expired: the engine must refuse the client, and the
    # client an engine that presents the server one.
    _make_expired_leaf(d, "expired-client", "ca", "swarm-manager-expired", client_ext)
    _make_expired_leaf(d, "expired-server", "ca", engine_ip, server_ext)
    for key in d.glob("*-key.pem"):
        key.chmod(0o600)
    return {
        "ca": d / "ca.pem",
        "server_cert": d / "server-cert.pem",
        "server_key": d / "server-key.pem",
        "good": _client_folder(d / "client", d / "ca.pem", d / "client-cert.pem", d / "client-key.pem"),
        "wrong_ca": _client_folder(d / "wrong-ca", d / "other-ca.pem", d / "client-cert.pem", d / "client-key.pem"),
        "untrusted_client": _client_folder(
            d / "untrusted-client", d / "ca.pem", d / "stranger-cert.pem", d / "stranger-key.pem"
        ),
        "expired_client": _client_folder(
            d / "expired-client", d / "ca.pem", d / "expired-client-cert.pem", d / "expired-client-key.pem"
        ),
        "expired_server_cert": d / "expired-server-cert.pem",
        "expired_server_key": d / "expired-server-key.pem",
    }


# -- network ---------------------------------------------------------------------------------
def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.78.<n>.0/24 that no address or route on the host overlaps."""
    taken = []
    for line in _run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            taken.append(ipaddress.ip_interface(m.group(1)).network)
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "throw"):
            word = line.split()[1]
        if word == "default":
            continue
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    choices = list(range(1, 255))
    secrets.SystemRandom().shuffle(choices)
    for n in choices:
        net = ipaddress.ip_network(f"10.78.{n}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /24 in 10.78.0.0/16 for the test namespace")


def _make_namespace(name: str, net: ipaddress.IPv4Network) -> tuple[str, str]:
    host_ip, engine_ip = str(net[1]), str(net[2])
    host_if, ns_if = f"{name}h", f"{name}n"
    _run("ip", "netns", "add", name)
    _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    _run("ip", "link", "set", ns_if, "netns", name)
    _run("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", host_if)
    _run("ip", "link", "set", host_if, "up")
    _run("ip", "-n", name, "addr", "add", f"{engine_ip}/{net.prefixlen}", "dev", ns_if)
    _run("ip", "-n", name, "link", "set", ns_if, "up")
    _run("ip", "-n", name, "link", "set", "lo", "up")
    return host_ip, engine_ip


# -- the engine ------------------------------------------------------------------------------
def _engine_env() -> dict[str, str]:
    """Our environment minus settings that would point docker/dockerd elsewhere."""
    drop = {"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "DOCKER_CONFIG"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _start_dockerd(name: str, base: Path, engine_ip: str, certs: dict[str, Path]) -> subprocess.Popen[bytes]:
    (base / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json: nothing of the main engine's
    log = (base / "dockerd.log").open("ab")
    try:
        return subprocess.Popen(
            [
                *["nsenter", f"--net=/var/run/netns/{name}", "dockerd", "--config-file", str(base / "daemon.json")],
                *["--data-root", str(base / "data"), "--exec-root", str(base / "exec"), "--pidfile", str(base / "pid")],
                *["-H", f"unix://{base}/docker.sock", "-H", f"tcp://{engine_ip}:{TLS_PORT}", "--tlsverify"],
                *["--tlscacert", str(certs["ca"]), "--tlscert", str(certs["server_cert"])],
                *["--tlskey", str(certs["server_key"])],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_engine_env(),
            start_new_session=True,  # a Ctrl-C of pytest reaches the teardown, not dockerd directly
        )
    finally:
        log.close()


def _pings(path: Path) -> bool:
    """GET /_ping over the unix socket by hand (docker-py leaks the socket of a failed connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(path))
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        status_line = sock.recv(64).split(b"\r\n", 1)[0]
        return status_line.split()[1:2] == [b"200"]


def _wait_engine(proc: subprocess.Popen[bytes], base: Path, engine_ip: str) -> docker.DockerClient:
    path = base / "docker.sock"

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dockerd exited with {proc.returncode}")
        return _pings(path)

    def tls_port_open() -> bool:
        with socket.create_connection((engine_ip, TLS_PORT), timeout=1):
            return True

    wait_for(answers, 60, f"the namespace dockerd on unix://{path}", 0.2)
    wait_for(tls_port_open, 30, f"the namespace dockerd's TLS port {engine_ip}:{TLS_PORT}", 0.2)
    return docker.DockerClient(base_url=f"unix://{path}", timeout=60)


def _load_image(base: Path, ref: str) -> None:
    env = {**_engine_env(), "DOCKER_CONFIG": str(base / "cli")}
    save = subprocess.Popen(
        ["docker", "-H", MAIN_ENGINE, "save", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        load = subprocess.run(
            ["docker", "-H", f"unix://{base}/docker.sock", "load"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        assert save.stdout is not None
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
        if save.stderr:
            save.stderr.close()
        save.wait(60)
    if save.returncode != 0 or load.returncode != 0:
        raise RuntimeError(f"copying {ref} to the namespace engine failed: {save_err.strip()} {load.stderr.strip()}")


@contextlib.contextmanager
def running_tls_engine(images: dict[str, str], certdir: Path) -> Iterator[TlsEngine]:
    """A second, mutual-TLS-only-over-TCP dockerd in its own network namespace (see the module doc).

    Torn down on exit whatever happened; also usable outside pytest (bench/faults.py).
    """
    _require_tools()
    cleanup_leftovers()
    tag = secrets.token_hex(3)
    name = f"{PREFIX}{tag}"
    base = TMP / f"{PREFIX}-{tag}"  # short: unix socket paths are limited to ~108 bytes
    _claim(base)  # before anything else exists, so a concurrent run's leftover sweep leaves ours alone
    proc: subprocess.Popen[bytes] | None = None
    client: docker.DockerClient | None = None
    try:
        net = _free_subnet()
        certs = make_certificates(certdir, str(net[2]))
        host_ip, engine_ip = _make_namespace(name, net)
        proc = _start_dockerd(name, base, engine_ip, certs)
        try:
            client = _wait_engine(proc, base, engine_ip)
        except AssertionError as exc:
            log = (base / "dockerd.log").read_text(errors="replace").splitlines()[-30:]
            raise AssertionError(f"{exc}\n--- dockerd log ---\n" + "\n".join(log)) from None
        ref = images["httpd"]
        assert ref == image_ref("httpd")
        _load_image(base, ref)
        yield TlsEngine(
            name=name,
            base=base,
            host_ip=host_ip,
            engine_ip=engine_ip,
            good_certs=certs["good"],
            wrong_ca_certs=certs["wrong_ca"],
            untrusted_client_certs=certs["untrusted_client"],
            client=client,
            image=ref,
            certs=certs,
        )
    finally:
        try:
            if client is not None:
                with contextlib.suppress(docker.errors.DockerException, OSError):
                    for container in client.containers.list(all=True):
                        with contextlib.suppress(docker.errors.DockerException):
                            container.remove(force=True)
                client.close()
        finally:
            _destroy(tag, base, proc.pid if proc else None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


@pytest.fixture(scope="session")
def tls_engine(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEngine]:
    with running_tls_engine(images, tmp_path_factory.mktemp("tls-certs")) as engine:
        yield engine
