#!/usr/bin/env bash
# Build swarm-manager's images with `docker build` and optionally push them to a registry:
#   api     Dockerfile.api     swarm-manager serve
#   worker  Dockerfile.worker  swarm-manager worker, beat and flower
#   proxy   Dockerfile.proxy   configurable-http-proxy, the routing proxy
# docker-compose.yml builds the same Dockerfiles itself (`docker-compose build`); this script is for
# machines where the official base images cannot be pulled or the package indexes sit behind a
# TLS-intercepting proxy, and for a Swarm stack, whose nodes pull the images from a registry.
#
# Usage: scripts/build-images.sh [--prefix PREFIX] [--tag TAG] [--push] [--env-file FILE]
#   --prefix PREFIX  names the images PREFIXapi:TAG, PREFIXworker:TAG, PREFIXproxy:TAG
#                    (default swarm-manager-); for a registry e.g. registry.example.org:5000/swarm-manager-
#   --tag TAG        default local
#   --push           push the three, and the Redis image as PREFIXredis:TAG, to PREFIX's registry
#                    (`docker login` to it first if it asks for credentials)
#   --env-file FILE  write API_IMAGE=, WORKER_IMAGE=, PROXY_IMAGE=, REDIS_IMAGE= (what
#                    docker-compose.yml and stack.yml read) to FILE; without it they are printed
# Environment:
#   BASE_IMAGE     Python 3.11 image the api and worker images build on (default python:3.11-slim);
#   DEBIAN_IMAGE   the proxy's (default debian:bookworm-slim);
#   REDIS_IMAGE    Redis (default redis:7). A default that is neither on the engine nor pullable is
#                  replaced by a stand-in built from Debian packages (scripts/build-base-image.sh).
#   BUILD_CA_FILE  PEM file of CAs that pip and npm trust in the builds, besides their own: for a
#                  TLS-intercepting proxy. Default: the bundle this host's pip or requests uses
#                  (PIP_CERT, REQUESTS_CA_BUNDLE, SSL_CERT_FILE), if one is set; empty: none. It goes
#                  into the build context as build-ca.pem, which only the builder stages read.
#   BUILD_NETWORK  network of the build steps (default host: the host reaches the package indexes
#                  where a container's own network may not).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
say() { printf '\033[1m[build-images]\033[0m %s\n' "$*" >&2; }

prefix=swarm-manager- tag=local push= env_file=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --push) push=1; shift ;;
    --env-file) env_file=$2; shift 2 ;;
    *) say "unknown argument $1 (see the top of $0)"; exit 2 ;;
  esac
done
network=${BUILD_NETWORK:-host}
if [ -z "${BUILD_CA_FILE+set}" ]; then
  BUILD_CA_FILE=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
fi
if [ -n "$BUILD_CA_FILE" ] && [ ! -r "$BUILD_CA_FILE" ]; then
  say "BUILD_CA_FILE=$BUILD_CA_FILE is not a readable file"; exit 1
fi

resolve() {  # VARIABLE OFFICIAL STAND-IN-KIND: the image to use for that variable
  local given=${!1:-}
  if [ -n "$given" ]; then echo "$given"; return; fi
  if docker image inspect "$2" >/dev/null 2>&1 || timeout 300 docker pull -q "$2" >/dev/null 2>&1; then
    echo "$2"; return
  fi
  say "$2 cannot be pulled here: using a stand-in built from Debian packages"
  scripts/build-base-image.sh "$3"
}
base=$(resolve BASE_IMAGE python:3.11-slim python)
debian=$(resolve DEBIAN_IMAGE debian:bookworm-slim debian)
redis=$(resolve REDIS_IMAGE redis:7 redis)

# The build context: what the Dockerfiles copy and nothing else (a context sent as a tar stream
# bypasses .dockerignore, so certs/, secrets/ and .env never leave this tree), plus, when there is
# one, the CA bundle as build-ca.pem; nothing is written into the tree.
extra=$(mktemp -d)
trap 'rm -rf "$extra"' EXIT
extra_files=()
if [ -n "$BUILD_CA_FILE" ]; then
  cp "$BUILD_CA_FILE" "$extra/build-ca.pem"
  extra_files=(-C "$extra" build-ca.pem)
  say "pip and npm trust $BUILD_CA_FILE in the builder stages"
fi
context() {
  tar -c -f - --exclude='__pycache__' --exclude='*.pyc' -C "$root" \
    Dockerfile.api Dockerfile.worker Dockerfile.proxy requirements.txt shared api worker cli \
    scripts/healthcheck.py scripts/chp "${extra_files[@]}"
}

build() {  # NAME DOCKERFILE BUILD-ARG
  local ref=$prefix$1:$tag started=$SECONDS
  say "building $ref ($2, $3)"
  context | docker build --network "$network" --build-arg "$3" -f "$2" -t "$ref" - >&2
  say "built $ref in $((SECONDS - started)) s"
}
build api Dockerfile.api "BASE_IMAGE=$base"
build worker Dockerfile.worker "BASE_IMAGE=$base"
build proxy Dockerfile.proxy "DEBIAN_IMAGE=$debian"

images=(API_IMAGE="${prefix}api:$tag" WORKER_IMAGE="${prefix}worker:$tag" PROXY_IMAGE="${prefix}proxy:$tag")
if [ -n "$push" ]; then
  docker tag "$redis" "${prefix}redis:$tag"
  redis=${prefix}redis:$tag
  for ref in "${prefix}api:$tag" "${prefix}worker:$tag" "${prefix}proxy:$tag" "$redis"; do
    say "pushing $ref"
    docker push -q "$ref" >&2
  done
fi
images+=(REDIS_IMAGE="$redis")
if [ -n "$env_file" ]; then
  printf '%s\n' "${images[@]}" > "$env_file"
  say "wrote ${images[*]} to $env_file"
else
  printf '%s\n' "${images[@]}"
fi
