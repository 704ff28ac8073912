#!/usr/bin/env bash
# make down: stops what `make up` started (services first, then redis and nats). Data stays in var/.
set -uo pipefail
cd "$(dirname "$0")/.."
run=${LEARNTRAIL_VAR:-var}/run
[ -d "$run" ] || { echo "nothing to stop"; exit 0; }
stop() {
  local pidfile=$run/$1.pid
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped $1"
  fi
  rm -f "$pidfile"
}
for pidfile in "$run"/*.pid; do
  [ -e "$pidfile" ] || continue
  name=$(basename "$pidfile" .pid)
  case $name in nats|redis) ;; *) stop "$name" ;; esac
done
stop redis
stop nats
