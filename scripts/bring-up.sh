#!/usr/bin/env bash
# Bring up what swarm-manager needs on a Debian machine, installing only what is missing:
#   run:   Debian packages docker.io, redis-server, python3-venv (and nodejs + npm for the routing
#          proxy unless PROXY=off), the virtualenv from the runtime lock (requirements.txt) and
#          configurable-http-proxy in .state/chp. `make run` starts Redis and dockerd itself.
#   test:  also busybox-static, openssl, iproute2, util-linux, chromium, docker-compose, debootstrap,
#          btrfs-progs, docker-registry, apache2-utils, socat, redis-sentinel; the test tools
#          (requirements-dev.txt); a running Docker engine.
#   bench: test, plus the benchmark tools (requirements-bench.txt).
# The virtualenv is $VENV (default .venv). Lock files are reinstalled only when their content
# changes (a hash in the venv), so a fresh clone and a long-lived checkout behave the same.
# Usage: scripts/bring-up.sh run|test|bench
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
venv=${VENV:-.venv}

say() { printf '\033[1m[bring-up]\033[0m %s\n' "$*" >&2; }

case "$mode" in
  run) locks=(requirements.txt) ;;
  test) locks=(requirements.txt requirements-dev.txt) ;;
  bench) locks=(requirements.txt requirements-dev.txt requirements-bench.txt) ;;
  *) say "usage: $0 run|test|bench"; exit 2 ;;
esac

want_chp=1
if [ "$mode" = run ] && [ "$(echo "${PROXY:-chp}" | tr '[:upper:]' '[:lower:]')" = off ] && [ -z "${PROXY_API_URL:-}" ]; then
  want_chp=
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# Debian's python3 has no venv module (ensurepip) without python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ -n "$want_chp" ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if [ "$mode" != run ]; then
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v git >/dev/null 2>&1 || missing+=(git)
  # The Redis failover tests run a master, a replica and three sentinels (testkit/redis_sentinel.py).
  command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
  # The real Jupyter Notebook test image is built from Debian packages (testkit/jupyter_image.py).
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  # The disk limit is proved on an engine whose data-root is btrfs on a loop file (tests/quota_engine.py).
  command -v mkfs.btrfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.btrfs ] || missing+=(btrfs-progs)
  # The Swarm stack is deployed from a real registry (testkit/registry.py) through a manager's mutual-TLS
  # endpoint (socat in tests/test_stack_deploy.py).
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
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
if [ "$mode" != run ] && ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/dockerd.log)"
  setsid nohup dockerd --data-root /var/lib/docker >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { say "dockerd did not come up; see /var/log/dockerd.log"; tail -20 /var/log/dockerd.log >&2; exit 1; }
fi

# Python dependencies from the lock files (every package pinned, with hashes).
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi
want=$(cat "${locks[@]}" | sha256sum | cut -c1-32)
stamp="$venv/.installed-$mode"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python dependencies from ${locks[*]}"
  args=()
  for lock in "${locks[@]}"; do args+=(-r "$lock"); done
  "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes "${args[@]}"
  echo "$want" > "$stamp"
fi
# The project itself (the `swarm-manager` command), editable from this checkout; again when the
# venv last served another checkout.
if [ "$(cat "$venv/.project" 2>/dev/null)" != "$PWD" ] || [ ! -x "$venv/bin/swarm-manager" ]; then
  say "installing swarm-manager from $PWD into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e .
  echo "$PWD" > "$venv/.project"
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
