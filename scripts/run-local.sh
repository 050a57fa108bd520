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
if [ -z "${DOCKER_HOST:-}" ] && ! docker info >/dev/null 2>&1; then
  echo "dockerd: dockerd --data-root /var/lib/docker" >> "$procfile"
fi
cat >> "$procfile" <<PROCS
api: .venv/bin/gunicorn --bind 127.0.0.1:$port --workers ${API_WORKERS:-2} --threads 8 --access-logfile - api.wsgi:app
worker: .venv/bin/celery -A worker.celery_app worker --loglevel INFO --hostname worker1@%h
beat: .venv/bin/celery -A worker.celery_app beat --loglevel INFO --schedule .state/celerybeat-schedule
flower: FLOWER_UNAUTHENTICATED_API=true .venv/bin/celery -A worker.celery_app flower --port=${FLOWER_PORT:-5555} --address=127.0.0.1
PROCS
echo "swarm-manager: API http://127.0.0.1:$port/  page http://127.0.0.1:$port/manage  Flower http://127.0.0.1:${FLOWER_PORT:-5555}/" >&2
exec .venv/bin/honcho start --procfile "$procfile" --app-root "$PWD"
