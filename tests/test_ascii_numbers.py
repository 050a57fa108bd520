"""Numbers from input and settings are ASCII digits only.

Python's ``int()`` and ``float()`` (and ``\\d`` in a regex) also read other scripts' digits:
``512m`` written in Arabic-Indic digits became a 512 MiB limit. Every size, CPU count, count,
ttl, offset and limit the API reads from a request (400) or a process reads from its settings or
PROFILES_FILE (ConfigError) refuses them, as it refuses Python's other extras (``1_024``, ``1e3``,
``inf``)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.profiles import parse_cpus, parse_profiles, parse_size
from shared.settings import Settings
from testkit.stack import Stack

# The code point of each script's zero: its digits follow it, as ASCII's follow "0".
ZEROS = {
    "arabic-indic": 0x0660,
    "persian": 0x06F0,
    "nko": 0x07C0,
    "devanagari": 0x0966,
    "bengali": 0x09E6,
    "thai": 0x0E50,
    "mongolian": 0x1810,
    "fullwidth": 0xFF10,
    "math-bold": 0x1D7CE,
}


def spelled(text: str, zero: int) -> str:
    """``text`` with its ASCII digits written in the script whose zero is ``zero``."""
    return "".join(chr(zero + int(c)) if c in "0123456789" else c for c in text)


# Five hundred and twelve, one half and five (or fifteen), in scripts int() and float() accept.
NON_ASCII = {name: (spelled("512", zero), spelled("0.5", zero), spelled("5", zero)) for name, zero in ZEROS.items()}
ARABIC = ZEROS["arabic-indic"]
NON_ASCII["one-digit-mixed"] = (f"5{spelled('1', ARABIC)}2", f"0.{spelled('5', ARABIC)}", f"1{spelled('5', ARABIC)}")
# ASCII, but not a plain decimal number: other things int()/float() accept.
PYTHON_EXTRAS = {
    "underscore": ("5_12", "0_0.5", "1_0"),
    "exponent": ("5.12e2", "5e-1", "5e0"),
    "infinity": ("inf", "infinity", "nan"),
}
SPELLINGS = {**NON_ASCII, **PYTHON_EXTRAS}
IDS = list(SPELLINGS)


def test_the_spellings_are_numbers_to_python() -> None:
    """Why this matters: each of these reads as a number with the built-ins."""
    for whole, half, five in NON_ASCII.values():
        assert int(whole) == 512 and float(half) == 0.5 and int(five) in (5, 15)


@pytest.mark.parametrize("name", IDS)
def test_sizes_and_cores_refuse_them(name: str) -> None:
    whole, half, _ = SPELLINGS[name]
    for size in (f"{whole}m", f"{whole}", f"{whole}MiB", f"{half}g"):
        with pytest.raises(ValueError):
            parse_size(size)
    for cores in (half, whole, f"{whole}.0"):
        with pytest.raises(ValueError):
            parse_cpus(cores)
    assert parse_size("512m") == 512 * 1024 * 1024 and parse_cpus("0.5") == 0.5  # ASCII still is


@pytest.mark.parametrize("name", IDS)
def test_settings_refuse_them(name: str) -> None:
    whole, half, five = SPELLINGS[name]
    for env in (
        {"MAX_NOTEBOOKS": whole},
        {"MAX_NOTEBOOKS_PER_USER": whole},
        {"SPAWN_RATE": whole},
        {"NOTEBOOK_PORT": f"8{whole}"},
        {"PIDS_LIMIT": whole},
        {"MAX_AGE": whole},
        {"START_TIMEOUT": whole},
        {"PROBE_INTERVAL": half},
        {"DEFAULT_MEM_LIMIT": f"{whole}m"},
        {"DEFAULT_CPU_LIMIT": half},
        {"POOL": f"busybox={five}"},
    ):
        with pytest.raises(ConfigError, match=f"bad settings: {next(iter(env))}") as refused:
            Settings.from_env(env)
        assert "expected a number from" not in str(refused.value)  # refused as a spelling, not by range


def test_settings_still_take_ascii_numbers() -> None:
    settings = Settings.from_env(
        {
            "MAX_NOTEBOOKS": " 512 ",
            "MAX_AGE": "3600",
            "PROBE_INTERVAL": "0.5",
            "IDLE_TIMEOUT": ".5",
            "DEFAULT_MEM_LIMIT": "512m",
            "DEFAULT_CPU_LIMIT": "0.5",
            "POOL": "busybox=5",
        }
    )
    assert (settings.max_notebooks, settings.max_age, settings.probe_interval) == (512, 3600.0, 0.5)
    assert (settings.idle_timeout, settings.default_mem_limit) == (0.5, 512 * 1024 * 1024)
    assert (settings.default_cpu_limit, settings.pool) == (0.5, (("busybox", 5),))


@pytest.mark.parametrize("name", IDS)
def test_profiles_refuse_them(name: str) -> None:
    whole, half, _ = SPELLINGS[name]
    for field, value in (
        ("mem_limit", f"{whole}m"),
        ("cpu_limit", half),
        ("max_mem_limit", f"{whole}m"),
        ("max_cpu_limit", half),
    ):
        extra = "\n    user_limits: true" if field.startswith("max_") else ""
        text = f"profiles:\n  - name: p\n    {field}: '{value}'{extra}\n"
        with pytest.raises(ConfigError, match=f"profile 'p': {field}: "):
            parse_profiles(text)


# -- through the API ---------------------------------------------------------------------------------
PROFILES = """
profiles:
  - name: roomy
    images: ["smtest/*"]
    user_limits: true
    max_mem_limit: 4g
    max_cpu_limit: 4
"""


@pytest.fixture(scope="module")
def numbers(stack_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    path = Path(tmp_path_factory.mktemp("numbers")) / "profiles.yaml"
    path.write_text(textwrap.dedent(PROFILES))
    return stack_factory("numbers", worker=False, PROFILES_FILE=str(path))  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", IDS)
def test_the_api_refuses_them_with_400(numbers: Stack, name: str) -> None:
    whole, half, five = SPELLINGS[name]
    before = numbers.store.count()
    for fields in (
        {"mem_limit": f"{whole}m"},
        {"mem_limit": f"{half}g"},
        {"cpu_limit": half},
        {"cpu_limit": five},
        {"ttl": whole},
    ):
        for send in ("json", "data"):
            response = numbers.http.post("/spawn", **{send: {"image": "smtest/nb:1", "user": "u", **fields}})
            body = response.get_json()
            assert response.status_code == 400, (fields, body)
            assert body["code"] == "invalid_input", body
    for query in (f"limit={whole}", f"offset={whole}"):
        response = numbers.http.get(f"/containers?{query}")
        assert response.status_code == 400, (query, response.get_json())
    assert numbers.store.count() == before


def test_the_api_still_takes_ascii_numbers(numbers: Stack) -> None:
    response = numbers.http.post(
        "/spawn", json={"image": "smtest/nb:1", "user": "u", "mem_limit": "512m", "cpu_limit": "0.5", "ttl": "60"}
    )
    assert response.status_code == 202, response.get_json()
    hostname = response.get_json()["hostname"]
    assert numbers.store.internal(hostname, "mem_limit") == str(512 * 1024 * 1024)
    assert numbers.store.internal(hostname, "cpu_limit") == "0.5"
    assert numbers.http.get("/containers?limit=5&offset=0").status_code == 200
