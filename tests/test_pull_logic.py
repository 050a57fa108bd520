"""The pure parts of pulling images: the credentials file, policies in settings and profiles, the
progress count, the registry's refusal in words, and the single flight (on a fake engine API: the
behaviour against a real registry is tests/test_registry_pulls.py's)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest

from shared.errors import ConfigError, EngineError
from shared.profiles import parse_profiles
from shared.registries import parse_registry_auth, pinned, registry_key
from shared.settings import Settings
from worker.pulls import Puller, PullProgress, refusal

SECRET = "pa55-w0rd-never-shown"


def config(auths: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"auths": auths, **extra})


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- the credentials file --------------------------------------------------------------------
def test_a_docker_login_file_gives_credentials_per_registry() -> None:
    auths = parse_registry_auth(
        config(
            {
                "https://index.docker.io/v1/": {"auth": b64(f"hubuser:{SECRET}")},
                "Registry.Example:5000": {"username": "u", "password": SECRET},
                "https://quay.io/v2/": {"auth": b64("q:with:colons")},
            }
        )
    )
    hub, private, quay = (auths.for_image(i) for i in ("jupyter/base", "registry.example:5000/x/y:1", "quay.io/a/b"))
    assert hub is not None and hub.username == "hubuser" and hub.password == SECRET
    assert private is not None and private.auth_config() == {"username": "u", "password": SECRET}
    assert quay is not None and quay.password == "with:colons"
    assert auths.for_image("registry.example/x/y") is None  # another port is another registry
    # Registry names only: nothing a log line or traceback shows holds a credential.
    for shown in (repr(auths), str(auths), repr(hub), repr(Settings.from_env({"REGISTRY_AUTH": config({})}))):
        assert SECRET not in shown and "hubuser" not in shown


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not a JSON document"),
        ("[]", "expected a JSON object"),
        (config({"r.example": {"auth": "%%%"}}), "not base64"),
        (config({"r.example": {"auth": b64("no-colon")}}), "not base64 of user:password"),
        (config({"r.example": {"identitytoken": SECRET}}), "tokens are not supported"),
        (config({"r.example": {"username": "u"}}), "expected 'auth' or username and password"),
        (json.dumps({"credsStore": "desktop"}), "credential store"),
    ],
)
def test_a_bad_credentials_file_stops_start_up_without_showing_a_secret(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REGISTRY_AUTH": text})
    assert "REGISTRY_AUTH" in str(caught.value) and why in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_file_convention_reads_the_credentials_from_a_file(tmp_path: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text(config({"r.example:5000": {"auth": b64(f"u:{SECRET}")}}))
    settings = Settings.from_env({"REGISTRY_AUTH_FILE": str(path)})
    assert settings.registry_auth.for_image("r.example:5000/nb:1") is not None
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REGISTRY_AUTH_FILE": str(tmp_path / "missing.json")})
    assert "cannot read REGISTRY_AUTH_FILE" in str(caught.value)


def test_registry_keys_and_pinning() -> None:
    assert registry_key("https://index.docker.io/v1/") == "docker.io"
    assert registry_key("http://Host:5000/v2/") == "host:5000"
    digest = "sha256:" + "a" * 64
    assert pinned("127.0.0.1:5000/x/y:1", digest) == f"127.0.0.1:5000/x/y:1@{digest}"
    assert pinned(f"x/y@{digest}", "sha256:" + "b" * 64) == f"docker.io/x/y@{digest}"  # a digest given stays


# -- policies ------------------------------------------------------------------------------------
def test_pull_policy_setting_and_profile_fields() -> None:
    assert Settings.from_env({}).pull_policy == "if-not-present"
    assert Settings.from_env({"PULL_POLICY": "Always"}).pull_policy == "always"
    with pytest.raises(ConfigError, match="PULL_POLICY: expected one of if-not-present, always, never"):
        Settings.from_env({"PULL_POLICY": "sometimes"})
    profiles = parse_profiles(
        "profiles:\n"
        "  - {name: a, images: ['reg.example:5000/nb:1', 'jupyter/*'], pull_policy: never, prepull: true}\n"
        "  - {name: b, images: ['jupyter/*']}\n"
    )
    a, b = profiles.get("a"), profiles.get("b")
    assert a is not None and a.pull_policy == "never" and a.prepull_images == ("reg.example:5000/nb:1",)
    assert b is not None and b.pull_policy == "" and b.prepull_images == ()
    with pytest.raises(ConfigError) as caught:
        parse_profiles("profiles:\n  - {name: c, images: ['jupyter/*'], prepull: true, pull_policy: 3}\n")
    assert "prepull: true needs an image" in str(caught.value) and "pull_policy: expected" in str(caught.value)


# -- progress ------------------------------------------------------------------------------------
def test_progress_counts_bytes_and_layers_from_the_engine_stream() -> None:
    progress = PullProgress("r:5000/nb:1")
    messages: list[dict[str, Any]] = [
        {"status": "Pulling from nb", "id": "1"},
        {"status": "Already exists", "id": "base"},
        {"status": "Pulling fs layer", "id": "l1"},
        {"status": "Pulling fs layer", "id": "l2"},
        {"status": "Downloading", "id": "l1", "progressDetail": {"current": 100, "total": 1000}},
        {"status": "Downloading", "id": "l2", "progressDetail": {"current": 50, "total": 500}},
    ]
    for message in messages:
        progress.feed(message)
    assert progress.snapshot() == {
        "image": "r:5000/nb:1",
        "bytes_done": 150,
        "bytes_total": 1500,
        "layers_done": 1,
        "layers_total": 3,
    }
    assert progress.message() == "pulling r:5000/nb:1: 150 B of 1.5 kB, 1/3 layers"
    more: list[dict[str, Any]] = [
        {"status": "Download complete", "id": "l1"},
        {"status": "Extracting", "id": "l1", "progressDetail": {"current": 10, "total": 1000}},
        {"status": "Pull complete", "id": "l1"},
        {"status": "Pull complete", "id": "l2"},
        {"status": "Digest: sha256:abc"},
        {"status": "Status: Downloaded newer image for r:5000/nb:1"},
    ]
    for message in more:
        progress.feed(message)
    done = progress.snapshot()
    assert (done["bytes_done"], done["bytes_total"], done["layers_done"], done["layers_total"]) == (1500, 1500, 3, 3)


@pytest.mark.parametrize(
    ("said", "kind"),
    [
        ('Head "http://r:5000/v2/x/manifests/1": no basic auth credentials', "unauthorized: r:5000 wants credentials"),
        ("unauthorized: authentication required", "unauthorized: r:5000 wants credentials"),
        ("manifest for r:5000/x:1 not found: manifest unknown: manifest unknown", "unknown image: r:5000"),
        ('Get "http://r:5000/v2/": dial tcp 127.0.0.1:1: connect: connection refused', "registry unreachable"),
        ("lookup r on 10.0.0.1:53: no such host", "registry unreachable"),
        ("something else entirely", "the registry refused it"),
    ],
)
def test_the_registry_refusal_in_words(said: str, kind: str) -> None:
    assert refusal("r:5000/x:1", said, parse_registry_auth("")).startswith(kind)


def test_a_refusal_never_repeats_a_credential() -> None:
    auths = parse_registry_auth(config({"r:5000": {"username": "u", "password": SECRET}}))
    text = refusal("r:5000/x:1", f"unauthorized: u:{SECRET} and {SECRET} and {b64('u:' + SECRET)}", auths)
    assert text.startswith("unauthorized: r:5000 refused REGISTRY_AUTH's credentials")
    assert SECRET not in text and b64("u:" + SECRET) not in text


# -- the single flight -----------------------------------------------------------------------------
class FakeApi:
    """An engine API whose pulls wait until the test lets them finish."""

    def __init__(self, fail: str = "") -> None:
        self.pulls: list[tuple[str, str, Any]] = []
        self.release = threading.Event()
        self.present: set[str] = set()
        self.fail = fail
        self.lock = threading.Lock()

    def inspect_image(self, image: str) -> dict[str, Any]:
        if image not in self.present:
            raise docker.errors.ImageNotFound("no such image")
        return {"Id": "sha256:1"}

    def pull(self, name: str, tag: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        with self.lock:
            self.pulls.append((name, tag, kwargs.get("auth_config")))
        if self.fail:
            raise docker.errors.APIError("500", explanation=self.fail)
        return self._stream(f"{name}:{tag}")

    def _stream(self, image: str) -> Iterator[dict[str, Any]]:
        yield {"status": "Pulling fs layer", "id": "l1"}
        assert self.release.wait(30)
        yield {"status": "Downloading", "id": "l1", "progressDetail": {"current": 10, "total": 10}}
        yield {"status": "Pull complete", "id": "l1"}
        self.present.add(image)


def run_many(
    puller: Puller, n: int, policy: str = "if-not-present"
) -> tuple[list[Any], list[list[str]], list[threading.Thread]]:
    outcomes: list[Any] = [None] * n
    stages: list[list[str]] = [[] for _ in range(n)]

    def one(i: int) -> None:
        try:
            outcomes[i] = puller.ensure("r:5000/nb:1", policy, lambda stage, _m, _d: stages[i].append(stage))
        except EngineError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return outcomes, stages, threads


def test_concurrent_spawns_of_one_missing_image_make_one_pull() -> None:
    api = FakeApi()
    auths = parse_registry_auth(config({"r:5000": {"username": "u", "password": SECRET}}))
    puller = Puller(lambda: api, auths, interval=0.0)
    outcomes, stages, threads = run_many(puller, 10)
    api.release.set()
    for t in threads:
        t.join(30)
    assert len(api.pulls) == 1 and api.pulls[0] == ("r:5000/nb", "1", {"username": "u", "password": SECRET})
    assert outcomes == [True] * 10
    assert all(s and s[-1] == "pulled" for s in stages), stages  # every waiter hears the outcome
    # Present now: the next spawn pulls nothing; ``always`` pulls again.
    assert puller.ensure("r:5000/nb:1", "if-not-present", lambda *_: None) is False
    assert puller.ensure("r:5000/nb:1", "always", lambda *_: None) is True and len(api.pulls) == 2


def test_every_waiter_gets_the_registry_refusal_and_never_pulls_nothing() -> None:
    api = FakeApi(fail="unauthorized: authentication required")
    puller = Puller(lambda: api, parse_registry_auth(""))
    outcomes, _, threads = run_many(puller, 5)
    for t in threads:
        t.join(30)
    assert all(isinstance(o, EngineError) for o in outcomes)
    assert all("could not be pulled: unauthorized" in str(o) for o in outcomes), outcomes
    assert 1 <= len(api.pulls) <= 5  # a refusal is not remembered: the next spawn asks again
    before = len(api.pulls)
    with pytest.raises(EngineError, match="PULL_POLICY never"):
        puller.ensure("r:5000/nb:1", "never", lambda *_: None)
    assert len(api.pulls) == before


def test_progress_reports_are_rate_limited() -> None:
    now = [0.0]
    api = FakeApi()
    api.release.set()
    puller = Puller(lambda: api, parse_registry_auth(""), interval=0.5, clock=lambda: now[0])
    seen: list[str] = []
    puller.ensure("r:5000/nb:1", "always", lambda stage, _m, _d: seen.append(stage))
    # Three stream lines at the same instant: one ``pulling`` report, then ``pulled``.
    assert seen == ["pulling", "pulled"]
