#!/usr/bin/env bash
# Stand-ins for the official images swarm-manager's images build on, made from Debian bookworm's own
# packages, for machines that cannot pull them (no container registry reachable):
#
#   debian  swarm-manager-base/debian:bookworm     for debian:bookworm-slim (debootstrap minbase,
#                                                  ca-certificates, netbase; no docs or locales)
#   python  swarm-manager-base/python:3.11-bookworm  for python:3.11-slim (Debian's python3 is 3.11,
#                                                  with venv; `python` runs it)
#   redis   swarm-manager-base/redis:7-bookworm    for redis:7 (Debian's redis-server 7.0, as user
#                                                  redis in /data)
#
# Usage: scripts/build-base-image.sh debian|python|redis
# Prints the image's reference on stdout (progress goes to stderr). An image already built from this
# very recipe (its label swarm-manager.recipe holds this file's hash) is reused, so a second call
# returns at once. debian takes about a minute (debootstrap), python and redis some 20 s each on top.
# Needs root and debootstrap for debian; python and redis run apt-get in `docker build`, over
# BUILD_NETWORK (default host: on machines where only the host reaches the Debian mirror).
# Debian's packages come over plain http (signed by Debian's keys), so no CA is involved.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-}
network=${BUILD_NETWORK:-host}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
recipe=$(sha256sum "$0" | cut -c1-16)
say() { printf '\033[1m[base-image]\033[0m %s\n' "$*" >&2; }

case "$kind" in
  debian) ref=swarm-manager-base/debian:bookworm ;;
  python) ref=swarm-manager-base/python:3.11-bookworm ;;
  redis) ref=swarm-manager-base/redis:7-bookworm ;;
  *) say "usage: $0 debian|python|redis"; exit 2 ;;
esac

current() {  # REF: true when REF exists and was built from this recipe
  [ "$(docker image inspect --format '{{ index .Config.Labels "swarm-manager.recipe" }}' "$1" 2>/dev/null)" = "$recipe" ]
}

if current "$ref"; then echo "$ref"; exit 0; fi
# python and redis build on the debian stand-in: made (or found) first, before this run's lock.
[ "$kind" = debian ] || debian=$("$0" debian)
# Two runs at once (two test sessions, or a build beside a test run) take turns; the second
# finds what the first made.
exec 9>>"/tmp/swarm-manager-base-image-$kind.lock"
flock 9
if current "$ref"; then echo "$ref"; exit 0; fi

build_debian() {
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || {
    say "debootstrap is not installed (Debian package debootstrap)"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "building $ref needs root (debootstrap, chroot, mount)"; exit 1; }
  local work root
  work=$(mktemp -d /var/tmp/smbase-XXXXXX)
  root=$work/root
  # shellcheck disable=SC2064 # expand now: the trap must remove this run's folder
  trap "umount -l '$root/proc' 2>/dev/null || true; rm -rf '$work'" EXIT
  say "debootstrap bookworm into $root (about a minute)"
  PATH=/usr/sbin:/usr/bin:/sbin:/bin debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # As Debian's slim images: no documentation, manual pages or translations from any later package.
  cat > "$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  mount -t proc proc "$root/proc"
  chroot "$root" /bin/bash -c 'set -e; export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get upgrade -y -qq >/dev/null
    apt-get install -y -qq --no-install-recommends ca-certificates netbase >/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /tmp/* /etc/hostname
    find /usr/share/doc -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    rm -rf /usr/share/man/* /usr/share/info/*' >&2
  umount -l "$root/proc"
  say "importing $ref"
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL swarm-manager.recipe=$recipe" \
    --change 'CMD ["bash"]' - "$ref" >/dev/null
  rm -rf "$work"
  trap - EXIT
}

build_from_debian() {  # a Dockerfile on stdin, FROM the debian stand-in
  say "building $ref from $debian"
  sed "s#@DEBIAN@#$debian#" | docker build -q --network "$network" --label "swarm-manager.recipe=$recipe" -t "$ref" - >/dev/null
}

case "$kind" in
  debian) build_debian ;;
  python)
    build_from_debian <<'EOF'
FROM @DEBIAN@
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null \
 && ln -s python3 /usr/bin/python \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
CMD ["python3"]
EOF
    ;;
  redis)
    # The official image starts as root and drops to its redis user; this one is that user from
    # the start. /data (owned by it) is where a named volume's first use copies the ownership from.
    # Without a configuration file redis-server starts in protected mode (loopback only); the
    # official image is built with that off, and so is this one's default command.
    build_from_debian <<'EOF'
FROM @DEBIAN@
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
EOF
    ;;
esac
echo "$ref"
