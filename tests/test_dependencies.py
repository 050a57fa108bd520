"""The dependency set: what the product imports is declared, and every lock matches what it is made from.

The fresh-clone run (tests/test_make_run.py) proves the runtime lock is enough by running from it
alone; these checks name the missing package or the stale pin when it is not.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from testkit.support import ROOT

PRODUCT = ("api", "shared", "worker", "cli")
#: The project's own packages and the standard library are not dependencies.
OWN = set(PRODUCT) | {"tests", "bench", "testkit"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    found = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", text, flags=re.M))
    assert found, f"{lock} pins nothing"
    return {canonical(n): v for n, v in found.items()}


def requirements(source: str) -> list[Requirement]:
    out = []
    for line in (ROOT / source).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def top_level_imports(packages: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def imported_modules() -> set[str]:
    return {m for m in top_level_imports(PRODUCT) if m not in OWN and m not in sys.stdlib_module_names}


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    declared = {canonical(r.name) for r in requirements("requirements.in")}
    distributions = packages_distributions()
    undeclared = {}
    for module in sorted(imported_modules()):
        owners = {canonical(d) for d in distributions.get(module, [])}
        assert owners, f"the product imports {module!r}, which no installed distribution provides"
        if not owners & declared:
            undeclared[module] = sorted(owners)
    assert not undeclared, f"imported but not declared in requirements.in: {undeclared}"


@pytest.mark.parametrize(
    ("source", "lock"),
    [
        ("requirements.in", "requirements.txt"),
        ("requirements-dev.in", "requirements-dev.txt"),
        ("requirements-bench.in", "requirements-bench.txt"),
        ("requirements-jupyterhub.in", "requirements-jupyterhub.txt"),
    ],
)
def test_each_lock_pins_what_its_source_asks_for(source: str, lock: str) -> None:
    pinned = pins(lock)
    for requirement in requirements(source):
        name = canonical(requirement.name)
        assert name in pinned, f"{requirement} ({source}) is not in {lock}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement} in {source}: run `make lock`"
        )
    text = (ROOT / lock).read_text()
    unhashed = re.findall(r"^([A-Za-z0-9._-]+)==\S+ *$", text, flags=re.M)
    assert not unhashed, f"{lock} pins without hashes: {unhashed}"


def test_extras_the_runtime_relies_on_are_declared() -> None:
    # kombu's Redis transport imports `packaging`, which only its `redis` extra brings.
    declared = {canonical(r.name): r.extras for r in requirements("requirements.in")}
    assert "redis" in declared["celery"] and "redis" in declared["kombu"]
    assert "packaging" in pins("requirements.txt")


def test_the_sets_agree_on_every_shared_package() -> None:
    runtime, dev, bench = pins("requirements.txt"), pins("requirements-dev.txt"), pins("requirements-bench.txt")
    for other, name in ((dev, "requirements-dev.txt"), (bench, "requirements-bench.txt")):
        differ = {p: (runtime[p], other[p]) for p in runtime.keys() & other.keys() if runtime[p] != other[p]}
        assert not differ, f"{name} pins differently from requirements.txt: {differ}"
    assert not {"pytest", "ruff", "mypy", "playwright", "uv"} & runtime.keys(), "test tools in the runtime lock"


def test_the_project_declares_the_runtime_set_and_installs_from_locks() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dependencies = { file = ["requirements.in"] }' in pyproject
    bring_up = (ROOT / "scripts" / "bring-up.sh").read_text()
    assert "--require-hashes" in bring_up
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        assert "--require-hashes -r requirements.txt" in (ROOT / dockerfile).read_text(), dockerfile
    assert not list(Path(ROOT).glob("Procfile*")), "make run is supervised by supervisord, not a Procfile"


@pytest.mark.parametrize(
    ("module", "kept_out"),
    [
        # The record store (and its metrics) is used by the API, the workers and the CLI alike.
        ("shared.store", ("celery", "kombu", "docker", "flask")),
        # The API never talks to the engine.
        ("api", ("docker", "worker")),
    ],
)
def test_layers_import_only_what_they_need(module: str, kept_out: tuple[str, ...]) -> None:
    import subprocess

    probe = f"import sys, {module}; print(' '.join(m for m in {kept_out!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"importing {module} brings in {done.stdout.split()}"


@pytest.mark.parametrize("package", ["bench", "testkit", *PRODUCT])
def test_only_tests_import_tests(package: str) -> None:
    """The benchmarks take what they share with the tests from testkit/, as the tests do."""
    assert "tests" not in top_level_imports((package,)), f"{package}/ imports from tests/"
