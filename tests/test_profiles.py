"""Per-image profiles: the loader and its errors, the API's choice of profile and limits, and a
real spawn on the plain-containers backend that carries a profile's port, command, environment
and limits. (Profiles on a Swarm: tests/test_swarm_profiles.py.)"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from api import create_app
from shared.errors import ConfigError, InvalidInput
from shared.profiles import Limits, Profile, load_profiles, parse_cpus, parse_profiles, parse_size
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from testkit.stack import base_env
from testkit.support import ROOT, VENV_BIN, RedisServer, unique_instance, unreachable_client
from worker.containers import ContainerEngine
from worker.spawner import Spawner

MIB = 1024 * 1024
GIB = 1024 * MIB
FINAL = {Status.ACTIVE, Status.FAILED}

GOOD = """
profiles:
  - name: gpu
    images: ["*/tensorflow-notebook:*", "registry.example/gpu/*"]
    port: 8890
    command: ["start-notebook.sh", "--port=8890"]
    environment: {GRANT_SUDO: "no", OMP_NUM_THREADS: 4}
    mem_limit: 2g
    cpu_limit: 1.5
    constraints: ["node.labels.gpu == true"]
    user_limits: true
    max_mem_limit: 8g
    max_cpu_limit: 4
  - name: small
    images: "jupyter/*"
    mem_limit: 512m
  - name: lab
    command: "jupyter lab --port=9999 --ip=0.0.0.0"
  - name: also-jupyter
    images: ["jupyter/minimal-notebook"]
  - name: matches-nothing
    images: ["no/such/image:*"]
"""


def write(tmp_path: Path, text: str, name: str = "profiles.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- the loader ------------------------------------------------------------------------------
def test_a_good_file_loads_every_field(tmp_path: Path) -> None:
    profiles = load_profiles(write(tmp_path, GOOD))
    assert [p.name for p in profiles] == ["gpu", "small", "lab", "also-jupyter", "matches-nothing"]
    gpu = profiles.get("gpu")
    assert gpu == Profile(
        name="gpu",
        images=("*/tensorflow-notebook:*", "registry.example/gpu/*"),
        port=8890,
        command=("start-notebook.sh", "--port=8890"),
        environment={"GRANT_SUDO": "no", "OMP_NUM_THREADS": "4"},
        mem_limit=2 * GIB,
        cpu_limit=1.5,
        constraints=("node.labels.gpu==true",),
        user_limits=True,
        max_mem_limit=8 * GIB,
        max_cpu_limit=4.0,
    )
    small = profiles.get("small")
    assert small is not None and small.images == ("jupyter/*",) and small.mem_limit == 512 * MIB
    assert small.port is None and small.command is None and not small.user_limits
    lab = profiles.get("lab")
    assert lab is not None and lab.command == ("jupyter", "lab", "--port=9999", "--ip=0.0.0.0") and lab.images == ()

    # The first profile whose pattern matches wins; a profile without patterns is never picked by image.
    assert profiles.for_image("jupyter/minimal-notebook").name == "small"  # type: ignore[union-attr]
    assert profiles.for_image("quay.io/jupyter/tensorflow-notebook:2024").name == "gpu"  # type: ignore[union-attr]
    assert profiles.for_image("registry.example/gpu/pytorch:1").name == "gpu"  # type: ignore[union-attr]
    assert profiles.for_image("busybox") is None


@pytest.mark.parametrize("text", ["", "# nothing here\n", "profiles:\n", "profiles: []\n"])
def test_an_empty_file_means_no_profiles(tmp_path: Path, text: str) -> None:
    assert len(load_profiles(write(tmp_path, text))) == 0


def test_no_file_configured_means_no_profiles() -> None:
    assert len(load_profiles("")) == 0
    assert Settings.from_env({}).profiles_file == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown keys, with a hint
        ("- name: a\n  image: x/y\n", "profile 'a': unknown key 'image' (did you mean 'images'?)"),
        ("- name: a\n  gpu: true\n", "profile 'a': unknown key 'gpu' (known keys: name, images, port"),
        # sizes
        ("- name: a\n  mem_limit: 2 gigs\n", "profile 'a': mem_limit: not a size: '2 gigs'"),
        ("- name: a\n  mem_limit: 512\n", "profile 'a': mem_limit: 512 is less than the engine's minimum of 6m"),
        ("- name: a\n  mem_limit: -1g\n", "profile 'a': mem_limit: not a size: '-1g'"),
        ("- name: a\n  mem_limit: 1.5\n", "profile 'a': mem_limit: expected a size such as 512m or 2g, got float"),
        ("- name: a\n  user_limits: true\n  max_mem_limit: lots\n", "profile 'a': max_mem_limit: not a size"),
        # types
        ("- name: a\n  port: '8888'\n", "profile 'a': port: expected a port number from 1 to 65535, got '8888'"),
        ("- name: a\n  port: 70000\n", "profile 'a': port: expected a port number from 1 to 65535, got 70000"),
        ("- name: a\n  cpu_limit: lots\n", "profile 'a': cpu_limit: not a number of cores: 'lots'"),
        ("- name: a\n  cpu_limit: 0\n", "profile 'a': cpu_limit: expected a number of cores from 0.01 to 4096"),
        ("- name: a\n  cpu_limit: true\n", "profile 'a': cpu_limit: expected a number of cores"),
        ("- name: a\n  environment: [A=b]\n", "profile 'a': environment: expected a mapping of NAME: value"),
        ("- name: a\n  environment: {DEBUG: true}\n", "profile 'a': environment: DEBUG: expected a string or a number"),
        ("- name: a\n  environment: {'1X': y}\n", "profile 'a': environment: '1X' is not a variable name"),
        ("- name: a\n  command: []\n", "profile 'a': command: expected a list of strings"),
        ("- name: a\n  command: [jupyter, 1]\n", "profile 'a': command: expected a list of strings"),
        ("- name: a\n  images: [1, 2]\n", "profile 'a': images: expected a list of image patterns"),
        ("- name: a\n  constraints: [gpu]\n", "profile 'a': constraints: 'gpu' is not a Swarm constraint"),
        ("- name: a\n  user_limits: 'yes'\n", "profile 'a': user_limits: expected true or false, got 'yes'"),
        ("- name: a\n  warm_kernel: 'python 3'\n", "profile 'a': warm_kernel: expected a kernel name such as python3"),
        ("- name: a\n  warm_kernel: [python3]\n", "profile 'a': warm_kernel: expected a kernel name such as python3"),
        # limits that do not fit together
        ("- name: a\n  max_mem_limit: 4g\n", "profile 'a': max_mem_limit: only applies with user_limits: true"),
        ("- name: a\n  user_limits: true\n", "profile 'a': user_limits: true needs max_mem_limit and/or max_cpu_limit"),
        (
            "- name: a\n  mem_limit: 4g\n  user_limits: true\n  max_mem_limit: 2g\n",
            "profile 'a': max_mem_limit: is below the profile's own mem_limit",
        ),
        # names
        ("- name: a\n- name: b\n- name: a\n", "profile 'a' (#3): name: already used by profile #1"),
        ("- images: [x/*]\n", "profile #1: name: is required"),
        ("- name: 'bad name'\n", "profile 'bad name': name: expected 1-63 letters, digits"),
        ("- just-a-string\n", "profile #1: expected a mapping"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_file_the_profile_and_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, "profiles:\n" + textwrap.indent(text, "  "))
    with pytest.raises(ConfigError) as caught:
        load_profiles(path)
    assert str(caught.value).startswith(f"PROFILES_FILE {path}: "), caught.value
    assert expected in str(caught.value), caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "profiles:\n  - name: a\n    mem_limit: 1g\n    mem_limit: 2g\n",
            "at line 4, column 5: key 'mem_limit' is given twice",
        ),
        ("profiles: [\n", "not valid YAML at line 2"),
        ("- name: a\n", "expected a mapping with a 'profiles' list at the top, got a list"),
        ("profile:\n  - name: a\n", "unknown top-level key(s) 'profile' (expected 'profiles' or 'binder')"),
        ("profiles:\n  a: {}\n", "'profiles' must be a list of profiles, got a mapping"),
    ],
)
def test_a_bad_file_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="PROFILES_FILE ") as caught:
        load_profiles(path)
    assert path in str(caught.value) and expected in str(caught.value), caught.value


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  - name: a\n    port: x\n  - name: b\n    mem_limit: 2 gigs\n")
    with pytest.raises(ConfigError) as caught:
        load_profiles(path)
    assert "profile 'a': port:" in str(caught.value) and "profile 'b': mem_limit:" in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"PROFILES_FILE .*absent\.yaml: cannot read it"):
        load_profiles(str(tmp_path / "absent.yaml"))


def test_sizes_and_cores() -> None:
    assert parse_size("2g") == parse_size("2G") == parse_size("2GiB") == parse_size("2gb") == 2 * GIB
    assert parse_size("512m") == parse_size("524288k") == 512 * MIB
    assert parse_size("1.5g") == 3 * GIB // 2
    assert parse_size(64 * MIB) == 64 * MIB
    for bad in ("2 gigs", "g", "", "-5m", "1e9", "5m5", "9" * 400 + "m", True, None, [1]):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_cpus("0.5") == parse_cpus(0.5) == 0.5 and parse_cpus(2) == 2.0
    for bad in ("nan", "inf", "-1", "0", "half", False, None):
        with pytest.raises(ValueError):
            parse_cpus(bad)


def test_the_settings_refuse_a_bad_file_at_start_up(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  - name: gpu\n    mem_limit: 2 gigs\n")
    with pytest.raises(ConfigError, match=rf"bad settings: PROFILES_FILE {path}: profile 'gpu': mem_limit: not a size"):
        Settings.from_env({"PROFILES_FILE": path})
    good = write(tmp_path, GOOD, "good.yaml")
    assert Settings.from_env({"PROFILES_FILE": good}).profiles_file == good


@pytest.mark.parametrize(
    "command",
    [
        [str(VENV_BIN / "python"), "-c", "import api.wsgi"],  # what gunicorn imports
        [str(VENV_BIN / "celery"), "-A", "worker.celery_app", "worker", "--loglevel", "INFO"],
    ],
    ids=["api", "worker"],
)
def test_a_bad_file_stops_the_api_and_the_worker(tmp_path: Path, command: list[str]) -> None:
    path = write(tmp_path, "profiles:\n  - name: gpu\n    mem_limit: 2 gigs\n")
    env = {**os.environ, **base_env("redis://127.0.0.1:1/0", unique_instance("badprof"), PROFILES_FILE=path)}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"PROFILES_FILE {path}: profile 'gpu': mem_limit: not a size: '2 gigs'" in proc.stderr, proc.stderr[-2000:]


def test_requested_limits_within_the_profiles_maxima() -> None:
    gpu = parse_profiles(GOOD).get("gpu")
    small = parse_profiles(GOOD).get("small")
    assert gpu is not None and small is not None
    assert gpu.requested() == gpu.requested("", None) == Limits()
    assert gpu.requested("4g", "2") == Limits(mem_limit=4 * GIB, cpu_limit=2.0)
    assert gpu.requested(8 * GIB, 4) == Limits(mem_limit=8 * GIB, cpu_limit=4.0)  # the maxima themselves
    assert Limits(mem_limit=4 * GIB, cpu_limit=0.5).internal() == {"mem_limit": str(4 * GIB), "cpu_limit": "0.5"}
    assert Limits.from_internal(str(4 * GIB), "0.5") == Limits(mem_limit=4 * GIB, cpu_limit=0.5)
    with pytest.raises(InvalidInput, match=r"mem_limit 9g is over the maximum of profile 'gpu' \(8g\)"):
        gpu.requested("9g")
    with pytest.raises(InvalidInput, match=r"cpu_limit 4.5 is over the maximum of profile 'gpu' \(4\)"):
        gpu.requested(None, "4.5")
    with pytest.raises(InvalidInput, match="mem_limit: not a size"):
        gpu.requested("lots")
    with pytest.raises(InvalidInput, match="profile 'small' does not let users choose mem_limit or cpu_limit"):
        small.requested("1g")


# -- the API ---------------------------------------------------------------------------------
API_PROFILES = """
profiles:
  - name: gpu
    images: ["smtest/tensorflow-notebook:*"]
    mem_limit: 1g
    cpu_limit: 1
    constraints: ["node.labels.gpu==true"]
    user_limits: true
    max_mem_limit: 4g
    max_cpu_limit: 2
  - name: memory-only
    images: ["smtest/big:*"]
    user_limits: true
    max_mem_limit: 2g
  - name: small
    images: ["smtest/*"]
    mem_limit: 256m
  - name: anywhere
    cpu_limit: 0.5
"""


@dataclass
class ProfileApi:
    settings: Settings
    http: FlaskClient
    store: Store

    def redis_keys(self) -> list[str]:
        return sorted(self.store.redis.scan_iter(match=f"{self.settings.key_prefix}*", count=1000))

    def spawn(self, **fields: Any) -> tuple[int, dict[str, Any]]:
        response = self.http.post("/spawn", json={"user": "alice", **fields})
        return response.status_code, dict(response.get_json())

    def refused(self, status: int = 400, **fields: Any) -> str:
        """A spawn refused with ``status``: a JSON error, and nothing written to Redis."""
        before = self.redis_keys()
        code, body = self.spawn(**fields)
        assert code == status, body
        assert body["code"] == "invalid_input", body
        assert self.redis_keys() == before
        return str(body["error"])


@pytest.fixture(scope="module")
def papi(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileApi]:
    path = write(tmp_path_factory.mktemp("profiles-api"), API_PROFILES)
    settings = Settings.from_env(base_env(redis_server.url, unique_instance("profiles-api"), PROFILES_FILE=path))
    app = create_app(settings)
    api = ProfileApi(settings, app.test_client(), Store(connect(settings.redis_url), settings.key_prefix))
    yield api
    for key in api.redis_keys():
        api.store.redis.delete(key)


def test_spawn_takes_the_images_first_matching_profile(papi: ProfileApi) -> None:
    code, body = papi.spawn(image="smtest/tensorflow-notebook:1")
    assert code == 202 and body["profile"] == "gpu", body
    code, body = papi.spawn(image="smtest/other:1")
    assert code == 202 and body["profile"] == "small", body
    code, body = papi.spawn(image="busybox")  # no pattern matches: no profile
    assert code == 202 and body["profile"] == "", body
    assert papi.store.get(body["hostname"]).profile == ""  # type: ignore[union-attr]


def test_spawn_names_a_profile(papi: ProfileApi) -> None:
    code, body = papi.spawn(image="smtest/tensorflow-notebook:1", profile="small")  # matches too: allowed
    assert code == 202 and body["profile"] == "small", body
    code, body = papi.spawn(image="busybox", profile="anywhere")  # no patterns: any image
    assert code == 202 and body["profile"] == "anywhere", body
    response = papi.http.post("/spawn", data={"image": "busybox", "user": "bob", "profile": "anywhere"})  # a form
    assert response.status_code == 202 and response.get_json()["profile"] == "anywhere"
    assert papi.store.get(body["hostname"]).profile == "anywhere"  # type: ignore[union-attr]


def test_a_profile_that_does_not_apply_or_exist_is_refused(papi: ProfileApi) -> None:
    error = papi.refused(image="busybox", profile="gpu")
    assert "profile 'gpu' does not apply to image 'busybox'" in error
    assert "no profile named 'nope'" in papi.refused(image="busybox", profile="nope")
    assert "profile must be a string" in papi.refused(image="busybox", profile=["gpu"])
    form = papi.http.post("/spawn", data={"image": "busybox", "user": "a", "profile": ["gpu", "small"]})
    assert form.status_code == 400 and "profile is given more than once" in form.get_json()["error"]


def test_limits_within_the_maximum_are_kept_on_the_record(papi: ProfileApi) -> None:
    code, body = papi.spawn(image="smtest/tensorflow-notebook:1", mem_limit="3g", cpu_limit="1.5")
    assert code == 202 and body["profile"] == "gpu", body
    assert "mem_limit" not in body and "_mem_limit" not in body  # internal, not in the public record
    assert papi.store.internal(body["hostname"], "mem_limit") == str(3 * GIB)
    assert papi.store.internal(body["hostname"], "cpu_limit") == "1.5"
    # JSON numbers, the maxima themselves, and only one of the two.
    code, body = papi.spawn(image="smtest/tensorflow-notebook:1", mem_limit=4 * GIB, cpu_limit=2)
    assert code == 202, body
    code, body = papi.spawn(image="smtest/big:1", mem_limit="2g")
    assert code == 202 and body["profile"] == "memory-only", body
    assert papi.store.internal(body["hostname"], "mem_limit") == str(2 * GIB)
    assert papi.store.internal(body["hostname"], "cpu_limit") is None
    response = papi.http.post(
        "/spawn", data={"image": "smtest/tensorflow-notebook:1", "user": "c", "mem_limit": "512m", "cpu_limit": "0.5"}
    )
    assert response.status_code == 202, response.get_json()


def test_limits_over_the_maximum_or_not_allowed_are_refused(papi: ProfileApi) -> None:
    image = "smtest/tensorflow-notebook:1"
    assert "mem_limit 5g is over the maximum of profile 'gpu' (4g)" in papi.refused(image=image, mem_limit="5g")
    assert "cpu_limit 2.5 is over the maximum of profile 'gpu' (2)" in papi.refused(image=image, cpu_limit=2.5)
    assert "mem_limit: not a size" in papi.refused(image=image, mem_limit="a lot")
    assert "cpu_limit: not a number of cores" in papi.refused(image=image, cpu_limit="many")
    assert "cpu_limit: expected a number of cores" in papi.refused(image=image, cpu_limit={"n": 1})
    assert "less than the engine's minimum" in papi.refused(image=image, mem_limit="1k")
    assert "too large" in papi.refused(image=image, mem_limit="9" * 400 + "m")  # not an OverflowError (500)
    not_allowed = "profile 'small' does not let users choose mem_limit or cpu_limit"
    assert not_allowed in papi.refused(image="smtest/other:1", mem_limit="128m")
    assert "profile 'memory-only' does not let users choose cpu_limit" in papi.refused(
        image="smtest/big:1", cpu_limit="1"
    )
    assert "need a profile that allows them; none applies to 'busybox'" in papi.refused(image="busybox", cpu_limit=1)


def test_the_worker_builds_the_spec_from_the_profile(papi: ProfileApi, tmp_path: Path) -> None:
    profiles = load_profiles(write(tmp_path, API_PROFILES))
    # spec_for reads only the record and the store: an engine call here would be a bug.
    engine = ContainerEngine(unreachable_client(), papi.settings)
    spawner = Spawner(papi.store, engine, papi.settings, profiles=profiles)

    code, body = papi.spawn(image="smtest/tensorflow-notebook:1", mem_limit="3g")
    assert code == 202
    spec = spawner.spec_for(papi.store.require(body["hostname"]))
    assert (spec.mem_limit, spec.cpu_limit, spec.constraints) == (3 * GIB, 1.0, ["node.labels.gpu==true"])
    assert spec.port == papi.settings.notebook_port and spec.command is None and spec.environment == {}

    code, body = papi.spawn(image="smtest/other:1")
    spec = spawner.spec_for(papi.store.require(body["hostname"]))
    assert (spec.mem_limit, spec.cpu_limit, spec.constraints) == (256 * MIB, None, [])

    code, body = papi.spawn(image="busybox")
    spec = spawner.spec_for(papi.store.require(body["hostname"]))
    assert (spec.mem_limit, spec.cpu_limit, spec.constraints) == (None, None, [])


# -- a real spawn on the plain-containers backend -----------------------------------------------
# The test image serves /www on 8888; this profile moves it to 8890 and has it write a file from
# its environment first, so the running notebook shows the port, command and environment took.
SPAWN_PROFILES = """
profiles:
  - name: limited
    images: ["swarm-manager-test/httpd:*"]
    port: 8890
    command:
      - /bin/sh
      - -c
      - echo "$GREETING from $WHO" > /www/greeting.txt && exec /bin/httpd -f -p 8890 -h /www
    environment: {GREETING: hello, WHO: a profile}
    mem_limit: 96m
    cpu_limit: 0.5
    user_limits: true
    max_mem_limit: 256m
    max_cpu_limit: 1
"""


@pytest.fixture(scope="module")
def pstack(stack_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = write(tmp_path_factory.mktemp("profiles-spawn"), SPAWN_PROFILES)
    return stack_factory("profiles", PROFILES_FILE=path)


def spawn(stack: Any, **fields: Any) -> str:
    response = stack.http.post("/spawn", json={"user": "profiled", **fields})
    assert response.status_code == 202, response.get_json()
    hostname = str(response.get_json()["hostname"])
    stack.created.append(hostname)
    return hostname


def test_a_spawn_runs_with_the_profiles_port_command_environment_and_limits(
    pstack: Any, images: dict[str, str]
) -> None:
    h = spawn(pstack, image=images["httpd"])
    record = pstack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    assert record.profile == "limited"

    attrs = pstack.docker.containers.get(record.container_id).attrs
    assert attrs["HostConfig"]["Memory"] == 96 * MIB
    assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert {"GREETING=hello", "WHO=a profile"} <= set(attrs["Config"]["Env"])
    assert attrs["Config"]["Cmd"] == [
        "/bin/sh",
        "-c",
        'echo "$GREETING from $WHO" > /www/greeting.txt && exec /bin/httpd -f -p 8890 -h /www',
    ]
    assert "8890/tcp" in attrs["NetworkSettings"]["Ports"]
    labels = attrs["Config"]["Labels"]
    assert labels["interlock.port"] == "8890"
    assert labels[f"traefik.http.services.{pstack.settings.instance}-{h}.loadbalancer.server.port"] == "8890"
    answer = requests.get(record.address + "/greeting.txt", timeout=5)
    assert answer.status_code == 200 and answer.text.strip() == "hello from a profile"

    pstack.kill(h)
    assert pstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED


def test_a_spawn_with_its_own_limits_within_the_maximum(pstack: Any, images: dict[str, str]) -> None:
    h = spawn(pstack, image=images["httpd"], mem_limit="200m", cpu_limit="0.25")
    record = pstack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    attrs = pstack.docker.containers.get(record.container_id).attrs
    assert attrs["HostConfig"]["Memory"] == 200 * MIB
    assert attrs["HostConfig"]["NanoCpus"] == 250_000_000

    over = pstack.http.post("/spawn", json={"image": images["httpd"], "user": "greedy", "mem_limit": "1g"})
    assert over.status_code == 400 and "over the maximum of profile 'limited' (256m)" in over.get_json()["error"]

    pstack.kill(h)
    assert pstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED


def test_an_image_without_a_profile_runs_with_the_defaults(pstack: Any, images: dict[str, str]) -> None:
    h = spawn(pstack, image=images["slow3"])
    record = pstack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE and record.profile == "", record.error
    attrs = pstack.docker.containers.get(record.container_id).attrs
    # No profile: the hardening defaults (DEFAULT_MEM_LIMIT, DEFAULT_CPU_LIMIT; worker/hardening.py).
    assert attrs["HostConfig"]["Memory"] == pstack.settings.default_mem_limit
    assert attrs["HostConfig"]["NanoCpus"] == int(pstack.settings.default_cpu_limit * 1_000_000_000)
    assert "8888/tcp" in attrs["NetworkSettings"]["Ports"]
    pstack.kill(h)
    assert pstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED


# -- one image, any spelling: the same profile ----------------------------------------------------
# Profiles match the canonical reference, as ALLOWED_IMAGES does (shared/limits.py): spelling an
# image with its registry must not escape a profile's limits, command, constraints or token.
SPELLINGS = ["local/bar-nb:1", "docker.io/local/bar-nb:1", "index.docker.io/local/bar-nb:1"]


def test_every_spelling_of_an_image_gets_its_profile() -> None:
    profiles = parse_profiles(
        """
        profiles:
          - name: bar
            images: ["local/bar-nb:*"]
            mem_limit: 256m
            cpu_limit: 0.5
          - name: official
            images: ["python:3.*", "docker.io/library/busybox"]
          - name: hub-namespace
            images: ["docker.io/jupyter/*"]
          - name: other-registry
            images: ["registry.example:5000/lab/*"]
        """
    )
    for image in SPELLINGS:
        chosen = profiles.choose(image)
        assert chosen is not None and chosen.name == "bar", image
        assert profiles.choose(image, "bar") == chosen  # named: it applies to every spelling too
    for image in ("python:3.11", "library/python:3.11", "docker.io/python:3.11", "index.docker.io/library/python:3.12"):
        assert getattr(profiles.choose(image), "name", None) == "official", image
    for image in ("busybox", "busybox:1", "docker.io/library/busybox:latest"):
        assert getattr(profiles.choose(image), "name", None) == "official", image
    for image in ("jupyter/base", "index.docker.io/jupyter/base:2024"):
        assert getattr(profiles.choose(image), "name", None) == "hub-namespace", image
    # What the allowlist tells apart, profiles tell apart: other registries, ports, look-alikes.
    for image in ("registry.example/lab/x", "registry.example:5001/lab/x", "local.example/bar-nb:1", "python:2.7"):
        assert profiles.choose(image) is None, image
    assert getattr(profiles.choose("registry.example:5000/lab/x"), "name", None) == "other-registry"


def test_a_profile_pattern_that_is_not_a_pattern_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match=r"profile 'p': images: .*not an image pattern: 'a b'"):
        parse_profiles("profiles:\n  - name: p\n    images: ['a b']\n")


def test_the_api_gives_every_spelling_the_profile(papi: ProfileApi) -> None:
    for image in ("smtest/tensorflow-notebook:1", "docker.io/smtest/tensorflow-notebook:1"):
        code, body = papi.spawn(image=image)
        assert code == 202 and body["profile"] == "gpu", body
    code, body = papi.spawn(image="index.docker.io/smtest/tensorflow-notebook:1", mem_limit="3g")
    assert code == 202 and body["profile"] == "gpu", body  # the profile's maxima, not "no profile"
    code, body = papi.spawn(image="docker.io/smtest/other:1", profile="gpu")
    assert code == 400, body  # gpu's pattern is a tag pattern on another repository


def test_a_spawn_by_any_spelling_runs_with_the_profiles_limits(pstack: Any, images: dict[str, str]) -> None:
    """What reaches the engine: HostConfig.Memory and NanoCpus of the real container."""
    made = []
    for image in (images["httpd"], f"docker.io/{images['httpd']}", f"index.docker.io/{images['httpd']}"):
        response = pstack.http.post("/spawn", json={"user": "spelled", "image": image})
        body = response.get_json()
        assert response.status_code == 202 and body["profile"] == "limited", (image, body)
        pstack.created.append(body["hostname"])
        made.append(body["hostname"])
    for h in made:
        record = pstack.wait(h, FINAL, timeout=60)
        assert record.status == Status.ACTIVE, record.error
        host_config = pstack.docker.containers.get(record.container_id).attrs["HostConfig"]
        assert (host_config["Memory"], host_config["NanoCpus"]) == (96 * MIB, 500_000_000), record.image
        pstack.kill(h)
    for h in made:
        assert pstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
