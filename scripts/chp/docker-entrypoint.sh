#!/bin/sh
# configurable-http-proxy in its container (Dockerfile.proxy). CHP reads its API token from the
# environment only (CONFIGPROXY_AUTH_TOKEN); this takes it from the file CONFIGPROXY_AUTH_TOKEN_FILE
# names (a Docker secret) when it is not set, and refuses to start without one: an API without a
# token would let anyone who reaches it route any hostname anywhere.
set -eu
if [ -z "${CONFIGPROXY_AUTH_TOKEN:-}" ] && [ -n "${CONFIGPROXY_AUTH_TOKEN_FILE:-}" ]; then
  CONFIGPROXY_AUTH_TOKEN=$(cat "$CONFIGPROXY_AUTH_TOKEN_FILE")
  export CONFIGPROXY_AUTH_TOKEN
fi
unset CONFIGPROXY_AUTH_TOKEN_FILE
if [ -z "${CONFIGPROXY_AUTH_TOKEN:-}" ]; then
  echo "chp-entrypoint: set CONFIGPROXY_AUTH_TOKEN_FILE (a file holding the proxy's API token) or CONFIGPROXY_AUTH_TOKEN" >&2
  exit 1
fi
exec /opt/chp/node_modules/.bin/configurable-http-proxy "$@"
