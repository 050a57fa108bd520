"""Images from registries: pull as the policy says, once per image however many spawns wait for it.

- :class:`Puller` makes an image available on one engine. ``if-not-present`` pulls only when the
  engine lacks the image, ``always`` on every call, ``never`` not at all (a missing image is an
  error at once). Concurrent calls for one image share one pull (single flight): the first caller
  pulls, the others wait for it and get its progress and its outcome. The flight is per worker
  process: across processes each may pull once, since the engine's own transfer manager already
  shares a layer that two pulls fetch at once, so a second process costs a manifest read, while a
  lock held in Redis would leave every other process waiting on a holder that may have died.
- :class:`PullProgress` turns the engine's pull stream (one JSON object per layer event) into bytes
  and layers, done and in total, reported at most every PROGRESS_INTERVAL seconds.
- :func:`refusal` words what the registry said (unknown image, unauthorized, unreachable) from the
  engine's answer, without any credential in it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import docker
import docker.auth
import docker.errors

from shared.errors import EngineError, EngineUnavailable
from shared.limits import normalize
from shared.registries import ALWAYS, NEVER, RegistryAuths, registry_of
from worker.engine import ENGINE_ERRORS, classify, scrub

log = logging.getLogger(__name__)

#: Seconds between two ``pulling`` reports of one pull (the first comes at once).
PROGRESS_INTERVAL = 0.5

#: Seconds an image found on the engine (or just pulled) is taken as still there without asking:
#: a burst of spawns of one image then asks the engine once, not once per spawn.
PRESENT_TTL = 10.0

#: (stage, message, detail): ``pulling`` with the numbers so far, then ``pulled``.
Report = Callable[[str, str, Mapping[str, Any]], None]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class PullProgress:
    """What the engine's pull stream says so far, per layer: bytes fetched of how many, and done."""

    def __init__(self, image: str) -> None:
        self.image = image
        self._layers: dict[str, list[int]] = {}  # id -> [current, total, done]

    def feed(self, message: Mapping[str, Any]) -> None:
        layer, status = str(message.get("id") or ""), str(message.get("status") or "")
        # Lines without a layer (``Pulling from``, ``Digest:``, ``Status:``) say nothing countable;
        # neither does a line whose id is the tag (``Pulling from x`` carries the tag as id).
        if not layer or status.startswith("Pulling from"):
            return
        state = self._layers.setdefault(layer, [0, 0, 0])
        detail = message.get("progressDetail") or {}
        if status == "Downloading":
            state[0] = int(detail.get("current") or state[0])
            state[1] = int(detail.get("total") or state[1])
        elif status in ("Download complete", "Verifying Checksum"):
            state[0] = state[1] or state[0]
        elif status in ("Pull complete", "Already exists"):
            state[0] = state[1] or state[0]
            state[2] = 1

    def snapshot(self) -> dict[str, Any]:
        layers = self._layers.values()
        return {
            "image": self.image,
            "bytes_done": sum(current for current, _, _ in layers),
            "bytes_total": sum(total for _, total, _ in layers),
            "layers_done": sum(done for _, _, done in layers),
            "layers_total": len(self._layers),
        }

    def message(self) -> str:
        s = self.snapshot()
        got = f"{_size(s['bytes_done'])} of {_size(s['bytes_total'])}" if s["bytes_total"] else "starting"
        return f"pulling {self.image}: {got}, {s['layers_done']}/{s['layers_total']} layers"


def refusal(image: str, text: str, auths: RegistryAuths) -> str:
    """What the registry (or the way to it) said about ``image``, in words an operator acts on."""
    for secret in auths.secrets():  # the engine never echoes them; never trust that blindly
        text = text.replace(secret, "<secret>")
    text = scrub(text)
    low = text.lower()
    registry = registry_of(image)
    if "no basic auth credentials" in low or "unauthorized" in low or "authentication required" in low:
        if auths.for_image(image) is None:
            kind = f"unauthorized: {registry} wants credentials and REGISTRY_AUTH has none for it"
        else:
            kind = f"unauthorized: {registry} refused REGISTRY_AUTH's credentials"
    elif "denied" in low:
        kind = f"unauthorized or unknown: {registry} denied access"
    elif "manifest unknown" in low or "name unknown" in low or "not found" in low:
        kind = f"unknown image: {registry} has no such repository or tag"
    elif any(
        w in low
        for w in (
            "connection refused",
            "no such host",
            "dial tcp",
            "i/o timeout",
            "no route to host",
            "network is unreachable",
            "tls",
            "x509",
            "http response to https client",
        )
    ):
        kind = f"registry unreachable: {registry} did not answer"
    else:
        kind = "the registry refused it"
    return f"{kind} ({text[:400]})"


class _Flight:
    """One pull in progress, which any number of callers wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: EngineError | EngineUnavailable | None = None
        self.reports: list[Report] = []
        self.last: tuple[str, str, Mapping[str, Any]] | None = None
        self.lock = threading.Lock()

    def join(self, report: Report) -> None:
        with self.lock:
            self.reports.append(report)
            last = self.last
        if last is not None:  # a late caller sees where the pull is at once
            _call(report, *last)

    def publish(self, stage: str, message: str, detail: Mapping[str, Any]) -> None:
        with self.lock:
            self.last = (stage, message, detail)
            reports = list(self.reports)
        for report in reports:
            _call(report, stage, message, detail)


def _call(report: Report, stage: str, message: str, detail: Mapping[str, Any]) -> None:
    try:
        report(stage, message, detail)
    except Exception:  # progress is for people watching: never the pull's undoing
        log.exception("reporting pull progress failed")


class Puller:
    """Makes images available on one engine (see the module doc); one per engine per process."""

    def __init__(
        self,
        api: Callable[[], docker.APIClient],
        auths: RegistryAuths,
        *,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self.auths = auths
        self.interval = interval
        self.clock = clock
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self._installed = False
        self._seen: dict[str, float] = {}  # image -> when the engine last had it
        self.pulls = 0  # pulls this process asked the engine for (single flight: one per image at a time)

    def present(self, image: str, *, fresh: bool = False) -> bool:
        """Whether the engine has ``image`` (by its canonical reference); ``fresh``: ask the engine
        even if it had the image a moment ago."""
        seen = self._seen.get(image)
        if not fresh and seen is not None and self.clock() - seen < PRESENT_TTL:
            return True
        try:
            self._api().inspect_image(image)
        except docker.errors.ImageNotFound:
            self._seen.pop(image, None)
            return False
        except ENGINE_ERRORS as exc:
            raise classify(exc, f"looking up image {image}") from exc
        self._seen[image] = self.clock()
        return True

    def forget(self, image: str) -> bool:
        """The engine turned out not to have ``image`` after all (removed meanwhile); True if it was
        taken as present without asking (then another try pulls it)."""
        return self._seen.pop(image, None) is not None

    def ensure(self, image: str, policy: str, report: Report) -> bool:
        """Make ``image`` available as ``policy`` says; True if it was pulled (or waited for).

        Raises EngineError with the registry's refusal (or, with ``never``, the image missing),
        EngineUnavailable when the engine itself cannot be reached.
        """
        if policy == NEVER:
            if not self.present(image, fresh=True):
                raise EngineError(f"image {image!r} is not present on the engine (PULL_POLICY never: no pull)")
            return False
        if policy != ALWAYS and self.present(image):
            return False
        self.pull(image, report, missing=policy != ALWAYS)
        return True

    def pull(self, image: str, report: Report, *, missing: bool = True) -> None:
        """Pull ``image``, or wait for the pull of it already under way in this process.
        ``missing``: the engine lacks it (said in the error), as opposed to a refresh."""
        with self._lock:
            flight = self._flights.get(image)
            leader = flight is None
            if flight is None:
                flight = self._flights[image] = _Flight()
        flight.join(report)
        if leader:
            try:
                self._pull(image, flight, missing)
            except (EngineError, EngineUnavailable) as exc:
                flight.error = exc
            except Exception as exc:  # never leave the waiters without an outcome
                flight.error = EngineError(f"pulling {image} failed: {scrub(str(exc))[:300]}")
            finally:
                with self._lock:
                    self._flights.pop(image, None)
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise type(flight.error)(str(flight.error))

    def resolve(self, image: str) -> str:
        """The digest ``image``'s tag names in its registry now (the engine asks the registry)."""
        cred = self.auths.for_image(image)
        try:
            found: dict[str, Any] = self._api().inspect_distribution(
                image, auth_config=cred.auth_config() if cred else None
            )
        except docker.errors.APIError as exc:
            raise EngineError(f"image {image!r}: {refusal(image, str(exc.explanation or exc), self.auths)}") from None
        except ENGINE_ERRORS as exc:
            raise classify(exc, f"asking the registry about {image}") from exc
        return str((found.get("Descriptor") or {})["digest"])

    def install(self) -> None:
        """Give the client REGISTRY_AUTH's credentials, so requests the SDK authenticates by itself
        (a service's X-Registry-Auth) carry them; without any, the SDK's own lookup is left alone."""
        if self._installed or not self.auths:
            return
        api = self._api()
        api._auth_configs = docker.auth.AuthConfig(
            {"auths": {reg: {**c.auth_config(), "serveraddress": reg} for reg, c in self.auths.by_registry.items()}}
        )
        self._installed = True

    def _pull(self, image: str, flight: _Flight, missing: bool) -> None:
        ref = normalize(image)
        cred = self.auths.for_image(image)
        began = self.clock()
        progress = PullProgress(image)
        self.pulls += 1
        log.info("pulling %s", image)
        try:
            stream = self._api().pull(
                ref.name,
                tag=ref.digest or ref.tag,
                stream=True,
                decode=True,
                auth_config=cred.auth_config() if cred else None,
            )
            last = -self.interval  # the first report goes out at once
            for message in stream:
                if message.get("error") or message.get("errorDetail"):
                    detail = message.get("errorDetail") or {}
                    text = str(detail.get("message") or message.get("error"))
                    raise EngineError(self._failed(image, refusal(image, text, self.auths), missing))
                progress.feed(message)
                now = self.clock()
                if now - last >= self.interval:
                    last = now
                    flight.publish("pulling", progress.message(), progress.snapshot())
        except docker.errors.APIError as exc:
            # The engine answers the registry's refusal as an error status (404 unknown, 500 for
            # unauthorized or unreachable): lasting, so the spawn fails at once with it.
            why = refusal(image, str(exc.explanation or exc), self.auths)
            raise EngineError(self._failed(image, why, missing)) from None
        except ENGINE_ERRORS as exc:
            raise classify(exc, f"pulling {image}") from exc
        took = self.clock() - began
        done = progress.snapshot()
        size = f" ({_size(done['bytes_total'])})" if done["bytes_total"] else ""
        self._seen[image] = self.clock()
        log.info("pulled %s%s in %.1fs", image, size, took)
        flight.publish("pulled", f"pulled {image}{size} in {took:.1f}s", done)

    @staticmethod
    def _failed(image: str, why: str, missing: bool) -> str:
        # "not present" first: what the spawn lacked; then why pulling did not help.
        if missing:
            return f"image {image!r} is not present on the engine and could not be pulled: {why}"
        return f"image {image!r} could not be pulled (PULL_POLICY always): {why}"
