#!/usr/bin/env bash
# Run the whole system in the foreground: API, worker, beat, Flower, and Redis and dockerd
# when none is running already. Ctrl-C stops everything this started.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .state/redis
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
port=${PORT:-3000}
procfile=.state/Procfile
: > "$procfile"

if ! .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" "$REDIS_URL" 2>/dev/null; then
  case "$REDIS_URL" in
    redis://127.0.0.1:*|redis://localhost:*)
      rport=$(echo "$REDIS_URL" | sed -E 's#redis://[^:]+:([0-9]+).*#\1#')
      # Append-only persistence: records survive a Redis restart.
      echo "redis: redis-server --port $rport --bind 127.0.0.1 --appendonly yes --dir $PWD/.state/redis --save ''" >> "$procfile" ;;
    *) echo "REDIS_URL=$REDIS_URL does not answer and is not local; start it first" >&2; exit 1 ;;
  esac
fi
# configurable-http-proxy (routes <hostname>.<DOMAIN> to notebooks): with PROXY=chp, or a local
# PROXY_API_URL, on 127.0.0.1:8000 (public) and :8001 (API) unless those URLs say otherwise.
# Installed into .state/chp by scripts/bring-up.sh. The token is passed by environment only.
if [ "${PROXY:-}" = chp ] || [ -n "${PROXY_API_URL:-}" ]; then
  export PROXY_API_URL=${PROXY_API_URL:-http://127.0.0.1:8001}
  export PROXY_PUBLIC_URL=${PROXY_PUBLIC_URL:-http://127.0.0.1:8000}
  if [ -z "${PROXY_AUTH_TOKEN:-}" ]; then
    PROXY_AUTH_TOKEN=$(.venv/bin/python -c "import secrets; print(secrets.token_hex(24))")
    export PROXY_AUTH_TOKEN
  fi
  case "$PROXY_API_URL" in
    http://127.0.0.1:*|http://localhost:*)
      api_port=$(echo "$PROXY_API_URL" | sed -E 's#^http://[^:]+:([0-9]+).*#\1#')
      public_port=$(echo "$PROXY_PUBLIC_URL" | sed -E 's#^http://[^:]+:([0-9]+).*#\1#')
      if (exec 3<>"/dev/tcp/127.0.0.1/$api_port") 2>/dev/null; then
        echo "a proxy API already answers on port $api_port: using it (PROXY_AUTH_TOKEN must match)" >&2
      else
        echo "chp: CONFIGPROXY_AUTH_TOKEN=\"\$PROXY_AUTH_TOKEN\" .state/chp/node_modules/.bin/configurable-http-proxy --host-routing --ip 127.0.0.1 --port $public_port --api-ip 127.0.0.1 --api-port $api_port --log-level warn" >> "$procfile"
      fi
      echo "swarm-manager: notebooks at http://<hostname>.${DOMAIN:-localhost}:$public_port/ through configurable-http-proxy" >&2 ;;
    *) echo "using the proxy API at $PROXY_API_URL (not started here)" >&2 ;;
  esac
fi
# Authentication is on unless AUTH=off is set. Without ADMIN_TOKEN one is generated once into
# .state/admin-token (mode 0600) and reused; /manage's session key is generated in Redis.
export AUTH=${AUTH:-on}
case "$(echo "$AUTH" | tr '[:upper:]' '[:lower:]')" in
  0|off|false|no)
    echo "swarm-manager: WARNING: AUTH=off: anyone who reaches the API can spawn, see and kill every notebook" >&2 ;;
  *)
    if [ -z "${ADMIN_TOKEN:-}" ]; then
      if [ ! -s .state/admin-token ]; then
        (umask 077 && .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(32))" > .state/admin-token)
      fi
      chmod 0600 .state/admin-token
      ADMIN_TOKEN=$(cat .state/admin-token)
      export ADMIN_TOKEN
      echo "swarm-manager: the admin token is in $PWD/.state/admin-token; use it as" >&2
      echo "  curl -H \"Authorization: Bearer \$(cat .state/admin-token)\" http://127.0.0.1:$port/containers" >&2
      echo "  SWARM_MANAGER_TOKEN=\$(cat .state/admin-token) .venv/bin/swarm-manager list" >&2
      echo "  and sign in to http://127.0.0.1:$port/manage with it (AUTH=off turns authentication off)" >&2
    fi ;;
esac
if [ -z "${DOCKER_HOST:-}" ] && ! docker info >/dev/null 2>&1; then
  echo "dockerd: dockerd --data-root /var/lib/docker" >> "$procfile"
fi
cat >> "$procfile" <<PROCS
api: .venv/bin/gunicorn --bind 127.0.0.1:$port --workers ${API_WORKERS:-2} --threads ${API_THREADS:-32} --graceful-timeout 10 --access-logfile - api.wsgi:app
worker: .venv/bin/celery -A worker.celery_app worker --loglevel INFO --hostname worker1@%h
beat: .venv/bin/celery -A worker.celery_app beat --loglevel INFO --schedule .state/celerybeat-schedule
flower: .venv/bin/celery -A worker.celery_app flower --port=${FLOWER_PORT:-5555} --address=127.0.0.1
PROCS
# Flower reads FLOWER_BASIC_AUTH (user:password[,user:password]) itself and then asks for it on
# its pages and its API. Set but empty it would lock everyone out: unset it instead. Without it
# Flower's pages are open (on loopback only) and its API refuses every call, so no other web
# page open in the operator's browser can use it to revoke tasks or shut workers down.
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then unset FLOWER_BASIC_AUTH; fi
echo "swarm-manager: API http://127.0.0.1:$port/  page http://127.0.0.1:$port/manage  Flower http://127.0.0.1:${FLOWER_PORT:-5555}/" >&2
exec .venv/bin/honcho start --procfile "$procfile" --app-root "$PWD"
