"""Settings from the environment, validated once at start-up.

``Settings.from_env(mapping)`` takes any mapping (default ``os.environ``) so tests inject
their own. Docker connection settings keep their standard names (DOCKER_HOST,
DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), read the same way the docker CLI reads them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigError
from shared.limits import Allowlist, parse_allowed_images
from shared.profiles import load_profiles, parse_cpus, parse_size
from shared.registries import IF_NOT_PRESENT, RegistryAuths, parse_pull_policy, parse_registry_auth
from shared.validation import IMAGE_RE, parse_decimal, parse_whole

_DNS_NAME = re.compile(r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = parse_whole(raw.strip())  # ASCII digits only (shared/validation.py says why)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a number from {lo} to {hi}, got {value}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = parse_decimal(raw.strip())  # ASCII digits only (shared/validation.py says why)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a number from {lo} to {hi}, got {value}")
        return value

    return parse


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"", "0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _match(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if not pattern.match(value):
            raise ValueError(f"not a valid {what}: {raw!r}")
        return value

    return parse


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw


#: Where Sentinel listens unless REDIS_SENTINELS says otherwise (Redis's own default).
SENTINEL_PORT = 26379


def _sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[v6addr]:port`` for IPv6; the port defaults to 26379): the sentinels."""
    out: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?", part)
        port = int(match.group(2) or SENTINEL_PORT) if match else 0
        if not match or not 1 <= port <= 65535:
            raise ValueError(f"expected host:port of a sentinel (e.g. sentinel1:26379), got {part!r}")
        out.append((match.group(1).strip("[]"), port))
    return tuple(dict.fromkeys(out))


def _master_name(raw: str) -> str:
    value = raw.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise ValueError(f"expected the name the sentinels monitor (letters, digits, . _ -), got {raw!r}")
    return value


def _wait_replicas(raw: str) -> int | None:
    """A number of replicas, or ``auto`` (None: 1 with REDIS_SENTINELS, else 0)."""
    return None if raw.strip().lower() == "auto" else _int(0, 100)(raw)


@dataclass(frozen=True)
class RedisTarget:
    """Where the one Redis is: a server (``url``), or the master the sentinels name (``sentinels`` set).

    With sentinels, ``url`` gives only the database number and the data nodes' user and password;
    ``password`` (REDIS_PASSWORD), when set, replaces the URL's. shared/store.py's ``connect()`` and
    shared/queue.py's ``celery_config()`` both build their connections from this, so records and the
    task queue always use the same Redis.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    password: str = ""
    sentinel_password: str = ""


def _docker_host(raw: str) -> str:
    if raw and not raw.startswith(("unix://", "tcp://", "ssh://", "npipe://", "http://", "https://")):
        raise ValueError(f"expected unix://PATH or tcp://HOST:PORT, got {raw!r}")
    return raw


def _pool(raw: str) -> tuple[tuple[str, int], ...]:
    """``image=count,image=count`` for the warm pool."""
    from shared.validation import validate_image  # validation has no settings import: no cycle

    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        image, sep, count = part.rpartition("=")
        try:
            size = parse_whole(count.strip())
        except ValueError:
            size = 0
        if not sep or not 1 <= size <= 100:
            raise ValueError(f"expected image=count with a count from 1 to 100, got {part!r}")
        try:
            sizes[validate_image(image)] = size
        except Exception as exc:
            raise ValueError(f"{part!r}: {exc}") from None
    return tuple(sizes.items())


def _public_url(raw: str) -> str:
    """``http(s)://...{hostname}...``: where people open a notebook (shared/public_url.py)."""
    from shared.public_url import check_template  # public_url has no settings import: no cycle

    return check_template(raw.strip())


def _text(raw: str) -> str:
    return raw.strip()


def _http_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not re.match(r"^https?://[^/?#\s]+$", value):
        raise ValueError(f"expected http://HOST:PORT, got {raw!r}")
    return value


def _secret(raw: str) -> str:
    """A shared secret (ADMIN_TOKEN, SECRET_KEY): empty, or long enough not to be guessed."""
    value = raw.strip()
    if value and (len(value) < 16 or not value.isascii() or not value.isprintable() or " " in value):
        raise ValueError(
            "expected at least 16 printable ASCII characters without spaces "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def _origins(raw: str) -> tuple[str, ...]:
    """``https://a.example,http://localhost:8080``: exact origins (scheme, host, optional port)."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        origin = part.rstrip("/").lower()
        if not re.match(r"^https?://[a-z0-9.\[\]:-]+$", origin):
            raise ValueError(f"expected origins like https://app.example.org[:port], got {part!r}")
        out.append(origin)
    return tuple(dict.fromkeys(out))


def _optional_patterns(raw: str) -> tuple[str, ...]:
    """Image patterns as ALLOWED_IMAGES takes them, or none at all (empty)."""
    return parse_allowed_images(raw) if raw.strip(" ,") else ()


#: Linux capabilities a notebook may be given back (NOTEBOOK_CAP_ADD), to catch typos at start-up.
KNOWN_CAPABILITIES = frozenset(
    {
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYSLOG",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "WAKE_ALARM",
    }
)


def _capabilities(raw: str) -> tuple[str, ...]:
    """``CHOWN,SETUID`` (``CAP_`` prefix optional): capabilities notebooks keep; empty for none."""
    out: list[str] = []
    for part in filter(None, (p.strip().upper() for p in raw.split(","))):
        name = part.removeprefix("CAP_")
        if name == "ALL" or name not in KNOWN_CAPABILITIES:
            raise ValueError(f"{part!r} is not a Linux capability name (e.g. CHOWN, SETUID)")
        out.append(name)
    return tuple(dict.fromkeys(out))


def _optional_size(raw: str) -> int | None:
    value = raw.strip()
    return None if value in ("", "0") else parse_size(value)


#: A size as Docker's json-file ``--log-opt max-size`` reads it (k, m, g are powers of 1000).
_LOG_SIZE = re.compile(r"^[0-9]+(\.[0-9]+)?[kmg]?$")
_LOG_UNITS = {"k": 1e3, "m": 1e6, "g": 1e9}


def _log_size(raw: str) -> str:
    """``10m``: passed to the engine as the log's ``max-size``; empty (or 0) for the engine's own log settings."""
    value = raw.strip().lower()
    if value in ("", "0"):
        return ""
    if not _LOG_SIZE.match(value) or float(value.rstrip("kmg")) * _LOG_UNITS.get(value[-1:], 1) < 1:
        raise ValueError(f"expected a size such as 10m (a number with k, m or g), got {raw!r}")
    return value


def _optional_cpus(raw: str) -> float | None:
    value = raw.strip()
    return None if value in ("", "0") else parse_cpus(value)


def setting(env: str, default: str, parse: Callable[[str], Any], doc: str, *, secret: bool = False) -> Any:
    """Declare a field read from environment variable ``env`` (docs/configuration.md is made from these).

    A ``secret`` may also come from a file named by ``<env>_FILE`` (Docker secrets, ``make run``'s
    .state files), so that it need not sit in the environment of processes that do not use it.
    """
    metadata = {"env": env, "default": default, "parse": parse, "doc": doc, "secret": secret}
    # A secret stays out of the settings' repr, which a traceback or a debug line may show.
    return field(default=parse(default), metadata=metadata, repr=not secret)


def _from_file(name: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The path is the operator's own setting; the file's content never appears in the message.
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise ValueError(f"cannot read {name}_FILE {path!r}: {why}") from None


@dataclass(frozen=True)
class Settings:
    redis_url: str = setting(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        _redis_url,
        "Redis for records and the task queue. With REDIS_SENTINELS only its database number and user/password "
        "are used (the sentinels name the server), e.g. redis://:PASSWORD@mymaster/0.",
    )
    redis_sentinels: tuple[tuple[str, int], ...] = setting(
        "REDIS_SENTINELS",
        "",
        _sentinels,
        "Redis Sentinel: `host:port,host:port,...` of the sentinels (port default 26379). Every process then asks "
        "them where the master is and follows a failover without a restart. Empty: REDIS_URL's one server.",
    )
    redis_master: str = setting(
        "REDIS_MASTER",
        "",
        _master_name,
        "With REDIS_SENTINELS (and required by it): the name the sentinels monitor the master by "
        "(their `sentinel monitor <name> ...`), e.g. mymaster.",
    )
    redis_password: str = setting(
        "REDIS_PASSWORD",
        "",
        _text,
        "Password of the Redis server(s) (their requirepass); replaces one in REDIS_URL. Or REDIS_PASSWORD_FILE, "
        "a file holding it.",
        secret=True,
    )
    redis_sentinel_password: str = setting(
        "REDIS_SENTINEL_PASSWORD",
        "",
        _text,
        "Password of the sentinels themselves, if they require one (their requirepass); or "
        "REDIS_SENTINEL_PASSWORD_FILE, a file holding it.",
        secret=True,
    )
    redis_wait_replicas: int | None = setting(
        "REDIS_WAIT_REPLICAS",
        "auto",
        _wait_replicas,
        "Before the API accepts a spawn or a kill (202), that many replicas (at most as many as are connected) "
        "must have it (Redis WAIT), so a failover cannot lose it; else 503. auto: 1 with REDIS_SENTINELS, 0 (no "
        "wait) without.",
    )
    redis_wait_timeout: float = setting(
        "REDIS_WAIT_TIMEOUT",
        "1",
        _float(0.01, 60),
        "Seconds the API waits for the replicas (REDIS_WAIT_REPLICAS) before it answers 503.",
    )
    domain: str = setting(
        "DOMAIN",
        "localhost",
        _match(_DNS_NAME, "DNS domain"),
        "Wildcard domain: a notebook's URL is <hostname>.<DOMAIN>.",
    )
    public_url: str = setting(
        "PUBLIC_URL",
        "http://{hostname}.{domain}/",
        _public_url,
        "Where people open a notebook: a template with {hostname} (and optionally {domain}), e.g. "
        "https://{hostname}.{domain}/ behind a TLS proxy. The records' notebook_url, /manage's links, the "
        "ready event and the CLI are built from it (`make run` sets it to its proxy's port, "
        "http://{hostname}.{domain}:8000/).",
    )
    notebook_port: int = setting(
        "NOTEBOOK_PORT", "8888", _int(1, 65535), "Port the notebook server listens on inside its container."
    )
    start_timeout: float = setting(
        "START_TIMEOUT",
        "60",
        _float(1, 3600),
        "Seconds a notebook has to answer HTTP after its container starts; also how long a spawn retries an "
        "unreachable engine.",
    )
    kill_grace: int = setting(
        "KILL_GRACE", "3", _int(0, 300), "Seconds between SIGTERM and SIGKILL when a notebook is killed."
    )
    publish_ip: str = setting(
        "PUBLISH_IP",
        "127.0.0.1",
        _text,
        "Host address the notebook port is published on (random host port). "
        "Empty: publish nothing; reach the container by its network address.",
    )
    probe_host: str = setting(
        "PROBE_HOST",
        "",
        _text,
        "Host the worker uses to reach published ports. Default: the DOCKER_HOST "
        "address for tcp:// engines, PUBLISH_IP (or 127.0.0.1) otherwise.",
    )
    notebook_network: str = setting(
        "NOTEBOOK_NETWORK", "", _text, "Docker network notebooks join (default: the engine's default bridge)."
    )
    probe_interval: float = setting(
        "PROBE_INTERVAL", "0.05", _float(0.01, 10), "Seconds between readiness probes of a starting notebook."
    )
    engine_timeout: float = setting("ENGINE_TIMEOUT", "30", _float(1, 600), "Seconds one Docker API call may take.")
    reconcile_interval: float = setting(
        "RECONCILE_INTERVAL",
        "30",
        _float(1, 86400),
        "Seconds between reconciliation passes (records vs. engine objects).",
    )
    orphan_grace: float = setting(
        "ORPHAN_GRACE",
        "60",
        _float(0, 86400),
        "Seconds an engine object labelled as ours may exist without a live record before the reconciler removes it.",
    )
    max_age: float = setting(
        "MAX_AGE",
        "86400",
        _float(0, 365 * 86400),
        "Seconds a notebook may live before it is killed (0: no limit). Also the cap on a spawn's own `ttl`.",
    )
    idle_timeout: float = setting(
        "IDLE_TIMEOUT",
        "0",
        _float(0, 365 * 86400),
        "Kill notebooks whose server reports no activity (Jupyter's /api/status "
        "last_activity) for this many seconds (0: off).",
    )
    record_retention: float = setting(
        "RECORD_RETENTION",
        "604800",
        _float(0, 10 * 365 * 86400),
        "Seconds FAILED and REMOVED records are kept after they end.",
    )
    pool: tuple[tuple[str, int], ...] = setting(
        "POOL",
        "",
        _pool,
        "Warm pool: `image=count,...` notebooks kept running ahead of demand; a spawn of such an "
        "image gets one at once (ACTIVE, no engine call) and a replacement is started.",
    )
    instance: str = setting(
        "INSTANCE",
        "swarm-manager",
        _match(_SLUG, "instance name"),
        "Name of this deployment: labels its engine objects and prefixes its "
        "Redis keys, so deployments sharing an engine or a Redis never touch "
        "each other's notebooks.",
    )
    worker_concurrency: int = setting(
        "WORKER_CONCURRENCY", "64", _int(1, 1000), "Tasks one worker process runs at once (threads; they mostly wait)."
    )
    streams_per_user: int = setting(
        "STREAMS_PER_USER",
        "20",
        _int(0, 1_000_000),
        "Most event streams (/events, /container/<h>/events) one signed-in caller (a user, or the admin) may "
        "hold open at once, across every API process (0: no limit); one more is 429 with Retry-After.",
    )
    streams_per_address: int = setting(
        "STREAMS_PER_ADDRESS",
        "50",
        _int(0, 1_000_000),
        "The same for callers nobody signed in (AUTH=off), counted per client address (0: no limit).",
    )
    trusted_proxy_hops: int = setting(
        "TRUSTED_PROXY_HOPS",
        "0",
        _int(0, 10),
        "How many reverse proxies in front of the API to trust for the client's address and scheme "
        "(X-Forwarded-For, X-Forwarded-Proto); 0: take the connection's own address.",
    )
    max_body: int = setting(
        "MAX_BODY", "16384", _int(256, 10_000_000), "Largest request body the API accepts, in bytes."
    )
    docker_host: str = setting(
        "DOCKER_HOST", "", _docker_host, "Engine or Swarm manager endpoint (default: the local unix socket)."
    )
    docker_tls_verify: bool = setting(
        "DOCKER_TLS_VERIFY", "", _bool, "Use TLS to the engine, verifying it against DOCKER_CERT_PATH/ca.pem."
    )
    docker_cert_path: str = setting(
        "DOCKER_CERT_PATH", "", _text, "Folder with ca.pem, cert.pem, key.pem for the engine's mutual TLS."
    )
    engine_backend: str = setting(
        "ENGINE_BACKEND",
        "auto",
        _match(re.compile(r"^(auto|containers|services)$"), "engine backend (auto, containers or services)"),
        "How notebooks run: services (Swarm services, on a Swarm manager), containers "
        "(plain containers on one engine) or auto (services when the engine is an "
        "active Swarm manager, else containers; asked once per worker process).",
    )
    profiles_file: str = setting(
        "PROFILES_FILE",
        "",
        _text,
        "YAML file of per-image profiles (port, command, environment, limits, "
        "placement); validated at start-up. Empty: no profiles.",
    )
    proxy_api_url: str = setting(
        "PROXY_API_URL",
        "",
        _http_url,
        "REST API of configurable-http-proxy, e.g. http://127.0.0.1:8001: workers add "
        "the route <hostname>.<DOMAIN> when a notebook becomes ACTIVE and delete it when "
        "it ends. Empty: no proxy.",
    )
    proxy_auth_token: str = setting(
        "PROXY_AUTH_TOKEN",
        "",
        _text,
        "The proxy's API token (its CONFIGPROXY_AUTH_TOKEN); or PROXY_AUTH_TOKEN_FILE, a file holding it.",
        secret=True,
    )
    proxy_public_url: str = setting(
        "PROXY_PUBLIC_URL",
        "",
        _http_url,
        "Where workers reach the proxy's public side, e.g. http://127.0.0.1:8000 (needed by READY_THROUGH_PROXY).",
    )
    ready_through_proxy: bool = setting(
        "READY_THROUGH_PROXY",
        "",
        _bool,
        "1: a notebook is ACTIVE only once a request through the proxy with "
        "Host: <hostname>.<DOMAIN> reaches it (the public URL answers).",
    )
    auth: bool = setting(
        "AUTH",
        "on",
        _bool,
        "Authentication: on (every route but /healthz needs a token) or off (anyone who "
        "reaches the API may do anything; a WARNING is logged at start-up).",
    )
    admin_token: str = setting(
        "ADMIN_TOKEN",
        "",
        _secret,
        "The admin's API token (at least 16 characters): sees and kills everything and "
        "manages user tokens. Required by the API when AUTH is on. Or ADMIN_TOKEN_FILE, a file holding it.",
        secret=True,
    )
    secret_key: str = setting(
        "SECRET_KEY",
        "",
        _secret,
        "Keys the /manage sign-in form's CSRF token and the admin's sessions (at least 16 characters; "
        "changing it signs the admin out). Empty: one is generated once and kept in Redis, shared by "
        "every API process. Or SECRET_KEY_FILE, a file holding it.",
        secret=True,
    )
    session_cookie_secure: bool = setting(
        "SESSION_COOKIE_SECURE",
        "",
        _bool,
        "1: /manage's session cookie is sent over HTTPS only (set it when the API is served over HTTPS).",
    )
    cors_origins: tuple[str, ...] = setting(
        "CORS_ORIGINS",
        "",
        _origins,
        "Comma-separated origins (https://app.example.org) whose pages may "
        "call the API from a browser. Empty: no CORS headers at all.",
    )
    allowed_images: tuple[str, ...] = setting(
        "ALLOWED_IMAGES",
        "*",
        parse_allowed_images,
        "Comma-separated image patterns (globs, matched after normalising the reference: `jupyter/*`, "
        "`registry.example:5000/*`, `repo:*`, `repo@*`) a spawn may use; anything else is 403. `*`: every image "
        "(a WARNING at start-up when AUTH is on).",
    )
    anonymous_images: tuple[str, ...] = setting(
        "ANONYMOUS_IMAGES",
        "",
        _optional_patterns,
        "Image patterns (as in ALLOWED_IMAGES, which must allow them too) that clients without a token may "
        "launch through the Binder (GET /build/...) and tmpnb (POST /api/spawn/) routes, within the ANONYMOUS_* "
        "limits; typically the pooled images. Empty: no anonymous launches (every route but /healthz needs a token).",
    )
    anonymous_max_notebooks: int = setting(
        "ANONYMOUS_MAX_NOTEBOOKS",
        "20",
        _int(0, 1_000_000),
        "Most anonymous notebooks live at once, in total (0: no limit of their own; MAX_NOTEBOOKS still applies); "
        "one more is 429.",
    )
    anonymous_per_address: int = setting(
        "ANONYMOUS_PER_ADDRESS",
        "2",
        _int(1, 10_000),
        "Most live anonymous notebooks per client address (an IPv6 client: per /64; behind proxies, the address "
        "TRUSTED_PROXY_HOPS believes); one more is 429.",
    )
    anonymous_spawn_rate: int = setting(
        "ANONYMOUS_SPAWN_RATE",
        "6",
        _int(1, 100_000),
        "Most anonymous launches per client address per minute; one more is 429 with Retry-After.",
    )
    anonymous_max_age: float = setting(
        "ANONYMOUS_MAX_AGE",
        "3600",
        _float(60, 365 * 86400),
        "Seconds an anonymous notebook lives before it is killed (capped by MAX_AGE).",
    )
    anonymous_idle_timeout: float = setting(
        "ANONYMOUS_IDLE_TIMEOUT",
        "600",
        _float(0, 365 * 86400),
        "Seconds an anonymous notebook's server may report no activity (as IDLE_TIMEOUT, which also applies "
        "when shorter) before it is killed: a reader who left a page frees its slot (0: only IDLE_TIMEOUT).",
    )
    max_notebooks: int = setting(
        "MAX_NOTEBOOKS",
        "0",
        _int(0, 1_000_000),
        "Most notebooks live at once in total, warm-pool members included (0: no "
        "limit); a spawn over it is 429 with Retry-After.",
    )
    max_notebooks_per_user: int = setting(
        "MAX_NOTEBOOKS_PER_USER",
        "0",
        _int(0, 100_000),
        "Most live notebooks one user may have (0: no limit); 429 over it.",
    )
    spawn_rate: int = setting(
        "SPAWN_RATE",
        "0",
        _int(0, 100_000),
        "Most spawns one user may start per minute (0: no limit); 429 with Retry-After "
        "saying when the next one is allowed.",
    )
    notebook_token: bool = setting(
        "NOTEBOOK_TOKEN",
        "on",
        _bool,
        "on: every notebook gets its own secret token (as JUPYTER_TOKEN, or as a "
        "profile says), shown only to its owner and admins; off: none.",
    )
    pids_limit: int = setting(
        "PIDS_LIMIT", "512", _int(0, 4_194_304), "Most processes (and threads) one notebook may run (0: no limit)."
    )
    default_mem_limit: int | None = setting(
        "DEFAULT_MEM_LIMIT",
        "2g",
        _optional_size,
        "Memory limit of a notebook whose profile sets none (e.g. 512m, 2g; 0: no limit).",
    )
    default_cpu_limit: float | None = setting(
        "DEFAULT_CPU_LIMIT",
        "1",
        _optional_cpus,
        "CPU limit in cores of a notebook whose profile sets none (0: no limit).",
    )
    notebook_cap_add: tuple[str, ...] = setting(
        "NOTEBOOK_CAP_ADD",
        "CHOWN,DAC_OVERRIDE,FOWNER,SETGID,SETUID",
        _capabilities,
        "Linux capabilities notebooks keep; every other one is dropped. The default lets an image that "
        "starts as root switch to its notebook user; empty: none (enough for images that run as a user).",
    )
    notebook_isolation: bool = setting(
        "NOTEBOOK_ISOLATION",
        "on",
        _bool,
        "on: notebooks cannot reach each other. Without NOTEBOOK_NETWORK they join the engine's default bridge "
        "if it keeps containers apart (dockerd --icc=false, the fastest start), else the bridge network "
        "<INSTANCE>-notebooks, which the worker creates with traffic between its containers off (the worker "
        "and proxies reach them through PUBLISH_IP, or by address from the engine host); a NOTEBOOK_NETWORK "
        "that lets containers talk is used as named, with a WARNING. off: the engine's default bridge.",
    )
    notebook_log_max_size: str = setting(
        "NOTEBOOK_LOG_MAX_SIZE",
        "10m",
        _log_size,
        "Largest file of a notebook's output log (json-file log driver, max-size: k, m, g in powers of 1000, "
        "as Docker reads it); the engine keeps NOTEBOOK_LOG_MAX_FILES of them. Empty: the engine's own log "
        "driver and options (its daemon.json) apply.",
    )
    notebook_log_max_files: int = setting(
        "NOTEBOOK_LOG_MAX_FILES",
        "3",
        _int(1, 100),
        "How many log files of NOTEBOOK_LOG_MAX_SIZE a notebook's output may fill (max-file); older output is dropped.",
    )
    notebook_disk_limit: int | None = setting(
        "NOTEBOOK_DISK_LIMIT",
        "",
        _optional_size,
        "Most a notebook may write to its container's own filesystem (its writable layer, e.g. 10g). Only "
        "plain containers on storage that can limit it (overlay2 on xfs mounted with pquota, btrfs, zfs, "
        "devicemapper); elsewhere, and on Swarm services, a spawn fails at once saying so. Empty: no limit.",
    )
    pull_policy: str = setting(
        "PULL_POLICY",
        IF_NOT_PRESENT,
        parse_pull_policy,
        "When a spawn pulls its image from its registry: if-not-present (only when the engine lacks it), always "
        "(every spawn, so a tag that moved runs its new content) or never (an image the engine lacks fails the "
        "spawn at once). A profile's pull_policy overrides it for its images.",
    )
    registry_auth: RegistryAuths = setting(  # noqa: RUF009 - frozen: as immutable as the other defaults
        "REGISTRY_AUTH",
        "",
        parse_registry_auth,
        "Registry credentials: the text of a Docker config.json (what `docker login` writes: "
        '`{"auths": {"registry.example:5000": {"auth": "<base64 of user:password>"}}}`), used for pulls from those '
        "registries and, in services mode, handed to the nodes with the service. Usually REGISTRY_AUTH_FILE, "
        "the path of such a file (a Docker secret).",
        secret=True,
    )
    log_level: str = setting(
        "LOG_LEVEL",
        "INFO",
        _match(re.compile(r"^(debug|info|warning|error)$"), "log level"),
        "Log level of the API and workers.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build from ``env`` (default ``os.environ``); raise ConfigError naming every bad value."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            try:
                if raw is None and f.metadata["secret"] and env.get(f"{name}_FILE"):
                    raw = _from_file(name, env[f"{name}_FILE"])
                if raw is None:
                    continue
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        settings = cls(**values)
        problems.extend(settings._check())
        if problems:
            raise ConfigError("bad settings: " + "; ".join(problems))
        return settings

    def _check(self) -> list[str]:
        problems = self._check_redis()
        if self.docker_tls_verify or self.docker_cert_path:
            path = self.docker_cert_path or os.path.join(os.path.expanduser("~"), ".docker")
            for name in ("ca.pem", "cert.pem", "key.pem"):
                if not os.path.isfile(os.path.join(path, name)):
                    # The folder is not named: certificate paths stay out of logs.
                    where = "the folder DOCKER_CERT_PATH names" if self.docker_cert_path else "~/.docker"
                    problems.append(f"DOCKER_CERT_PATH: {name} not found in {where}")
            if self.docker_host and not self.docker_host.startswith(("tcp://", "https://")):
                problems.append("DOCKER_TLS_VERIFY/DOCKER_CERT_PATH need a tcp:// DOCKER_HOST")
        if self.ready_through_proxy and not (self.proxy_api_url and self.proxy_public_url):
            problems.append("READY_THROUGH_PROXY needs PROXY_API_URL and PROXY_PUBLIC_URL")
        if self.notebook_network.lower() == "host" or self.notebook_network.startswith("container:"):
            problems.append(f"NOTEBOOK_NETWORK: {self.notebook_network!r} would share a namespace; name a network")
        if self.notebook_disk_limit and self.engine_backend == "services":
            problems.append(
                "NOTEBOOK_DISK_LIMIT: Swarm services have no writable-layer size limit (set storage-opts in each "
                "node's daemon.json instead) and ENGINE_BACKEND is services"
            )
        allowlist = Allowlist(self.allowed_images)
        for image, _ in self.pool:
            if not allowlist.allows(image):
                problems.append(f"POOL: image {image!r} is not allowed by ALLOWED_IMAGES")
        for pattern in self.anonymous_images:
            # A plain reference (no glob) that the allowlist refuses could never be launched: say so now.
            if IMAGE_RE.fullmatch(pattern) and not allowlist.allows(pattern):
                problems.append(f"ANONYMOUS_IMAGES: image {pattern!r} is not allowed by ALLOWED_IMAGES")
        if self.max_notebooks and sum(n for _, n in self.pool) >= self.max_notebooks:
            problems.append("POOL: the warm pool alone would fill MAX_NOTEBOOKS")
        try:
            # Parsed here so a bad profiles file stops the API and the workers at start-up.
            load_profiles(self.profiles_file)
        except ConfigError as exc:
            problems.append(str(exc))
        return problems

    def _check_redis(self) -> list[str]:
        problems = []
        if self.redis_sentinels:
            if not self.redis_master:
                problems.append("REDIS_SENTINELS needs REDIS_MASTER: the name the sentinels monitor (e.g. mymaster)")
            if not self.redis_url.startswith("redis://"):
                # TLS to the data nodes would need TLS to the sentinels too (kombu and redis-py differ there).
                problems.append("REDIS_URL: with REDIS_SENTINELS it must be a redis:// URL (no TLS, no unix socket)")
            elif not re.fullmatch(r"/?[0-9]{0,5}", urlsplit(self.redis_url).path):
                problems.append("REDIS_URL: expected redis://[:PASSWORD@]NAME/DB with a database number, e.g. /0")
        else:
            for name, value in (
                ("REDIS_MASTER", self.redis_master),
                ("REDIS_SENTINEL_PASSWORD", self.redis_sentinel_password),
            ):
                if value:
                    problems.append(f"{name} is set but REDIS_SENTINELS is not: name the sentinels, or unset it")
        return problems

    @property
    def redis_target(self) -> RedisTarget:
        """Where the one Redis is (records and queue alike)."""
        return RedisTarget(
            self.redis_url, self.redis_sentinels, self.redis_master, self.redis_password, self.redis_sentinel_password
        )

    @property
    def wait_replicas(self) -> int:
        """Replicas the API's accepted writes wait for (REDIS_WAIT_REPLICAS, ``auto`` resolved)."""
        if self.redis_wait_replicas is None:
            return 1 if self.redis_sentinels else 0
        return self.redis_wait_replicas

    @property
    def tls(self) -> bool:
        """TLS to the engine is on whenever certificates are configured, and then always verifies."""
        return bool(self.docker_tls_verify or self.docker_cert_path)

    @property
    def pool_sizes(self) -> dict[str, int]:
        return dict(self.pool)

    @property
    def key_prefix(self) -> str:
        return f"{self.instance}:"


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, in declaration order."""
    return [(f.metadata["env"], f.metadata["default"], f.metadata["doc"]) for f in fields(Settings)]
