#!/usr/bin/env bash
# Run the whole system in the foreground under supervisord: the API, a worker, beat, the engine watcher, Flower, the
# routing proxy (configurable-http-proxy; PROXY=off leaves it out), and Redis and dockerd when none
# is running already. supervisord restarts a process that dies (and logs it) while the others keep
# serving; Ctrl-C (SIGINT or SIGTERM) stops everything it started.
#
# Each process's command line is the `swarm-manager` command's (cli/servers.py), as in the
# Dockerfiles and compose. Secrets reach only the processes that use them, as files in .state
# named by <SETTING>_FILE: the admin token and session key the API, the proxy token the proxy
# and the workers, Flower's password Flower.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${VENV:-.venv}
case "$venv" in /*) ;; *) venv=$root/$venv ;; esac
sm="$venv/bin/swarm-manager"
state=$root/.state
mkdir -p "$state/redis" "$state/run"
chmod 0700 "$state/run"
say() { echo "swarm-manager: $*" >&2; }

export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
port=${PORT:-3000}
flower_port=${FLOWER_PORT:-5555}

# A secret for one process: the value from the environment (or a file of the operator's, through
# <NAME>_FILE), written to .state/run/<file> (mode 0600); prints the path.
secret_file() {  # NAME FILE [GENERATE]
  local name=$1 file=$state/run/$2 from_env
  from_env=$(printenv "$1" || true)
  if [ -n "$(printenv "${name}_FILE" || true)" ] && [ -z "$from_env" ]; then
    printenv "${name}_FILE"; return
  fi
  if [ -z "$from_env" ] && [ -n "${3:-}" ]; then
    from_env=$("$venv/bin/python" scripts/new-secret)
  fi
  [ -n "$from_env" ] || return 0
  (umask 077 && printf '%s\n' "$from_env" > "$file")
  echo "$file"
}

# -- supervisord's configuration ---------------------------------------------------------------
conf=$state/supervisord.conf
# Open files for the processes: up to 65536, as far as this shell's hard limit allows.
minfds=$(ulimit -Hn)
if [ "$minfds" = unlimited ] || [ "$minfds" -gt 65536 ]; then minfds=65536; fi
# Values in supervisord's configuration: '%' is its interpolation character.
esc() { printf '%s' "$1" | sed 's/%/%%/g'; }
quote() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; esc "${out% }"; }
envlist() {  # KEY=VALUE... -> KEY="VALUE",...
  local out="" kv v
  for kv in "$@"; do
    v=${kv#*=}; v=${v//\\/\\\\}; v=${v//\"/\\\"}
    out+="${kv%%=*}=\"$(esc "$v")\","
  done
  printf '%s' "${out%,}"
}
programs=()
program() {  # NAME PRIORITY STOPSIGNAL "KEY=VALUE ..." COMMAND...
  local name=$1 priority=$2 stopsignal=$3 env=$4
  shift 4
  programs+=("$name")
  cat >> "$conf" <<EOF

[program:$name]
command=$(quote "$@")
directory=$(esc "$root")
priority=$priority
autorestart=true
startsecs=1
startretries=100
stopsignal=$stopsignal
stopwaitsecs=10
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
EOF
  # shellcheck disable=SC2086 # env is a list of KEY=VALUE words without spaces
  [ -z "$env" ] || echo "environment=$(envlist $env)" >> "$conf"
}

cat > "$conf" <<EOF
; Written by scripts/run-local.sh on each \`make run\`; edits are lost.
[supervisord]
nodaemon=true
; Every open event stream and idle client is a file descriptor of the API's processes.
minfds=$minfds
; In the foreground supervisord logs to the terminal too.
logfile=$(esc "$state/supervisord.log")
loglevel=info
pidfile=$(esc "$state/supervisord.pid")
childlogdir=$(esc "$state")

[unix_http_server]
file=$(esc "$state/supervisor.sock")
chmod=0700

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$(esc "$state/supervisor.sock")
EOF

# -- Redis and the engine, when none is running ---------------------------------------------------
# Behind Redis Sentinel (REDIS_SENTINELS) the sentinels name the server: nothing to start here.
if [ -z "${REDIS_SENTINELS:-}" ] &&
  ! "$venv/bin/python" -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" "$REDIS_URL" 2>/dev/null; then
  case "$REDIS_URL" in
    redis://127.0.0.1:*|redis://localhost:*)
      rport=$(echo "$REDIS_URL" | sed -E 's#redis://[^:]+:([0-9]+).*#\1#')
      # Append-only persistence: records survive a Redis restart.
      program redis 10 TERM "" redis-server --port "$rport" --bind 127.0.0.1 --appendonly yes \
        --dir "$state/redis" --save "" ;;
    *) say "REDIS_URL=$REDIS_URL does not answer and is not local; start it first"; exit 1 ;;
  esac
fi
if [ -z "${DOCKER_HOST:-}" ] && ! docker info >/dev/null 2>&1; then
  program dockerd 10 TERM "" dockerd --data-root /var/lib/docker
fi

# -- the routing proxy: configurable-http-proxy, <hostname>.<DOMAIN> -> the notebook ---------------
proxy=$(echo "${PROXY:-chp}" | tr '[:upper:]' '[:lower:]')
proxy_env=""
if [ "$proxy" != off ] || [ -n "${PROXY_API_URL:-}" ]; then
  export PROXY_API_URL=${PROXY_API_URL:-http://127.0.0.1:8001}
  export PROXY_PUBLIC_URL=${PROXY_PUBLIC_URL:-http://127.0.0.1:8000}
  proxy_token=$(secret_file PROXY_AUTH_TOKEN proxy-token generate)
  proxy_env="PROXY_AUTH_TOKEN_FILE=$proxy_token"
  public_port=$(echo "$PROXY_PUBLIC_URL" | sed -E 's#^https?://[^:/]+:?([0-9]*).*#\1#')
  # Where people open notebooks: through this proxy, on its port.
  export PUBLIC_URL=${PUBLIC_URL:-http://\{hostname\}.\{domain\}${public_port:+:$public_port}/}
  case "$PROXY_API_URL" in
    http://127.0.0.1:*|http://localhost:*)
      api_port=$(echo "$PROXY_API_URL" | sed -E 's#^http://[^:]+:([0-9]+).*#\1#')
      if (exec 3<>"/dev/tcp/127.0.0.1/$api_port") 2>/dev/null; then
        say "a proxy API already answers on port $api_port: using it (PROXY_AUTH_TOKEN must match)"
      else
        chp="$root/.state/chp/node_modules/.bin/configurable-http-proxy"
        [ -x "$chp" ] || { say "configurable-http-proxy is not installed (scripts/bring-up.sh run installs it)"; exit 1; }
        # CHP reads its token from the environment only: handed over from the file, never on a command line.
        chp_run='CONFIGPROXY_AUTH_TOKEN=$(cat "$1") exec "$2" --host-routing --ip 127.0.0.1 --port "$3" --api-ip 127.0.0.1 --api-port "$4" --log-level warn'
        program proxy 15 TERM "" /bin/sh -c "$chp_run" sh "$proxy_token" "$chp" "$public_port" "$api_port"
      fi ;;
    *) say "using the proxy API at $PROXY_API_URL (not started here)" ;;
  esac
fi

# -- authentication: on unless AUTH=off ------------------------------------------------------------
export AUTH=${AUTH:-on}
api_env=""
case "$(echo "$AUTH" | tr '[:upper:]' '[:lower:]')" in
  0|off|false|no)
    say "WARNING: AUTH=off: anyone who reaches the API can spawn, see and kill every notebook" ;;
  *)
    if [ -n "${ADMIN_TOKEN:-}" ] || [ -n "${ADMIN_TOKEN_FILE:-}" ]; then
      admin_token=$(secret_file ADMIN_TOKEN admin-token)
    else
      # Generated once and reused, so the operator's copy stays valid across runs.
      if [ ! -s "$state/admin-token" ]; then
        (umask 077 && "$venv/bin/python" scripts/new-secret > "$state/admin-token")
      fi
      chmod 0600 "$state/admin-token"
      admin_token=$state/admin-token
      say "the admin token is in $state/admin-token; use it as"
      say "  curl -H \"Authorization: Bearer \$(cat .state/admin-token)\" http://127.0.0.1:$port/containers"
      say "  SWARM_MANAGER_TOKEN=\$(cat .state/admin-token) $venv/bin/swarm-manager list"
      say "  and sign in to http://127.0.0.1:$port/manage with it (AUTH=off turns authentication off)"
    fi
    api_env="ADMIN_TOKEN_FILE=$admin_token"
    secret_key=$(secret_file SECRET_KEY secret-key)
    [ -z "$secret_key" ] || api_env+=" SECRET_KEY_FILE=$secret_key" ;;
esac
# Flower always asks for a password: FLOWER_BASIC_AUTH, or one made once and kept.
if [ -n "${FLOWER_BASIC_AUTH:-}" ] || [ -n "${FLOWER_BASIC_AUTH_FILE:-}" ]; then
  flower_auth=$(secret_file FLOWER_BASIC_AUTH flower-auth)
else
  flower_auth=$state/flower-auth
  if [ ! -s "$flower_auth" ]; then
    (umask 077 && "$venv/bin/python" -c "import secrets; print('admin:' + secrets.token_urlsafe(18))" > "$flower_auth")
  fi
  say "Flower's user and password (user:password) are in $flower_auth"
fi
flower_env="FLOWER_BASIC_AUTH_FILE=$flower_auth"
# From here on no process inherits a secret: each gets the file it needs (above).
unset ADMIN_TOKEN ADMIN_TOKEN_FILE SECRET_KEY SECRET_KEY_FILE PROXY_AUTH_TOKEN PROXY_AUTH_TOKEN_FILE \
  FLOWER_BASIC_AUTH FLOWER_BASIC_AUTH_FILE

# A bad setting stops the run here, with its message, instead of a restart loop.
# shellcheck disable=SC2086
env $api_env $proxy_env "$sm" check

# -- swarm-manager's own processes -------------------------------------------------------------
# SIGINT/SIGQUIT: quick shutdowns (gunicorn closes open event streams, a worker leaves running
# spawns to redelivery and the reconciler), so Ctrl-C does not wait on a slow notebook.
program api 20 INT "$api_env" "$sm" serve --bind "127.0.0.1:$port"
program worker 20 QUIT "$proxy_env" "$sm" worker --hostname "worker1@%h"
program beat 20 TERM "" "$sm" beat --schedule "$state/celerybeat-schedule"
program watch 20 TERM "$proxy_env" "$sm" watch
program flower 30 TERM "$flower_env" "$sm" flower --port "$flower_port" --address 127.0.0.1

say "API http://127.0.0.1:$port/  page http://127.0.0.1:$port/manage  Flower http://127.0.0.1:$flower_port/"
[ "$proxy" = off ] && [ -z "${PROXY_API_URL:-}" ] || say "notebooks open at ${PUBLIC_URL} through the proxy"
say "supervising: ${programs[*]}; status: $venv/bin/supervisorctl -c $conf status; Ctrl-C stops everything"
exec "$venv/bin/supervisord" -c "$conf"
