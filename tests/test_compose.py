"""docker-compose.yml, stack.yml and the Dockerfiles, checked without building or starting anything.

The compose file is resolved by Debian's docker-compose 1.29.2 (``config``), so the checks see what
``docker-compose up --scale worker=N`` would run; stack.yml is read as YAML (anchors and merge keys
resolved, as ``docker stack deploy`` does). tests/test_compose_deploy.py and tests/test_stack_deploy.py
run both for real; these checks name the rule a change breaks in a second. A missing docker-compose
is a failure, never a skip.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings, documented_settings
from tests.deployed import SECRET_NAMES, docker_compose

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
STACK_FILE = ROOT / "stack.yml"
APP_SERVICES = ("api", "worker", "beat", "flower")
SERVICES = {"redis", "proxy", *APP_SERVICES}
#: docker-compose.yml's `sentinel` profile (docs/operations.md: Redis failover).
SENTINEL_SERVICES = {"redis-replica", "sentinel1", "sentinel2", "sentinel3"}
CERT_TARGET = "/certs"
PROFILES_TARGET = "/etc/swarm-manager/profiles"
REQUIRED = {"ENGINE_HOST": "tcp://engine.example.org:2376", "PUBLISH_IP": "10.0.0.5"}

#: Settings of shared/settings.py that the deployment files do not pass through, and why. A new
#: setting must be added to both files' x-settings or here.
NOT_PASSED = {
    "ADMIN_TOKEN": "a Docker secret (ADMIN_TOKEN_FILE)",
    "SECRET_KEY": "a Docker secret (SECRET_KEY_FILE)",
    "PROXY_AUTH_TOKEN": "a Docker secret (PROXY_AUTH_TOKEN_FILE)",
    "REGISTRY_AUTH": "a Docker secret (REGISTRY_AUTH_FILE), in the worker only",
    "AUTH": "always on: the API is published",
    "REDIS_PASSWORD": "the deployment runs its own Redis, on its own network, without a password",
    "REDIS_SENTINEL_PASSWORD": "the deployment's sentinels (compose's sentinel profile) have no password",
    "DOCKER_HOST": "wired: ENGINE_HOST, in the worker only",
    "DOCKER_TLS_VERIFY": "wired: always on, in the worker only",
    "DOCKER_CERT_PATH": "wired: the mounted certificates, in the worker only",
    "PROXY_API_URL": "wired: the deployment's own proxy",
    "PROXY_PUBLIC_URL": "wired: the deployment's own proxy",
}
#: Wired per file besides x-settings (compose requires PUBLISH_IP in the worker; the stack passes it).
NOT_PASSED_COMPOSE = {"PUBLISH_IP": "wired: required in the worker"}


def compose_env(tmp: Path, **env: str) -> dict[str, str]:
    """A clean environment (nothing from the developer's shell) with the required variables."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", **env}


def run_compose(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml ARGS``; an empty --env-file keeps a local .env out."""
    empty = tmp / "empty.env"
    empty.touch()
    cmd = [docker_compose(), "--env-file", str(empty), "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(cmd, cwd=ROOT, env=compose_env(tmp, **env), capture_output=True, text=True, timeout=120)


def resolved(tmp: Path, **env: str) -> dict[str, Any]:
    proc = run_compose(tmp, "config", **{**REQUIRED, "ENGINE_CERT_DIR": str(tmp / "certs"), **env})
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    config = yaml.safe_load(proc.stdout)
    assert isinstance(config, dict) and isinstance(config.get("services"), dict), config
    return config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return resolved(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    loaded = yaml.safe_load(STACK_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    services = config["services"]
    assert name in services, f"no service {name!r} (has {sorted(services)})"
    return dict(services[name])


def environment(svc: dict[str, Any]) -> dict[str, Any]:
    return dict(svc.get("environment") or {})


def mounts(svc: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only), from the short syntax `docker-compose config` prints."""
    out = {}
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            out[volume["target"]] = (str(volume.get("source")), bool(volume.get("read_only")))
        else:
            source, target, *mode = str(volume).split(":")
            out[target] = (source, "ro" in (mode[0].split(",") if mode else []))
    return out


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def settings_names() -> set[str]:
    return {name for name, _default, _doc in documented_settings()}


# -- docker-compose.yml -------------------------------------------------------------------------
def test_compose_refuses_to_start_without_its_engine(tmp_path: Path) -> None:
    for missing in REQUIRED:
        env = {k: v for k, v in REQUIRED.items() if k != missing}
        proc = run_compose(tmp_path, "config", "-q", **env)
        assert proc.returncode != 0 and f"set {missing}" in proc.stderr, (missing, proc.stderr[-500:])


def test_services_restart_and_wait_for_redis(config: dict[str, Any]) -> None:
    always = {name for name, svc in config["services"].items() if not svc.get("profiles")}
    assert always == SERVICES
    if "redis-replica" in config["services"]:  # docker-compose.yml only
        optional = {name for name, svc in config["services"].items() if svc.get("profiles") == ["sentinel"]}
        assert optional == SENTINEL_SERVICES
    for name in config["services"]:
        assert service(config, name).get("restart") == "unless-stopped", name
    for name in APP_SERVICES:
        svc = service(config, name)
        assert (svc.get("depends_on") or {}).get("redis", {}).get("condition") == "service_healthy", name
        assert environment(svc).get("REDIS_URL") == "redis://redis:6379/0", name


def test_worker_can_be_scaled(config: dict[str, Any]) -> None:
    worker = service(config, "worker")
    assert "container_name" not in worker, "a fixed container_name breaks `--scale worker=N`"
    assert not worker.get("ports"), "published ports break `--scale worker=N`"
    assert "hostname" not in worker, "a fixed hostname gives every replica the same Celery node name"


def test_redis_persists_append_only(config: dict[str, Any]) -> None:
    redis = service(config, "redis")
    args = command(redis)
    assert args[args.index("--appendonly") + 1] == "yes", args
    assert mounts(redis)["/data"][0] in config["volumes"], "/data must be a named volume"
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_engine_certificates_are_read_only_and_only_in_the_worker(config: dict[str, Any]) -> None:
    for name in SERVICES:
        svc = service(config, name)
        env = environment(svc)
        if name == "worker":
            assert mounts(svc)[CERT_TARGET][1], "the engine certificates must be mounted read-only"
            assert env["DOCKER_CERT_PATH"] == CERT_TARGET and env["DOCKER_TLS_VERIFY"] == "1"
            assert env["DOCKER_HOST"] == REQUIRED["ENGINE_HOST"] and env["PUBLISH_IP"] == REQUIRED["PUBLISH_IP"]
        else:
            assert CERT_TARGET not in mounts(svc), f"{name} must not see the engine certificates"
            assert not {"DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY"} & set(env), name


def test_secrets_are_files_only_where_needed(config: dict[str, Any]) -> None:
    wanted = {
        "api": {"admin_token", "secret_key"},
        "worker": {"proxy_auth_token", "registry_auth"},
        "flower": {"flower_basic_auth"},
        "proxy": {"proxy_auth_token"},
    }
    for name in SERVICES:
        svc = service(config, name)
        got = {s["source"] if isinstance(s, dict) else s for s in svc.get("secrets") or []}
        assert got == wanted.get(name, set()), (name, got)
        env = environment(svc)
        assert not {"ADMIN_TOKEN", "SECRET_KEY", "PROXY_AUTH_TOKEN", "FLOWER_BASIC_AUTH"} & set(env), name
        for key in ("ADMIN_TOKEN_FILE", "SECRET_KEY_FILE", "PROXY_AUTH_TOKEN_FILE", "FLOWER_BASIC_AUTH_FILE"):
            if key in env:
                assert str(env[key]).startswith("/run/secrets/"), (name, key, env[key])
    assert set(config["secrets"]) == set(SECRET_NAMES)


def test_ports_and_commands(config: dict[str, Any]) -> None:
    def published(name: str) -> dict[int, str]:
        """target -> host address, from `HOST_IP:PUBLISHED:TARGET/tcp`."""
        out = {}
        for port in service(config, name).get("ports") or []:
            host_ip, _published, target = str(port).split("/")[0].split(":")
            out[int(target)] = host_ip
        return out

    assert published("api") == {3000: "0.0.0.0"}
    assert published("flower") == {5555: "127.0.0.1"}, "Flower stays on loopback unless FLOWER_BIND says otherwise"
    assert published("proxy") == {8000: "0.0.0.0"}
    for name in ("redis", "worker", "beat"):
        assert not published(name), f"{name} must publish no port"
    image = service(config, "worker")["image"]
    assert service(config, "beat")["image"] == service(config, "flower")["image"] == image
    # Each process's command line is the swarm-manager command's (cli/servers.py), as `make run` runs it.
    assert command(service(config, "worker")) == ["python", "-m", "cli", "worker"]
    assert command(service(config, "beat"))[:4] == ["python", "-m", "cli", "beat"]
    assert command(service(config, "flower"))[:4] == ["python", "-m", "cli", "flower"]
    assert "command" not in service(config, "api"), "the api image's CMD is `swarm-manager serve`"


def test_profiles_reach_every_service_that_reads_the_settings(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    config = resolved(tmp_path, PROFILES_DIR=str(profiles), PROFILES_FILE=f"{PROFILES_TARGET}/p.yml")
    for name in APP_SERVICES:
        svc = service(config, name)
        assert mounts(svc)[PROFILES_TARGET] == (str(profiles), True), (name, mounts(svc))
        assert environment(svc)["PROFILES_FILE"] == f"{PROFILES_TARGET}/p.yml", name


# -- settings: passed through, defaults in one place ---------------------------------------------
@pytest.mark.parametrize("path", [COMPOSE_FILE, STACK_FILE], ids=["compose", "stack"])
def test_every_setting_passes_through_without_a_default(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    passed = raw["x-settings"]
    wired = {"REDIS_URL"}
    not_passed = {**NOT_PASSED, **(NOT_PASSED_COMPOSE if path == COMPOSE_FILE else {})}
    missing = settings_names() - set(passed) - set(not_passed)
    assert not missing, f"{path.name} passes {sorted(missing)} through to no process: add them to x-settings"
    unknown = set(passed) - settings_names()
    assert not unknown, f"{path.name} passes {sorted(unknown)}, which shared/settings.py does not read"
    valued = {k: v for k, v in passed.items() if v is not None and k not in wired}
    assert not valued, f"{path.name} gives {valued} a value: unset must stay unset (shared/settings.py's default)"
    text = path.read_text()
    for name in settings_names():
        assert not re.search(rf"\$\{{{name}:?-", text), f"{path.name} repeats a default for {name}"


def test_settings_reach_the_services_and_unset_ones_stay_unset(tmp_path: Path) -> None:
    config = resolved(tmp_path, DOMAIN="nb.example.org", MAX_AGE="3600")
    for name in APP_SERVICES:
        env = environment(service(config, name))
        assert env["DOMAIN"] == "nb.example.org" and env["MAX_AGE"] == "3600", name
        assert env["POOL"] is None, f"{name}: an unset setting must not reach the container (it would be empty)"
    # What the worker gets, with the certificates' folder as the host sees it, is a valid configuration.
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    for pem in ("ca.pem", "cert.pem", "key.pem"):
        (certs / pem).touch()
    (tmp_path / "proxy_auth_token").write_text("a-token-for-the-proxy-api\n")
    (tmp_path / "registry_auth").write_text('{"auths": {}}\n')  # as scripts/make-secrets.sh makes it
    env = {k: str(v) for k, v in environment(service(config, "worker")).items() if v is not None}
    env |= {
        "DOCKER_CERT_PATH": str(certs),
        "PROXY_AUTH_TOKEN_FILE": str(tmp_path / "proxy_auth_token"),
        "REGISTRY_AUTH_FILE": str(tmp_path / "registry_auth"),
    }
    Settings.from_env(env)


# -- stack.yml --------------------------------------------------------------------------------
def test_stack_places_its_services(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(services) == SERVICES
    deploy = {name: svc.get("deploy") or {} for name, svc in services.items()}
    assert deploy["api"]["replicas"] == "${API_REPLICAS:-2}"
    assert deploy["api"]["placement"]["max_replicas_per_node"] == 1, "host-mode ports: one replica per node"
    assert deploy["worker"]["placement"]["preferences"] == [{"spread": "node.id"}]
    assert deploy["beat"]["replicas"] == 1, "every beat sends every periodic task: exactly one"
    assert deploy["redis"]["placement"]["constraints"] == ["node.labels.swarm-manager.redis == true"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    # This kernel, like others without IPVS, has neither the ingress mesh nor service VIPs.
    for name, svc in services.items():
        assert deploy[name]["endpoint_mode"] == "dnsrr", name
        for port in svc.get("ports") or []:
            assert port["mode"] == "host", (name, port)
    assert {int(p["target"]) for p in services["proxy"]["ports"]} == {8000}
    assert stack["networks"]["backend"] == {"driver": "overlay", "attachable": True}


def test_the_stack_sentinel_overlay_merges_with_the_stack(tmp_path: Path) -> None:
    """`docker stack deploy -c stack.yml -c stack-sentinel.yml`: what the engine's own merge makes."""
    env = {
        **compose_env(tmp_path),
        **REQUIRED,
        "API_IMAGE": "a",
        "WORKER_IMAGE": "w",
        "PROXY_IMAGE": "p",
        "REDIS_MASTER": "mymaster",
        "REDIS_SENTINELS": "sentinel1,sentinel2,sentinel3",
    }
    done = subprocess.run(
        ["docker", "stack", "config", "-c", str(STACK_FILE), "-c", str(ROOT / "stack-sentinel.yml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    merged = yaml.safe_load(done.stdout)
    assert set(merged["services"]) == {*SERVICES, *SENTINEL_SERVICES}
    for name in SENTINEL_SERVICES:
        svc = merged["services"][name]
        assert svc["networks"] == {"backend": None} and svc["deploy"]["endpoint_mode"] == "dnsrr", name
    replica = merged["services"]["redis-replica"]
    assert replica["deploy"]["placement"]["constraints"] == ["node.labels.swarm-manager.redis-replica == true"]
    assert command(replica)[command(replica).index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    for name in APP_SERVICES:
        assert merged["services"][name]["environment"]["REDIS_SENTINELS"] == "sentinel1,sentinel2,sentinel3"


def test_stack_secrets_are_docker_secrets(stack: dict[str, Any]) -> None:
    services = stack["services"]

    def targets(name: str) -> set[str]:
        return {s.get("target", s["source"]) for s in services[name].get("secrets") or []}

    assert targets("api") == {"admin_token", "secret_key"}
    assert targets("worker") == {"proxy_auth_token", "registry_auth", "ca.pem", "cert.pem", "key.pem"}
    assert targets("flower") == {"flower_basic_auth"}
    assert targets("proxy") == {"proxy_auth_token"}
    assert not targets("beat") and not targets("redis")
    worker = services["worker"]["environment"]
    assert worker["DOCKER_CERT_PATH"] == "/run/secrets" and worker["DOCKER_TLS_VERIFY"] == "1"
    for svc in services.values():
        for secret in svc.get("secrets") or []:
            assert secret["uid"] == "10001" and secret["mode"] == 0o400, secret
        assert not {"ADMIN_TOKEN", "SECRET_KEY", "PROXY_AUTH_TOKEN", "FLOWER_BASIC_AUTH"} & set(
            svc.get("environment") or {}
        )


# -- the Dockerfiles ----------------------------------------------------------------------------
def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The build stages, each a list of (INSTRUCTION, arguments); continuation lines joined."""
    out: list[list[tuple[str, str]]] = [[]]
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            out.append([])
        out[-1].append((keyword.upper(), args.strip()))
    return out


@pytest.mark.parametrize(
    ("dockerfile", "package", "other"), [("Dockerfile.api", "api", "worker"), ("Dockerfile.worker", "worker", "api")]
)
def test_python_images(dockerfile: str, package: str, other: str, config: dict[str, Any]) -> None:
    preamble, *built = stages(ROOT / dockerfile)
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in preamble
    compose_default = service(config, package)["build"]["args"]["BASE_IMAGE"]
    assert compose_default == "python:3.11-slim", "compose's default base must be the Dockerfiles' own"
    runs = [args for stage in built for keyword, args in stage if keyword == "RUN" and "pip install" in args]
    assert runs and all("--require-hashes -r requirements.txt" in r for r in runs), runs
    assert not [r for r in runs if "requirements-dev" in r], "the images install the runtime lock only"
    final = built[-1]
    copied = " ".join(args for keyword, args in final if keyword == "COPY")
    assert "build-ca" not in copied, "the build's CA bundle must stay in the builder stage"
    assert f"{package}/" in copied and "shared/" in copied and "cli/" in copied, copied
    assert f"{other}/" not in copied, f"{dockerfile} must not contain {other}/"
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    assert any(keyword == "HEALTHCHECK" for keyword, _ in final)


def test_proxy_image_and_dockerignore() -> None:
    preamble, *built = stages(ROOT / "Dockerfile.proxy")
    assert ("ARG", "DEBIAN_IMAGE=debian:bookworm-slim") in preamble
    final = built[-1]
    assert "build-ca" not in " ".join(args for keyword, args in final if keyword in ("COPY", "RUN"))
    assert any(keyword == "HEALTHCHECK" for keyword, _ in final)
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", ".state", "tests", "testkit", "certs", "secrets"):
        assert entry in ignore, f".dockerignore does not exclude {entry}"
