"""docker-compose.yml, Dockerfile.api and Dockerfile.worker, checked without building or starting anything.

The compose file is validated and resolved by Debian's docker-compose 1.29.2 (``config``),
and the checks read the resolved YAML, so they see what ``docker-compose up --scale
worker=N`` would run. A missing docker-compose is a failure, never a skip.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings, documented_settings

try:
    import yaml
except ImportError:  # pragma: no cover - reported by the fixture below
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER_COMPOSE = "/usr/bin/docker-compose"
APP_SERVICES = ("api", "worker", "beat", "flower")
ENGINE_SERVICES = ("worker",)  # the ones that talk to the engine and get its certificates
CERT_TARGET = "/certs"
NOTEBOOK_NETWORK = "swarm-manager-notebooks"
COMPOSE_ADMIN_TOKEN = "compose-test-admin-token-0123456789"
COMPOSE_SECRET_KEY = "compose-test-secret-key-0123456789"
COMPOSE_FLOWER_AUTH = "ops:compose-test-flower-password"
#: Flower's own environment settings the flower service may set.
FLOWER_OWN = {"FLOWER_BASIC_AUTH"}


def docker_compose() -> str:
    found = DOCKER_COMPOSE if os.access(DOCKER_COMPOSE, os.X_OK) else shutil.which("docker-compose")
    if not found:
        pytest.fail(
            f"docker-compose not found at {DOCKER_COMPOSE} or on PATH; install Debian's package: "
            "apt-get install docker-compose",
            pytrace=False,
        )
    return found


def run_compose(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """docker-compose -f docker-compose.yml ARGS with a clean environment plus ``env``.

    Nothing from the developer's shell (DOCKER_HOST, DOMAIN, ...) or from an .env file
    beside the compose file changes the result: an empty --env-file replaces the latter.
    """
    certs = tmp / "certs"
    certs.mkdir(exist_ok=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (certs / name).touch()
    empty_env_file = tmp / "empty.env"
    empty_env_file.touch()
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "DOCKER_CERT_DIR": str(certs),
        # Required by the api service (authentication is on in compose).
        "ADMIN_TOKEN": COMPOSE_ADMIN_TOKEN,
        "SECRET_KEY": COMPOSE_SECRET_KEY,
        "FLOWER_BASIC_AUTH": COMPOSE_FLOWER_AUTH,
        **env,
    }
    cmd = [docker_compose(), "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), *args]
    result = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"`{shlex.join(cmd)}` exited with {result.returncode}:\n{result.stderr}{result.stdout}"
    )
    return result


def resolved(tmp: Path, **env: str) -> dict[str, Any]:
    if yaml is None:
        pytest.fail("PyYAML is not installed; it is needed to read `docker-compose config`", pytrace=False)
    config = yaml.safe_load(run_compose(tmp, "config", **env).stdout)
    assert isinstance(config, dict) and isinstance(config.get("services"), dict), config
    return config


@pytest.fixture(scope="module")
def compose_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose")


@pytest.fixture(scope="module")
def config(compose_tmp: Path) -> dict[str, Any]:
    return resolved(compose_tmp)


@pytest.fixture(scope="module")
def cert_dir(compose_tmp: Path) -> Path:
    """The host folder the fixture's DOCKER_CERT_DIR names (mounted at /certs)."""
    return compose_tmp / "certs"


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    services = config["services"]
    assert name in services, f"no service {name!r} in docker-compose.yml (has {sorted(services)})"
    return dict(services[name])


def environment(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes in one shape: {source, target, read_only}, from the short or the long syntax."""
    out = []
    for volume in svc.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) == 1:
                out.append({"source": None, "target": parts[0], "read_only": False})
            else:
                mode = parts[2] if len(parts) > 2 else "rw"
                out.append({"source": parts[0], "target": parts[1], "read_only": "ro" in mode.split(",")})
        else:
            out.append(
                {
                    "source": volume.get("source"),
                    "target": volume.get("target"),
                    "read_only": bool(volume.get("read_only")),
                }
            )
    return out


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


# -- the compose file -----------------------------------------------------------------
def test_compose_file_is_valid(tmp_path: Path) -> None:
    run_compose(tmp_path, "config", "-q")


def test_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"redis", *APP_SERVICES}


def test_every_app_service_has_redis_url(config: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = environment(service(config, name))
        assert env.get("REDIS_URL") == "redis://redis:6379/0", f"{name}: REDIS_URL is {env.get('REDIS_URL')!r}"


def test_app_services_restart_and_wait_for_redis(config: dict[str, Any]) -> None:
    for name in ("redis", *APP_SERVICES):
        assert service(config, name).get("restart") == "unless-stopped", name
    for name in APP_SERVICES:
        depends = service(config, name).get("depends_on") or {}
        assert isinstance(depends, dict) and depends.get("redis", {}).get("condition") == "service_healthy", (
            f"{name} must depend on redis being healthy, has {depends!r}"
        )


def test_worker_can_be_scaled(config: dict[str, Any]) -> None:
    worker = service(config, "worker")
    assert "container_name" not in worker, "a fixed container_name breaks `--scale worker=N`"
    assert not worker.get("ports"), f"published ports break `--scale worker=N`: {worker.get('ports')}"
    assert "hostname" not in worker, "a fixed hostname gives every replica the same Celery node name"


def test_redis_persists_append_only(config: dict[str, Any]) -> None:
    redis = service(config, "redis")
    assert redis.get("image") == "redis:7"
    args = command(redis)
    assert "--appendonly" in args, args
    assert args[args.index("--appendonly") + 1] == "yes", args
    data = [m for m in mounts(redis) if m["target"] == "/data"]
    assert data and data[0]["source"] in config.get("volumes", {}), f"/data must be a named volume: {data}"
    assert "redis-cli" in " ".join(str(t) for t in redis.get("healthcheck", {}).get("test", [])), redis


def test_engine_certificates_are_read_only_and_only_where_needed(config: dict[str, Any], cert_dir: Path) -> None:
    for name in ENGINE_SERVICES:
        svc = service(config, name)
        certs = [m for m in mounts(svc) if m["target"] == CERT_TARGET]
        assert len(certs) == 1, f"{name}: the engine certificates must be mounted at {CERT_TARGET}: {mounts(svc)}"
        assert certs[0]["read_only"], f"{name}: {CERT_TARGET} must be mounted read-only: {certs[0]}"
        assert certs[0]["source"] == str(cert_dir), f"{name}: {CERT_TARGET} must come from DOCKER_CERT_DIR"
        env = environment(svc)
        assert env.get("DOCKER_CERT_PATH") == CERT_TARGET, name
        assert env.get("DOCKER_TLS_VERIFY") == "1", name
        assert str(env.get("DOCKER_HOST", "")).startswith("tcp://"), name
    for name in ("api", "flower"):
        svc = service(config, name)
        assert not [m for m in mounts(svc) if m["target"] == CERT_TARGET], f"{name} needs no engine certificates"
        assert not [m for m in mounts(svc) if m["source"] == str(cert_dir)], name


def test_tls_settings_only_with_mounted_certificates(config: dict[str, Any]) -> None:
    # Settings refuse to start (ConfigError) with DOCKER_TLS_VERIFY/DOCKER_CERT_PATH set and
    # no ca.pem, cert.pem, key.pem there: such a service would restart forever.
    for name in APP_SERVICES:
        svc = service(config, name)
        env = environment(svc)
        if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"):
            path = env.get("DOCKER_CERT_PATH") or ""
            assert path in {m["target"] for m in mounts(svc)}, f"{name}: DOCKER_CERT_PATH={path!r} is not mounted"


def test_worker_reaches_notebooks_on_their_network(config: dict[str, Any]) -> None:
    networks = config.get("networks") or {}
    declared = [key for key, net in networks.items() if (net or {}).get("name") == NOTEBOOK_NETWORK]
    assert declared, f"no network named {NOTEBOOK_NETWORK}: {networks}"
    worker = service(config, "worker")
    joined = worker.get("networks") or {}
    assert declared[0] in joined, f"the worker must join {declared[0]!r}: {joined}"
    assert "default" in joined, f"the worker must stay on the default network to reach redis: {joined}"
    env = environment(worker)
    assert env.get("NOTEBOOK_NETWORK") == NOTEBOOK_NETWORK
    assert env.get("PUBLISH_IP") == "", "notebooks on the shared network are reached by address, not a port"


def test_ports(config: dict[str, Any]) -> None:
    def targets(name: str) -> set[int]:
        out = set()
        for port in service(config, name).get("ports") or []:
            if isinstance(port, dict):
                out.add(int(port["target"]))
            else:
                out.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
        return out

    assert targets("api") == {3000}
    assert targets("flower") == {5555}
    for name in ("redis", "worker", "beat"):
        assert not targets(name), f"{name} must publish no port"


def test_commands(config: dict[str, Any]) -> None:
    assert service(config, "worker").get("build", {}).get("dockerfile") == "Dockerfile.worker"
    assert service(config, "api").get("build", {}).get("dockerfile") == "Dockerfile.api"
    image = service(config, "worker").get("image")
    for name in ("beat", "flower"):
        assert service(config, name).get("image") == image, f"{name} must use the worker image"
    # Each process's command line is defined once, by the swarm-manager command (cli/servers.py).
    assert command(service(config, "worker"))[:4] == ["python", "-m", "cli", "worker"]
    beat = command(service(config, "beat"))
    assert beat[:4] == ["python", "-m", "cli", "beat"]
    schedule = beat[beat.index("--schedule") + 1] if "--schedule" in beat else ""
    assert schedule.startswith("/tmp/") or any(
        schedule.startswith(m["target"] + "/") and not m["read_only"] for m in mounts(service(config, "beat"))
    ), f"beat's schedule file {schedule!r} must be in /tmp or a writable volume"
    flower = command(service(config, "flower"))
    assert flower[:4] == ["python", "-m", "cli", "flower"] and flower[flower.index("--port") + 1] == "5555", flower


def test_app_environment_is_known_settings(config: dict[str, Any]) -> None:
    known = {name for name, _default, _doc in documented_settings()}
    for name in APP_SERVICES:
        own = FLOWER_OWN if name == "flower" else set()  # Flower reads these itself
        unknown = set(environment(service(config, name))) - known - own
        assert not unknown, f"{name} sets {sorted(unknown)}, which shared/settings.py does not read (a typo?)"


def test_app_environment_is_valid_settings(config: dict[str, Any], cert_dir: Path) -> None:
    for name in APP_SERVICES:
        svc = service(config, name)
        env = environment(svc)
        for key, value in env.items():
            assert isinstance(value, str), f"{name}: {key} is {value!r}; compose would pass the host's value through"
        if env.get("DOCKER_CERT_PATH") == CERT_TARGET:
            env["DOCKER_CERT_PATH"] = str(cert_dir)  # the same files, as the host sees them
        Settings.from_env(env)  # raises ConfigError naming every bad value


def test_variables_reach_the_services(tmp_path: Path) -> None:
    config = resolved(
        tmp_path,
        DOMAIN="nb.example.org",
        DOCKER_HOST="tcp://engine.example.org:2376",
        NOTEBOOK_NETWORK="",
        PUBLISH_IP="10.0.0.5",
    )
    for name in APP_SERVICES:
        assert environment(service(config, name))["DOMAIN"] == "nb.example.org", name
    for name in ENGINE_SERVICES:
        env = environment(service(config, name))
        assert env["DOCKER_HOST"] == "tcp://engine.example.org:2376", name
        assert env["NOTEBOOK_NETWORK"] == "" and env["PUBLISH_IP"] == "10.0.0.5", name


# -- the Dockerfiles --------------------------------------------------------------------
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    assert dockerfile.is_file(), f"{dockerfile.name} is missing"
    out: list[tuple[str, str]] = []
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
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{dockerfile.name} ends inside a continued line"
    return out


def copy_sources(steps: list[tuple[str, str]]) -> list[str]:
    sources = []
    for keyword, args in steps:
        if keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(os.path.normpath(w) for w in words[:-1])
    return sources


@pytest.mark.parametrize(
    ("dockerfile", "package", "other"), [("Dockerfile.api", "api", "worker"), ("Dockerfile.worker", "worker", "api")]
)
def test_dockerfile(dockerfile: str, package: str, other: str) -> None:
    steps = instructions(ROOT / dockerfile)
    assert steps[0] == ("FROM", "python:3.11-slim"), steps[0]
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, f"{dockerfile} declares no USER: its processes would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{dockerfile} runs as {users[-1]!r}"
    sources = copy_sources(steps)
    assert package in sources and "shared" in sources, f"{dockerfile} copies {sources}"
    assert other not in sources, f"{dockerfile} must not contain {other}/"
    assert "." not in sources, f"{dockerfile} copies the whole tree (including {other}/)"
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert installs and all("--no-cache-dir" in a and "--require-hashes -r requirements.txt" in a for a in installs), (
        installs
    )
    assert "cli" in sources, f"{dockerfile} needs cli/: its CMD is the swarm-manager command"
    assert any(keyword == "EXPOSE" for keyword, _ in steps), f"{dockerfile} has no EXPOSE"
    assert any(keyword == "CMD" for keyword, _ in steps), f"{dockerfile} has no CMD"


def test_api_dockerfile_serves_and_checks_health() -> None:
    steps = dict(instructions(ROOT / "Dockerfile.api"))
    assert steps["CMD"] == '["python", "-m", "cli", "serve", "--bind", "0.0.0.0:3000"]', steps["CMD"]
    assert "/healthz" in steps.get("HEALTHCHECK", ""), "the api image needs a HEALTHCHECK on /healthz"
    assert steps["EXPOSE"] == "3000"


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", ".state", "tests", "certs"):
        assert entry in ignore, f".dockerignore does not exclude {entry}"
    assert any("__pycache__" in entry for entry in ignore)


# -- authentication ---------------------------------------------------------------------
def test_api_runs_with_authentication_and_its_secrets_only_there(config: dict[str, Any]) -> None:
    env = environment(service(config, "api"))
    assert env["AUTH"] == "on"
    assert env["ADMIN_TOKEN"] == COMPOSE_ADMIN_TOKEN and env["SECRET_KEY"] == COMPOSE_SECRET_KEY
    assert Settings.from_env(env).auth is True
    for name in ("worker", "beat", "flower"):
        leaked = {"ADMIN_TOKEN", "SECRET_KEY"} & set(environment(service(config, name)))
        assert not leaked, f"{name} gets {sorted(leaked)}, which only the API needs"


@pytest.mark.parametrize("missing", ["ADMIN_TOKEN", "SECRET_KEY"])
def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path, missing: str) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DOCKER_CERT_DIR": str(certs),
        "ADMIN_TOKEN": COMPOSE_ADMIN_TOKEN,
        "SECRET_KEY": COMPOSE_SECRET_KEY,
    }
    del env[missing]
    result = subprocess.run(
        [docker_compose(), "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr, result.stderr


def test_flower_asks_for_a_password(config: dict[str, Any], tmp_path: Path) -> None:
    env = environment(service(config, "flower"))
    assert env.get("FLOWER_BASIC_AUTH") == COMPOSE_FLOWER_AUTH
    assert "FLOWER_UNAUTHENTICATED_API" not in env  # would open its API (and CORS) to anyone
    # Without a password compose refuses to start, as it does without ADMIN_TOKEN.
    certs = tmp_path / "certs"
    certs.mkdir()
    empty = tmp_path / "empty.env"
    empty.touch()
    cmd = [docker_compose(), "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config", "-q"]
    env_without = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DOCKER_CERT_DIR": str(certs),
        "ADMIN_TOKEN": COMPOSE_ADMIN_TOKEN,
        "SECRET_KEY": COMPOSE_SECRET_KEY,
    }
    refused = subprocess.run(cmd, cwd=ROOT, env=env_without, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr, refused.stderr


#: Settings compose passes through with shared/settings.py's own default.
PASSED_THROUGH = (
    "START_TIMEOUT", "MAX_AGE", "IDLE_TIMEOUT", "RECORD_RETENTION", "RECONCILE_INTERVAL", "NOTEBOOK_PORT", "POOL",
    "PROFILES_FILE", "ENGINE_BACKEND", "WORKER_CONCURRENCY", "ENGINE_TIMEOUT", "KILL_GRACE", "ORPHAN_GRACE",
    "PROBE_HOST", "PROBE_INTERVAL", "PROXY_API_URL", "PROXY_AUTH_TOKEN", "PROXY_PUBLIC_URL", "READY_THROUGH_PROXY",
)  # fmt: skip


def test_passed_through_settings_default_to_the_settings_own(config: dict[str, Any]) -> None:
    defaults = {name: default for name, default, _doc in documented_settings()}
    worker = environment(service(config, "worker"))
    for name in PASSED_THROUGH:
        assert worker.get(name) == defaults[name], f"{name}: compose {worker.get(name)!r}, settings {defaults[name]!r}"
    api = environment(service(config, "api"))
    for name in ("START_TIMEOUT", "MAX_AGE", "POOL", "PROFILES_FILE"):  # the API uses these too
        assert name in api, name


def test_profiles_reach_every_service_that_reads_the_settings(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    config = resolved(
        tmp_path, PROFILES_DIR=str(profiles), PROFILES_FILE="/etc/swarm-manager/profiles/profiles.yml", POOL="x=1"
    )
    for name in APP_SERVICES:
        svc = service(config, name)
        mounted = [m for m in mounts(svc) if m["target"] == "/etc/swarm-manager/profiles"]
        assert mounted and mounted[0]["read_only"] and mounted[0]["source"] == str(profiles), (name, mounts(svc))
        env = environment(svc)
        assert env["PROFILES_FILE"] == "/etc/swarm-manager/profiles/profiles.yml" and env["POOL"] == "x=1", name
