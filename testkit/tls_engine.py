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

The namespace, dockerd, ownership and cleanup helpers are testkit/netns.py's, shared with the
Swarm worker of tests/swarm_cluster.py.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import docker.models.containers
import pytest

from testkit import netns
from testkit.support import image_ref

PREFIX = "smtls"
SUBNETS = "10.78"  # 10.79.x is the Swarm worker's (tests/swarm_cluster.py)
TLS_PORT = 2376
CLOSED_PORT = 2399  # nothing listens here in the namespace: "engine unreachable"
REQUIRED_TOOLS = ("ip", "nsenter", "openssl", "dockerd", "docker", "umount")


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
        netns.terminate([int((self.base / "pid").read_text().strip())], 30)

    def start_engine(self, *args: str) -> None:
        """Start it again on the same data root, address and certificates (and ``args``, e.g.
        ``--live-restore``; without them, as it was first started)."""
        proc = _start_dockerd(self.name, self.base, self.engine_ip, self.certs, args)
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
        return netns.log_tail(self.base, lines)

    def containers(self, instance: str | None = None) -> list[docker.models.containers.Container]:
        filters = {"label": f"swarm-manager.instance={instance}"} if instance else {}
        return self.client.containers.list(all=True, filters=filters)


# -- small helpers ---------------------------------------------------------------------------
def _require_tools() -> None:
    netns.require_tools(REQUIRED_TOOLS, "the TLS engine tests", "iproute2, util-linux, openssl, docker.io")


def _destroy(tag: str, base: Path, pid: int | None = None) -> None:
    """Everything one run made, in reverse: dockerd and its children, mounts, namespace, veth, files."""
    name = f"{PREFIX}{tag}"
    netns.stop_dockerd(base, pid, netns=name)
    if base.exists():
        netns.unmount_under(base)
    netns.remove_namespace(name, base)


def cleanup_leftovers() -> list[str]:
    """Remove what earlier runs that died left behind; never touch a run whose owner still lives."""
    return netns.cleanup_leftovers(PREFIX, _destroy)


# -- certificates ----------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    netns.run("openssl", *args, cwd=cwd)


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


# -- the engine ------------------------------------------------------------------------------
def _start_dockerd(
    name: str, base: Path, engine_ip: str, certs: dict[str, Path], extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """The engine with a ``--tlsverify`` TCP listener on ``engine_ip`` besides its unix socket."""
    tls = ["-H", f"tcp://{engine_ip}:{TLS_PORT}", "--tlsverify", "--tlscacert", str(certs["ca"])]
    tls += ["--tlscert", str(certs["server_cert"]), "--tlskey", str(certs["server_key"])]
    return netns.start_dockerd(name, base, [*tls, *extra])


def _wait_engine(proc: subprocess.Popen[bytes], base: Path, engine_ip: str) -> docker.DockerClient:
    return netns.wait_dockerd(proc, base, (engine_ip, TLS_PORT))


@contextlib.contextmanager
def running_tls_engine(images: dict[str, str], certdir: Path) -> Iterator[TlsEngine]:
    """A second, mutual-TLS-only-over-TCP dockerd in its own network namespace (see the module doc).

    Torn down on exit whatever happened; also usable outside pytest (bench/faults.py).
    """
    _require_tools()
    cleanup_leftovers()
    tag = secrets.token_hex(3)
    name = f"{PREFIX}{tag}"
    base = netns.TMP / f"{PREFIX}-{tag}"  # short: unix socket paths are limited to ~108 bytes
    netns.claim(base)  # before anything else exists, so a concurrent run's leftover sweep leaves ours alone
    proc: subprocess.Popen[bytes] | None = None
    client: docker.DockerClient | None = None
    try:
        net = netns.free_subnet(SUBNETS)
        certs = make_certificates(certdir, str(net[2]))
        host_ip, engine_ip = netns.make_namespace(name, net)
        proc = _start_dockerd(name, base, engine_ip, certs)
        try:
            client = _wait_engine(proc, base, engine_ip)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- dockerd log ---\n{netns.log_tail(base, 30)}") from None
        ref = images["httpd"]
        assert ref == image_ref("httpd")
        netns.load_image(f"unix://{base}/docker.sock", ref, base / "cli")
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
            netns.reap(proc)


@pytest.fixture(scope="session")
def tls_engine(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEngine]:
    with running_tls_engine(images, tmp_path_factory.mktemp("tls-certs")) as engine:
        yield engine
