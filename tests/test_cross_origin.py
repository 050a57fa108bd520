"""Cross-origin notebooks and Binder entries in PROFILES_FILE (shared/profiles.py), and how the worker
hands the allowed origins to a notebook server (worker/spawner.py ``Spawner.with_allowed_origins``).

Pure logic: the browser tests (tests/test_binder.py) show a real Jupyter server taking them.
"""

from __future__ import annotations

import re
import warnings

import pytest

from shared.errors import ConfigError
from shared.profiles import ORIGIN_ENV, allowed_origins, origin_arguments, origin_pattern, parse_profiles
from shared.record import Notebook
from shared.settings import Settings
from worker.engine import NotebookSpec
from worker.spawner import Spawner

PAGE = "http://127.0.0.1:8080"
BOOK = "https://book.example.org"
PROFILES = """
profiles:
  - name: cmd
    images: ["swarm-manager-test/jupyter:*"]
    command: ["jupyter", "notebook", "--ip=0.0.0.0"]
  - name: own
    allow_origins: ["https://other.example.org/"]
  - name: closed
    cors: false
  - name: arg
    command: ["start.sh"]
    origin_arg: "--ServerApp.allow_origin_pat={pattern}"
  - name: args-env
    environment: {NOTEBOOK_ARGS: "--ServerApp.root_dir=/work"}
binder:
  - spec: gh/org/repo/*
    image: jupyter/minimal-notebook:2024
  - spec: gh/org/*
    image: jupyter/base-notebook:2024
    profile: own
  - spec: git/https://gitlab.example/org/nb/*
    image: jupyter/minimal-notebook:2024
"""


def spawner(**settings: str) -> Spawner:
    return Spawner(
        None,  # type: ignore[arg-type]  # with_allowed_origins reads neither the store nor the engine
        None,  # type: ignore[arg-type]
        Settings.from_env({"CORS_ORIGINS": f"{PAGE},{BOOK}", **settings}),
        profiles=parse_profiles(PROFILES),
    )


def spec_for(command: list[str] | None = None, environment: dict[str, str] | None = None) -> NotebookSpec:
    return NotebookSpec("h", "i", "u", "d", 8888, "inst", command=command, environment=environment or {})


def record(profile: str) -> Notebook:
    return Notebook(hostname="h", domainname="d", image="i", url="h.d", profile=profile)


def test_the_pattern_matches_exactly_the_origins() -> None:
    pattern = origin_pattern([PAGE, BOOK, "http://[::1]:8888"])
    assert "\\" not in pattern and " " not in pattern and "'" not in pattern and '"' not in pattern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "[[]" is a one-character class, as meant
        compiled = re.compile(pattern)
    for origin, allowed in (
        (PAGE, True),
        (BOOK, True),
        ("http://[::1]:8888", True),
        ("http://127x0x0x1:8080", False),  # a dot is a dot
        (PAGE + "0", False),
        ("http://evil.example/" + PAGE, False),
        (BOOK + ".evil.example", False),
        ("https://book-example.org", False),
    ):
        assert bool(compiled.match(origin)) is allowed, origin


def test_a_profile_command_gets_the_origins_as_arguments() -> None:
    worker = spawner()
    made = worker.with_allowed_origins(spec_for(command=["jupyter", "notebook"]), record("cmd"))
    pattern = origin_pattern([PAGE, BOOK])
    assert made.command == [
        "jupyter",
        "notebook",
        f"--ServerApp.allow_origin_pat={pattern}",
        f"--NotebookApp.allow_origin_pat={pattern}",
    ]
    assert ORIGIN_ENV not in made.environment


def test_without_a_command_the_origins_go_to_notebook_args() -> None:
    worker = spawner()
    made = worker.with_allowed_origins(spec_for(), record(""))
    assert made.command is None
    pattern = origin_pattern([PAGE, BOOK])
    assert made.environment[ORIGIN_ENV] == (
        f"--ServerApp.allow_origin_pat={pattern} --NotebookApp.allow_origin_pat={pattern}"
    )
    # A profile's own NOTEBOOK_ARGS is kept, the origins added after it.
    kept = worker.with_allowed_origins(
        spec_for(environment={ORIGIN_ENV: "--ServerApp.root_dir=/work"}), record("args-env")
    )
    assert kept.environment[ORIGIN_ENV].startswith("--ServerApp.root_dir=/work --ServerApp.allow_origin_pat=")


def test_profiles_choose_their_origins_or_none() -> None:
    worker = spawner()
    own = worker.with_allowed_origins(spec_for(), record("own"))
    assert own.environment[ORIGIN_ENV].count("https://other[.]example[.]org") == 2
    assert PAGE.replace(".", "[.]") not in own.environment[ORIGIN_ENV]
    closed = spec_for()
    assert worker.with_allowed_origins(closed, record("closed")) == closed  # cors: false, the opt-out
    arg = worker.with_allowed_origins(spec_for(command=["start.sh"]), record("arg"))
    assert arg.command == ["start.sh", f"--ServerApp.allow_origin_pat={origin_pattern([PAGE, BOOK])}"]
    # No CORS_ORIGINS and no profile origins: nothing changes (as before this feature).
    quiet = spawner(CORS_ORIGINS="")
    plain = spec_for()
    assert quiet.with_allowed_origins(plain, record("")) == plain
    assert allowed_origins(None, ()) == () and origin_arguments(None, ()) == []


def test_binder_entries_match_specs_as_clients_send_them() -> None:
    profiles = parse_profiles(PROFILES)
    assert profiles.for_binder("gh", "org/repo/main").image == "jupyter/minimal-notebook:2024"  # type: ignore[union-attr]
    assert profiles.for_binder("gh", "Org/Repo/feature/x/").image == "jupyter/minimal-notebook:2024"  # type: ignore[union-attr]
    other = profiles.for_binder("gh", "org/other/HEAD")
    assert other is not None and other.profile == "own" and other.image == "jupyter/base-notebook:2024"
    assert profiles.for_binder("gh", "someone/repo/main") is None
    assert profiles.for_binder("gl", "org/repo/main") is None
    assert profiles.for_binder("git", "https://gitlab.example/org/nb/HEAD") is not None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("binder: {spec: x}", "binder: expected a list"),
        ("binder: [{spec: nothing, image: a/b:1}]", "binder #1: spec: expected <provider>/<spec pattern>"),
        ("binder: [{spec: 'gh/a/*', image: 'A/B'}]", "binder #1: image:"),
        ("binder: [{spec: 'gh/a/*'}]", "binder #1: image:"),
        ("binder: [{spec: 'gh/a/*', image: a/b:1, profile: nope}]", "binder #1: profile: no profile named 'nope'"),
        ("binder: [{spec: 'gh/a/*', image: a/b:1, imgae: c}]", "binder #1: unknown key 'imgae'"),
        (
            "profiles: [{name: p, images: ['x/*']}]\nbinder: [{spec: 'gh/a/*', image: a/b:1, profile: p}]",
            "binder #1: profile: 'p' does not apply to image 'a/b:1'",
        ),
        ("profiles: [{name: p, allow_origins: ['ftp://x']}]", "allow_origins: expected origins like"),
        ("profiles: [{name: p, allow_origins: 'https://a.example/path'}]", "allow_origins: expected origins like"),
        ("profiles: [{name: p, cors: 'no'}]", "cors: expected true or false"),
        ("profiles: [{name: p, cors: false, allow_origins: ['https://a.example']}]", "cors: false leaves nothing"),
        ("profiles: [{name: p, origin_arg: '--x'}]", "origin_arg: expected one argument containing {pattern}"),
        ("profiles: [{name: p, origin_arg: '--a={pattern} --b={pattern}'}]", "origin_arg: expected one argument"),
        ("bindr: []", "unknown top-level key(s) 'bindr'"),
    ],
)
def test_bad_entries_are_refused_at_start_up(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_profiles(text)
    assert problem in str(raised.value)
