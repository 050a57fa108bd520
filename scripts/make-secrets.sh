#!/usr/bin/env bash
# Make the secrets docker-compose.yml and stack.yml read, as files in DIR (default ./secrets), each
# only if it is missing (so running it again changes nothing):
#   admin_token        the admin's API token (ADMIN_TOKEN_FILE)
#   secret_key         the key of /manage's sessions (SECRET_KEY_FILE)
#   proxy_auth_token   configurable-http-proxy's API token, for the proxy and the workers
#   flower_basic_auth  Flower's user:password (user "ops")
#   registry_auth      the workers' registry credentials (REGISTRY_AUTH_FILE): made with no
#                      credentials ({"auths": {}}); replace it with a Docker config.json to pull from
#                      private registries (`docker login` writes one)
# The folder is 0700. Compose bind-mounts the files into containers that run as uid 10001: as root
# they are made that uid's, mode 0400; otherwise mode 0444 (the 0700 folder keeps other local users
# out). A Swarm stack copies them into the Swarm (docker stack deploy), where stack.yml sets owner and mode.
# Usage: scripts/make-secrets.sh [DIR]
set -euo pipefail
dir=${1:-secrets}
mkdir -p "$dir"
chmod 0700 "$dir"
token() { python3 "$(dirname "$0")/new-secret"; }
for name in admin_token secret_key proxy_auth_token flower_basic_auth registry_auth; do
  file=$dir/$name
  [ -s "$file" ] && continue
  case "$name" in
    flower_basic_auth) value="ops:$(token)" ;;
    registry_auth) value='{"auths": {}}' ;;
    *) value=$(token) ;;
  esac
  (umask 077 && printf '%s\n' "$value" > "$file")
  if [ "$(id -u)" = 0 ]; then
    chown 10001:10001 "$file" && chmod 0400 "$file"
  else
    chmod 0444 "$file"
  fi
  echo "made $file" >&2
done
