#!/usr/bin/env bash
# Bring up what swarm-manager needs on a Debian machine, installing only what is missing:
#   Debian packages (docker.io, redis-server; for tests also busybox-static, openssl,
#   iproute2, chromium, debootstrap), a running Docker engine (tests only; `make run` supervises its own),
#   the Python virtualenv in .venv with the pinned dependencies, and configurable-http-proxy
#   in .state/chp (tests, and `make run` when PROXY_API_URL is set or PROXY=chp).
# Usage: scripts/bring-up.sh run|test
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

say() { printf '\033[1m[bring-up]\033[0m %s\n' "$*" >&2; }

want_chp=
if [ "$mode" = test ] || [ -n "${PROXY_API_URL:-}" ] || [ "${PROXY:-}" = chp ]; then want_chp=1; fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
if [ -n "$want_chp" ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
if [ "$mode" = test ]; then
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  # The real Jupyter Notebook test image is built from Debian packages (tests/jupyter_image.py).
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${missing[*]}; run as root or install them first"; exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Docker engine. `make run` runs dockerd itself (so Ctrl-C stops it) when none answers;
# the test suite needs one running in the background.
if [ "$mode" = test ] && ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/dockerd.log)"
  setsid nohup dockerd --data-root /var/lib/docker >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { say "dockerd did not come up; see /var/log/dockerd.log"; tail -20 /var/log/dockerd.log >&2; exit 1; }
fi

# Python dependencies, reinstalled only when a requirements file changed.
reqs=requirements.txt
[ "$mode" = test ] && reqs=requirements-dev.txt
stamp=.venv/.installed-$mode
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
# (Also when the project's console script, `swarm-manager`, is not installed yet.)
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ "$reqs" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || [ ! -x .venv/bin/swarm-manager ]; then
  say "installing Python dependencies from $reqs"
  .venv/bin/pip install -q --disable-pip-version-check -r "$reqs"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>/dev/null \
    || .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi

# configurable-http-proxy, the routing proxy: from the npm registry into .state/chp (never
# globally), at the versions pinned in scripts/chp/package-lock.json; reinstalled only when
# that lock file changes.
if [ -n "$want_chp" ]; then
  chp=.state/chp
  if [ ! -x "$chp/node_modules/.bin/configurable-http-proxy" ] || ! cmp -s scripts/chp/package-lock.json "$chp/package-lock.json"; then
    say "installing configurable-http-proxy into $chp"
    mkdir -p "$chp"
    cp scripts/chp/package.json scripts/chp/package-lock.json "$chp/"
    npm ci --prefix "$chp" --no-audit --no-fund --loglevel=error >/dev/null
  fi
fi
