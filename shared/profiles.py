"""Per-image profiles: what a notebook from a given image gets (port, command, limits, placement).

An operator writes them in a YAML file named by ``PROFILES_FILE``::

    profiles:
      - name: gpu
        images: ["*/tensorflow-notebook:*", "registry.example/gpu/*"]
        mem_limit: 4g
        cpu_limit: 2
        constraints: ["node.labels.gpu==true"]
        user_limits: true          # users may ask for other limits ...
        max_mem_limit: 16g         # ... up to these
        max_cpu_limit: 8
        token_env: JUPYTER_TOKEN   # how the notebook's own token is passed (the default), or
        # token_arg: "--ServerApp.token={token}"  (added to command), or token: false (none)
        allow_origins: ["https://book.example.org"]  # pages that may use its kernels (default CORS_ORIGINS)
        # cors: false                               # or none at all for this profile's notebooks
    binder:                        # what Binder's GET /build/<provider>/<spec> launches
      - spec: gh/org/repo/*        # a glob over <provider>/<spec>; the first match wins
        image: jupyter/minimal-notebook:2024
        profile: small             # optional; without it the image's own (and its warm pool)

Both sides load the same file: the API to pick a spawn's profile and check the limits a user
asks for, the workers to build the notebook's spec from it. The file is validated completely
at start-up (:func:`load_profiles`, called from ``Settings.from_env``); every problem is
reported at once, naming the file, the profile and the field.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from shared.errors import ConfigError, InvalidInput
from shared.limits import ImageRef, normalize, parse_pattern
from shared.limits import matches as image_matches
from shared.record import Internal
from shared.registries import parse_pull_policy
from shared.validation import DECIMAL, IMAGE_RE, parse_decimal, validate_image

#: A limit's value: bytes (int) or cores (float).
_N = TypeVar("_N", int, float)

KIB = 1024
#: The engine refuses smaller memory limits ("Minimum memory limit allowed is 6MB").
MIN_MEMORY = 6 * KIB * KIB
MAX_MEMORY = 2**62
#: Docker's CPU limit is in billionths of a core; below a hundredth it is meaningless for a notebook.
MIN_CPUS = 0.01
MAX_CPUS = 4096.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SIZE = re.compile(rf"^({DECIMAL})\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "k": KIB, "m": KIB**2, "g": KIB**3, "t": KIB**4}
# A Swarm placement constraint: <attribute> ==|!= <value>, e.g. node.labels.gpu==true.
_CONSTRAINT = re.compile(r"^\s*[A-Za-z0-9_.\-]+\s*(==|!=)\s*\S+\s*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

FIELDS = (
    "name",
    "images",
    "port",
    "command",
    "environment",
    "mem_limit",
    "cpu_limit",
    "constraints",
    "user_limits",
    "max_mem_limit",
    "max_cpu_limit",
    "token",
    "token_env",
    "token_arg",
    "allow_origins",
    "cors",
    "origin_arg",
    "pull_policy",
    "prepull",
    "warm_kernel",
)
#: The keys of one entry of the file's ``binder`` list.
BINDER_FIELDS = ("spec", "image", "profile")


# -- values ------------------------------------------------------------------------------
def parse_size(value: object) -> int:
    """Bytes from a whole number of bytes or a string like ``512m``, ``2g``, ``1.5GiB``.

    Units are binary (k = 1024), as Docker's own ``--memory`` reads them. Raises ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size such as 512m or 2g, got {type(value).__name__} {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if not match:
            raise ValueError(f"not a size: {value!r} (a number of bytes, or a number with k, m, g or t, e.g. 512m)")
        scaled = float(match.group(1)) * _UNITS[match.group(2).lower()]
        if not math.isfinite(scaled):  # hundreds of digits: int() of it would raise OverflowError
            raise ValueError(f"{value[:40]!r}... is too large")
        size = int(scaled)
    if size < MIN_MEMORY:
        raise ValueError(f"{value!r} is less than the engine's minimum of 6m")
    if size > MAX_MEMORY:
        raise ValueError(f"{value!r} is too large")
    return size


def parse_cpus(value: object) -> float:
    """Cores from a number or a numeric string (``0.5``, ``2``). Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number of cores such as 0.5 or 2, got {type(value).__name__} {value!r}")
    try:
        cpus = parse_decimal(value.strip()) if isinstance(value, str) else float(value)
    except ValueError:
        raise ValueError(f"not a number of cores: {value!r}") from None
    if not math.isfinite(cpus) or not MIN_CPUS <= cpus <= MAX_CPUS:
        raise ValueError(f"expected a number of cores from {MIN_CPUS:g} to {MAX_CPUS:g}, got {value!r}")
    return cpus


def format_size(size: int) -> str:
    """``2147483648`` -> ``2g``: sizes in messages as an operator would write them."""
    for unit in ("t", "g", "m", "k"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


# -- the model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """One profile; ``None``/empty fields leave the settings' defaults (NOTEBOOK_PORT, the image's CMD)."""

    name: str
    # Image patterns, read as ALLOWED_IMAGES reads them (shared/limits.py); empty: only by name.
    images: tuple[str, ...] = ()
    port: int | None = None
    command: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    mem_limit: int | None = None  # bytes
    cpu_limit: float | None = None  # cores
    constraints: tuple[str, ...] = ()
    user_limits: bool = False  # may a spawn ask for other limits (up to the maxima)?
    max_mem_limit: int | None = None
    max_cpu_limit: float | None = None
    # The notebook's own secret token (NOTEBOOK_TOKEN): off for images that cannot take one;
    # passed in ``token_env`` (default JUPYTER_TOKEN), or as ``token_arg`` added to ``command``
    # ("--ServerApp.token={token}") for images that read it from the command line only.
    token: bool = True
    token_env: str = ""
    token_arg: str = ""
    # Cross-origin pages (thebe): the origins the notebook server lets use its API and kernels
    # (``allow_origins``; default CORS_ORIGINS), none with ``cors: false``; passed as
    # ``origin_arg`` (default: both ORIGIN_ARGS) added to ``command``, or in NOTEBOOK_ARGS.
    allow_origins: tuple[str, ...] = ()
    cors: bool = True
    origin_arg: str = ""
    # Images from registries (shared/registries.py): this profile's PULL_POLICY ("" for the setting's),
    # and whether its images (the patterns that name one image, no globs) are pulled onto every
    # engine or node ahead of demand.
    pull_policy: str = ""
    prepull: bool = False
    # A kernel (its name, e.g. python3) each warm-pool member of these images starts before it is
    # offered, as the session at path "/" that thebe asks for: a page handed the member finds its
    # kernel running instead of starting one (~0.7 s). Jupyter servers only; "" for none.
    warm_kernel: str = ""
    _patterns: tuple[ImageRef, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_patterns", tuple(parse_pattern(p) for p in self.images))

    @property
    def prepull_images(self) -> tuple[str, ...]:
        """The images to pull ahead of demand: with ``prepull``, each pattern that names one image."""
        return tuple(p for p in self.images if IMAGE_RE.fullmatch(p)) if self.prepull else ()

    def matches(self, image: str) -> bool:
        """Whether a pattern matches ``image``, both in the canonical form the allowlist compares
        (``docker.io/x/nb:1`` and ``index.docker.io/x/nb:1`` are ``x/nb:1``): no other spelling
        of an image escapes its profile. An invalid reference matches nothing."""
        try:
            ref = normalize(image)
        except ValueError:
            return False
        return any(image_matches(ref, pattern) for pattern in self._patterns)

    def requested(self, mem_limit: object = None, cpu_limit: object = None) -> Limits:
        """The limits a spawn asks for, checked against this profile; raises InvalidInput."""
        mem = None if _absent(mem_limit) else mem_limit
        cpu = None if _absent(cpu_limit) else cpu_limit
        if mem is None and cpu is None:
            return Limits()
        if not self.user_limits:
            raise InvalidInput(f"profile {self.name!r} does not let users choose mem_limit or cpu_limit")
        return Limits(
            mem_limit=self._chosen("mem_limit", mem, self.max_mem_limit, parse_size, format_size),
            cpu_limit=self._chosen("cpu_limit", cpu, self.max_cpu_limit, parse_cpus, "{:g}".format),
        )

    def _chosen(
        self, name: str, raw: object, maximum: _N | None, parse: Callable[[Any], _N], show: Callable[[_N], str]
    ) -> _N | None:
        """One limit a spawn asks for (``name`` as the request spells it; None: not asked for), parsed
        and checked against this profile's maximum; raises InvalidInput."""
        if raw is None:
            return None
        if maximum is None:
            raise InvalidInput(f"profile {self.name!r} does not let users choose {name}")
        try:
            value = parse(raw)
        except ValueError as exc:
            raise InvalidInput(f"{name}: {exc}") from None
        if value > maximum:
            raise InvalidInput(f"{name} {show(value)} is over the maximum of profile {self.name!r} ({show(maximum)})")
        return value


@dataclass(frozen=True)
class Limits:
    """Limits a user asked for (None: the profile's own)."""

    mem_limit: int | None = None
    cpu_limit: float | None = None

    def internal(self) -> dict[Internal, str]:
        """As the record's internal fields (``_mem_limit``, ``_cpu_limit``): only what was asked for."""
        out = {}
        if self.mem_limit is not None:
            out[Internal.MEM_LIMIT] = str(self.mem_limit)
        if self.cpu_limit is not None:
            out[Internal.CPU_LIMIT] = repr(self.cpu_limit)
        return out

    @classmethod
    def from_internal(cls, mem_limit: str | None, cpu_limit: str | None) -> Limits:
        """Back from the record; a value that does not parse is ignored (the profile's own applies)."""
        mem: int | None
        cpu: float | None
        try:
            mem = int(mem_limit) if mem_limit else None
        except ValueError:
            mem = None
        try:
            cpu = float(cpu_limit) if cpu_limit else None
        except ValueError:
            cpu = None
        return cls(mem_limit=mem, cpu_limit=cpu)


@dataclass(frozen=True)
class BinderEntry:
    """One entry of the file's ``binder`` list: what ``GET /build/<provider>/<spec>`` launches.

    ``spec`` is a glob over ``<provider>/<spec>`` as the client sends it (percent-escapes decoded,
    trailing ``/`` dropped), compared case-insensitively: ``gh/org/repo/*`` is every ref of that
    GitHub repository. ``profile`` "" leaves the image's own profile (and its warm pool).
    """

    spec: str
    image: str
    profile: str = ""

    def matches(self, provider: str, spec: str) -> bool:
        return fnmatch.fnmatchcase(binder_key(provider, spec), self.spec.lower())


def binder_key(provider: str, spec: str) -> str:
    """What binder patterns are matched against: ``<provider>/<spec>``, lower case, no trailing ``/``."""
    return f"{provider}/{spec}".rstrip("/").lower()


class Profiles:
    """The operator's profiles, in file order (the first whose pattern matches an image wins), and
    the Binder entries (the first whose spec pattern matches wins)."""

    def __init__(self, profiles: Sequence[Profile] = (), binder: Sequence[BinderEntry] = ()) -> None:
        self._profiles = list(profiles)
        self._by_name = {p.name: p for p in self._profiles}
        self.binder = tuple(binder)

    def for_binder(self, provider: str, spec: str) -> BinderEntry | None:
        """The entry for a Binder launch of ``<provider>/<spec>``; None for a spec nobody mapped."""
        return next((entry for entry in self.binder if entry.matches(provider, spec)), None)

    def __iter__(self) -> Iterator[Profile]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Profile | None:
        return self._by_name.get(name)

    def for_image(self, image: str) -> Profile | None:
        return next((p for p in self._profiles if p.matches(image)), None)

    def choose(self, image: str, name: object = None) -> Profile | None:
        """The profile a spawn of ``image`` gets: the one it names, else the image's first match.

        A named profile must exist and, if it has image patterns, match the image (an operator
        who ties a profile to images means it); one without patterns can be named for any
        image. Raises InvalidInput.
        """
        if _absent(name):
            return self.for_image(image)
        if not isinstance(name, str):
            raise InvalidInput("profile must be a string")
        profile = self._by_name.get(name.strip())
        if profile is None:
            known = ", ".join(sorted(self._by_name)) or "none are configured"
            raise InvalidInput(f"no profile named {name.strip()[:64]!r} (known: {known})")
        if profile.images and not profile.matches(image):
            raise InvalidInput(
                f"profile {profile.name!r} does not apply to image {image!r} "
                f"(it applies to {', '.join(profile.images)})"
            )
        return profile


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# -- cross-origin notebooks ---------------------------------------------------------------
#: How a notebook server learns the origins allowed to use it, unless its profile says
#: (``origin_arg``): Jupyter Server's and Jupyter Notebook 6's own options (each ignores the other's).
ORIGIN_ARGS = ("--ServerApp.allow_origin_pat={pattern}", "--NotebookApp.allow_origin_pat={pattern}")
#: Where the arguments go for a profile without a ``command`` (the image's own CMD): the variable
#: whose words jupyter/docker-stacks' start-notebook script adds to the server's command line.
ORIGIN_ENV = "NOTEBOOK_ARGS"
#: An origin's characters that mean something in a regular expression, each as a one-character class.
_ORIGIN_ESCAPES = {".": "[.]", "[": "[[]", "]": "[]]"}


def allowed_origins(profile: Profile | None, default: Sequence[str]) -> tuple[str, ...]:
    """The page origins a notebook's server must let use its API and kernels: the profile's
    ``allow_origins``, else ``default`` (CORS_ORIGINS); none when its profile says ``cors: false``."""
    if profile is not None and not profile.cors:
        return ()
    if profile is not None and profile.allow_origins:
        return profile.allow_origins
    return tuple(default)


def origin_pattern(origins: Sequence[str]) -> str:
    """A regular expression that matches exactly ``origins`` (Jupyter's ``allow_origin_pat``).

    Written without backslashes, quotes or spaces (``.`` as ``[.]``), so it passes unchanged through
    a command line and through NOTEBOOK_ARGS, whether a start script splits it as a shell does
    (``${NOTEBOOK_ARGS}``) or with ``shlex``.
    """
    escaped = ["".join(_ORIGIN_ESCAPES.get(c, c) for c in origin) for origin in origins]
    return "^(" + "|".join(escaped) + ")$"


def origin_arguments(profile: Profile | None, origins: Sequence[str]) -> list[str]:
    """The notebook server's arguments that allow ``origins`` (none for no origins)."""
    if not origins:
        return []
    pattern = origin_pattern(origins)
    templates = (profile.origin_arg,) if profile is not None and profile.origin_arg else ORIGIN_ARGS
    return [t.replace("{pattern}", pattern) for t in templates]


# -- loading -----------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_profiles(path: str) -> Profiles:
    """Read and validate ``path`` (empty: no profiles); raise ConfigError listing every problem."""
    if not path:
        return Profiles()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"PROFILES_FILE {path}: cannot read it: {exc.strerror or exc}") from None
    return parse_profiles(text, path)


def parse_profiles(text: str, source: str = "<profiles>") -> Profiles:
    """Validate YAML ``text``; ``source`` names it in messages. Raises ConfigError."""
    where = f"PROFILES_FILE {source}"
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {exc.problem or exc.context or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if data is None:
        return Profiles()  # an empty file: no profiles
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'profiles' list at the top, got {_kind(data)}")
    unknown = sorted(str(k) for k in data if k not in ("profiles", "binder"))
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {', '.join(map(repr, unknown))} (expected 'profiles' or 'binder')"
        )
    items = data.get("profiles")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ConfigError(f"{where}: 'profiles' must be a list of profiles, got {_kind(items)}")

    problems: list[str] = []
    profiles: list[Profile] = []
    first_at: dict[str, int] = {}
    for index, item in enumerate(items, start=1):
        label, name = f"profile #{index}", None
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip():
            name = item["name"].strip()
            label = f"profile {name!r}"
        found: list[str] = []
        profile = _profile(item, found)
        problems.extend(f"{label}: {p}" for p in found)
        if name is not None and name in first_at:
            problems.append(f"{label} (#{index}): name: already used by profile #{first_at[name]}")
            continue
        if name is not None:
            first_at[name] = index
        if profile is not None:
            profiles.append(profile)
    binder = _binder_entries(data.get("binder"), {p.name: p for p in profiles}, problems)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return Profiles(profiles, binder)


_BINDER_SPEC = re.compile(r"^[a-z0-9*?-]+/\S+$", re.IGNORECASE | re.ASCII)


def _binder_entries(value: object, profiles: Mapping[str, Profile], problems: list[str]) -> list[BinderEntry]:
    """The ``binder`` list; appends "binder #n: field: what is wrong" to ``problems``.

    An entry's image is not checked against ALLOWED_IMAGES here: a launch of it is refused with
    the reason instead, as a spawn of it would be."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"binder: expected a list of {{spec, image, profile}} entries, got {_kind(value)}")
        return []
    entries = []
    for index, item in enumerate(value, start=1):
        label = f"binder #{index}"
        if not isinstance(item, dict):
            problems.append(f"{label}: expected a mapping of {', '.join(BINDER_FIELDS)}, got {_kind(item)}")
            continue
        found = [
            f"{label}: unknown key {k!r} (known keys: {', '.join(BINDER_FIELDS)})"
            for k in item
            if k not in BINDER_FIELDS
        ]
        spec, image, profile = item.get("spec"), item.get("image"), item.get("profile") or ""
        if not isinstance(spec, str) or len(spec) > 500 or not _BINDER_SPEC.fullmatch(spec.strip()):
            found.append(f"{label}: spec: expected <provider>/<spec pattern>, e.g. 'gh/org/repo/*', got {spec!r}")
        try:
            image = validate_image(image)
        except InvalidInput as exc:
            found.append(f"{label}: image: {exc}")
        if not isinstance(profile, str):
            found.append(f"{label}: profile: expected a profile's name, got {profile!r}")
        elif profile and profile not in profiles:
            found.append(f"{label}: profile: no profile named {profile!r}")
        elif profile and profiles[profile].images and isinstance(image, str) and not profiles[profile].matches(image):
            found.append(f"{label}: profile: {profile!r} does not apply to image {image!r}")
        problems.extend(found)
        if not found:
            entries.append(BinderEntry(spec=str(spec).strip(), image=str(image), profile=str(profile).strip()))
    return entries


def _kernel_name(value: object) -> str:
    # A Jupyter kernelspec's name, as the server's /api/kernelspecs lists them.
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"expected a kernel name such as python3, got {value!r}")
    return value


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _profile(item: object, problems: list[str]) -> Profile | None:
    """One profile from its mapping; appends "field: what is wrong" to ``problems``."""
    if not isinstance(item, dict):
        problems.append(f"expected a mapping of {', '.join(FIELDS[:3])}, ..., got {_kind(item)}")
        return None
    for key in item:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(FIELDS)})"
            problems.append(f"unknown key {key!r}{hint}")

    def check(name: str, parse: Any) -> Any:
        if item.get(name) is None:
            return None
        try:
            return parse(item[name])
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            return None

    name = check("name", _name)
    if "name" not in item or item["name"] is None:
        problems.append("name: is required")
    values: dict[str, Any] = {
        "images": check("images", _patterns) or (),
        "port": check("port", _port),
        "command": check("command", _command),
        "environment": check("environment", _environment) or {},
        "mem_limit": check("mem_limit", parse_size),
        "cpu_limit": check("cpu_limit", parse_cpus),
        "constraints": check("constraints", _constraints) or (),
        "user_limits": bool(check("user_limits", _flag)),
        "max_mem_limit": check("max_mem_limit", parse_size),
        "max_cpu_limit": check("max_cpu_limit", parse_cpus),
        "token": check("token", _flag) is not False,
        "token_env": check("token_env", _env_name) or "",
        "token_arg": check("token_arg", _token_arg) or "",
        "allow_origins": check("allow_origins", _origins) or (),
        "cors": check("cors", _flag) is not False,
        "origin_arg": check("origin_arg", _origin_arg) or "",
        "pull_policy": check("pull_policy", _pull_policy) or "",
        "prepull": bool(check("prepull", _flag)),
        "warm_kernel": check("warm_kernel", _kernel_name) or "",
    }
    # The maxima only mean something when users may choose, and must allow the profile's own limits.
    for limit in ("mem_limit", "cpu_limit"):
        maximum = values[f"max_{limit}"]
        if maximum is None:
            continue
        if not values["user_limits"]:
            problems.append(f"max_{limit}: only applies with user_limits: true")
        elif values[limit] is not None and values[limit] > maximum:
            problems.append(f"max_{limit}: is below the profile's own {limit}")
    if values["user_limits"] and values["max_mem_limit"] is None and values["max_cpu_limit"] is None:
        problems.append("user_limits: true needs max_mem_limit and/or max_cpu_limit")
    if values["token_arg"] and not values["command"]:
        problems.append("token_arg: needs a command to add the argument to")
    if values["token_arg"] and values["token_env"]:
        problems.append("token_env and token_arg: give one way to pass the token")
    if not values["token"] and (values["token_arg"] or values["token_env"]):
        problems.append("token: false leaves nothing for token_env or token_arg to pass")
    if not values["cors"] and (values["allow_origins"] or values["origin_arg"]):
        problems.append("cors: false leaves nothing for allow_origins or origin_arg to pass")
    if values["prepull"] and not any(IMAGE_RE.fullmatch(p) for p in values["images"]):
        problems.append("prepull: true needs an image in images that names one image (no * or ?) to pull")
    if problems or name is None:
        return None
    return Profile(name=name, **values)


def _pull_policy(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected if-not-present, always or never, got {value!r}")
    return parse_pull_policy(value)


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value.strip()):
        raise ValueError(f"expected 1-63 letters, digits and . _ - (starting with a letter or digit), got {value!r}")
    return value.strip()


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"expected a list of image patterns (globs such as 'jupyter/*'), got {value!r}")
    for pattern in value:
        parse_pattern(pattern)  # ValueError: "not an image pattern: ..."
    return tuple(v.strip() for v in value)


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {value!r}")
    return value


def _command(value: object) -> tuple[str, ...]:
    # A string is split as a shell would (without running one): "jupyter lab --port=9999".
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r}: {exc}") from None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings (or one string), got {value!r}")
    return tuple(value)


def _environment(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: value, got {_kind(value)}")
    out = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a variable name")
        # Numbers are written as YAML gives them; true/false would become "True", so quote those.
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError(f"{key}: expected a string or a number (quote true/false), got {raw!r}")
        out[key] = str(raw)
    return out


def _constraints(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of Swarm constraints such as 'node.labels.gpu==true', got {value!r}")
    for item in value:
        if not isinstance(item, str) or not _CONSTRAINT.fullmatch(item):
            raise ValueError(f"{item!r} is not a Swarm constraint (<attribute>==<value> or <attribute>!=<value>)")
    return tuple("".join(item.split()) for item in value)


def _env_name(value: object) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ValueError(f"expected an environment variable name such as JUPYTER_TOKEN, got {value!r}")
    return value


def _token_arg(value: object) -> str:
    if not isinstance(value, str) or value.count("{token}") != 1 or any(c.isspace() for c in value):
        raise ValueError(
            f"expected one argument containing {{token}} once, e.g. '--ServerApp.token={{token}}', got {value!r}"
        )
    return value


_ORIGIN = re.compile(r"^https?://[a-z0-9.\[\]:-]+$")


def _origins(value: object) -> tuple[str, ...]:
    """Page origins, as CORS_ORIGINS takes them (scheme, host, optional port)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of origins such as https://book.example.org, got {value!r}")
    out = []
    for item in value:
        origin = item.strip().rstrip("/").lower()
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(f"expected origins like https://book.example.org[:port], got {item!r}")
        out.append(origin)
    return tuple(dict.fromkeys(out))


def _origin_arg(value: object) -> str:
    if not isinstance(value, str) or value.count("{pattern}") != 1 or any(c.isspace() for c in value):
        raise ValueError(
            "expected one argument containing {pattern} once, e.g. "
            f"'--NotebookApp.allow_origin_pat={{pattern}}', got {value!r}"
        )
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value
