#!/usr/bin/env bash
# make up: starts nats-server (JetStream) and redis-server on loopback with their data under
# var/, then every Learntrail service built so far, and prints where they answer.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
var=${LEARNTRAIL_VAR:-$root/var}      # where data, logs and pid files go
bin=${LEARNTRAIL_BIN:-$root/target/release}
mkdir -p "$var"/{nats,redis,log,run,archive,spool}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() { # wanted port, else the first free one above it
  local port=$1
  while port_busy "$port"; do port=$((port + 1)); done
  echo "$port"
}
running() { [ -f "$var/run/$1.pid" ] && kill -0 "$(cat "$var/run/$1.pid")" 2>/dev/null; }

# Ports are chosen once and kept in var/ports.env, so a second `make up` finds the same stack.
if [ ! -f "$var/ports.env" ]; then
  cat > "$var/ports.env" <<PORTS
NATS_PORT=$(pick_port 4222)
NATS_MONITOR_PORT=$(pick_port 8222)
REDIS_PORT=$(pick_port 6379)
TRACKING_PORT=$(pick_port 8081)
TRACKING_METRICS_PORT=$(pick_port 9181)
ROTATOR_METRICS_PORT=$(pick_port 9184)
ANALYTICS_PORT=$(pick_port 8083)
ANALYTICS_GRPC_PORT=$(pick_port 50051)
ANALYTICS_METRICS_PORT=$(pick_port 9183)
EAGLE_PORT=$(pick_port 8084)
EAGLE_METRICS_PORT=$(pick_port 9185)
FAKE_EAGLE_PORT=$(pick_port 9445)
PORTS
fi
# shellcheck disable=SC1091
. "$var/ports.env"
# a ports.env written before analytics-query joined the stack
if [ -z "${ANALYTICS_PORT:-}" ]; then
  cat >> "$var/ports.env" <<PORTS
ANALYTICS_PORT=$(pick_port 8083)
ANALYTICS_GRPC_PORT=$(pick_port 50051)
ANALYTICS_METRICS_PORT=$(pick_port 9183)
PORTS
  # shellcheck disable=SC1091
  . "$var/ports.env"
fi
# a ports.env written before eagle-pinger joined the stack
if [ -z "${EAGLE_PORT:-}" ]; then
  cat >> "$var/ports.env" <<PORTS
EAGLE_PORT=$(pick_port 8084)
EAGLE_METRICS_PORT=$(pick_port 9185)
FAKE_EAGLE_PORT=$(pick_port 9445)
PORTS
  # shellcheck disable=SC1091
  . "$var/ports.env"
fi
[ -f "$var/eagle-key" ] || (umask 077; openssl rand -base64 32 > "$var/eagle-key")
[ -f "$var/jwt-secret" ] || { umask 077; openssl rand -hex 32 > "$var/jwt-secret"; }
# keen-forwarder's ops port, kept in ports.env like the others
if [ -z "${FORWARDER_METRICS_PORT:-}" ]; then
  echo "FORWARDER_METRICS_PORT=$(pick_port 9187)" >> "$var/ports.env"
  # shellcheck disable=SC1091
  . "$var/ports.env"
fi
# notebook-scanner: its port, a pseudonym key, and a demo users.csv with one learner's directory
if [ -z "${NOTEBOOK_METRICS_PORT:-}" ]; then
  echo "NOTEBOOK_METRICS_PORT=$(pick_port 9186)" >> "$var/ports.env"
  # shellcheck disable=SC1091
  . "$var/ports.env"
fi
# ws-gateway's ports, kept in ports.env like the others
if [ -z "${WS_PORT:-}" ]; then
  cat >> "$var/ports.env" <<PORTS
WS_PORT=$(pick_port 8082)
WS_METRICS_PORT=$(pick_port 9182)
PORTS
  # shellcheck disable=SC1091
  . "$var/ports.env"
fi
[ -f "$var/pseudonym-key" ] || (umask 077; openssl rand -hex 32 > "$var/pseudonym-key")
# (nbgrader's student layout <course>/<assignment>/<notebook>: the demo learner is in ruby-101)
mkdir -p "$var/notebooks/homes/demo/ruby-101/ps1"
if [ ! -f "$var/notebooks/users.csv" ]; then
  printf 'uid,notebooks,name\ndemo,homes/demo,Demo Learner\n' > "$var/notebooks/users.csv"
  cp services/notebook-scanner/tests/fixtures/unanswered.ipynb "$var/notebooks/homes/demo/ruby-101/ps1/problem1.ipynb"
fi
# the dashboard's roster: real names for instructors. `demo` is found through its pseudonym (the
# same PSEUDONYM_KEY as the notebook scanner); learner-1, the banner's token, by its actor cell
if [ ! -f "$var/roster.csv" ]; then
  printf 'uid,name,email,actor\ndemo,Demo Learner,demo@example.org,\nlearner-1,Sample Learner,learner-1@example.org,learner-1\n' > "$var/roster.csv"
fi

export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export JWT_SECRET; JWT_SECRET=$(cat "$var/jwt-secret")
export ARCHIVE_DIR="$var/archive"
export LOG_FORMAT=json

if ! running nats; then
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  nohup "$nats_bin" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -js -sd "$var/nats" \
    -l "$var/log/nats.log" -P "$var/run/nats.pid" >/dev/null 2>&1 &
fi
if ! running redis; then
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$var/redis" \
    --pidfile "$var/run/redis.pid" --logfile "$var/log/redis.log" >/dev/null
fi
for _ in $(seq 100); do port_busy "$NATS_PORT" && port_busy "$REDIS_PORT" && break; sleep 0.1; done
port_busy "$NATS_PORT" || { echo "nats-server did not start; see var/log/nats.log" >&2; exit 1; }

start() { # name, then the environment for it
  local name=$1; shift
  running "$name" && return 0
  env "$@" nohup "$bin/$name" >>"$var/log/$name.log" 2>&1 &
  echo $! > "$var/run/$name.pid"
}
start tracking-api HTTP_ADDR="127.0.0.1:$TRACKING_PORT" METRICS_ADDR="127.0.0.1:$TRACKING_METRICS_PORT"
# the archive goes to var/archive unless S3_BUCKET (and S3_ENDPOINT, keys...) are set
start s3-rotator METRICS_ADDR="127.0.0.1:$ROTATOR_METRICS_PORT" SEGMENT_DIR="$var/rotator" \
  ROTATE_INTERVAL="${ROTATE_INTERVAL:-1m}"
start analytics-query HTTP_ADDR="127.0.0.1:$ANALYTICS_PORT" GRPC_ADDR="127.0.0.1:$ANALYTICS_GRPC_PORT" \
  METRICS_ADDR="127.0.0.1:$ANALYTICS_METRICS_PORT" ROSTER_CSV="$var/roster.csv" \
  PSEUDONYM_KEY="$(cat "$var/pseudonym-key")"
start ws-gateway HTTP_ADDR="127.0.0.1:$WS_PORT" METRICS_ADDR="127.0.0.1:$WS_METRICS_PORT" \
  ANALYTICS_GRPC_URL="http://127.0.0.1:$ANALYTICS_GRPC_PORT"
# forwarding is off unless configured: KEEN_PROJECT_ID + KEEN_WRITE_KEY, WEBHOOK_URLS, LRS_URL
[ ! -x "$bin/keen-forwarder" ] || start keen-forwarder METRICS_ADDR="127.0.0.1:$FORWARDER_METRICS_PORT"
# demo meters: fake-eagle plays the Rainforest cloud relay for 000001 (ok), 000002 (solar export)
# and 000003 (its password was changed: refused)
start fake-eagle FAKE_EAGLE_ADDR="127.0.0.1:$FAKE_EAGLE_PORT" FAKE_EAGLE_METERS=3 \
  FAKE_EAGLE_EXPORT=000002 FAKE_EAGLE_MODES=000003=bad_credentials
start eagle-pinger HTTP_ADDR="127.0.0.1:$EAGLE_PORT" METRICS_ADDR="127.0.0.1:$EAGLE_METRICS_PORT" \
  EAGLE_SECRET_KEY="$(cat "$var/eagle-key")" \
  EAGLE_CLOUD_URL="http://127.0.0.1:$FAKE_EAGLE_PORT/cgi-bin/post_manager"
start notebook-scanner METRICS_ADDR="127.0.0.1:$NOTEBOOK_METRICS_PORT" USERS_CSV="$var/notebooks/users.csv" \
  SNAPSHOT_DIR="$var/snapshots" PSEUDONYM_KEY="$(cat "$var/pseudonym-key")"

for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$TRACKING_METRICS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$TRACKING_METRICS_PORT/readyz" >/dev/null \
  || { echo "tracking-api is not ready; see var/log/tracking-api.log" >&2; exit 1; }
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$ANALYTICS_METRICS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ANALYTICS_METRICS_PORT/readyz" >/dev/null \
  || { echo "analytics-query is not ready; see var/log/analytics-query.log" >&2; exit 1; }

for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$WS_METRICS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$WS_METRICS_PORT/readyz" >/dev/null \
  || { echo "ws-gateway is not ready; see var/log/ws-gateway.log" >&2; exit 1; }

for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$EAGLE_METRICS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$EAGLE_METRICS_PORT/readyz" >/dev/null \
  || { echo "eagle-pinger is not ready; see var/log/eagle-pinger.log" >&2; exit 1; }
service_token=$("$bin/learntrail-token" --secret-file "$var/jwt-secret" --sub make-up --role service)
for id in 000001 000002 000003; do # the fake's demo credentials: pw-<id>, meter-<id>@example.org
  curl -fs -X POST "http://127.0.0.1:$EAGLE_PORT/api/user/$id" -H "Authorization: Bearer $service_token" \
    -H 'Content-Type: application/json' >/dev/null \
    -d "{\"user_email\":\"meter-$id@example.org\",\"user_pw\":\"pw-$id\",\"api\":\"cloud\",\"actor\":\"household-$id\",\"course\":\"energy-101\"}" \
    || { echo "cannot register demo meter $id; see var/log/eagle-pinger.log" >&2; exit 1; }
done

forwarding="${KEEN_PROJECT_ID:+Keen project $KEEN_PROJECT_ID, }${WEBHOOK_URLS:+webhooks, }${LRS_URL:+LRS $LRS_URL, }"
forwarding=${forwarding%, }
[ -x "$bin/keen-forwarder" ] || forwarding="not built (cargo build --release --bin keen-forwarder)"
token=$("$bin/learntrail-token" --secret-file "$var/jwt-secret" --sub learner-1 --role student)
instructor_token=$("$bin/learntrail-token" --secret-file "$var/jwt-secret" --sub make-up-instructor --role instructor)
archive_where=${S3_BUCKET:+s3://$S3_BUCKET}
archive_where=${archive_where:-$ARCHIVE_DIR}
cat <<EOT

Learntrail is up (data and logs under var/; stop it with: make down)
  NATS (JetStream)  $NATS_URL   (streams: http://127.0.0.1:$NATS_MONITOR_PORT/jsz?streams=1)
  Redis             $REDIS_URL
  tracking-api      http://127.0.0.1:$TRACKING_PORT/api/tracking   (ops: http://127.0.0.1:$TRACKING_METRICS_PORT/metrics)
  s3-rotator        archive in $archive_where every ${ROTATE_INTERVAL:-1m}   (ops: http://127.0.0.1:$ROTATOR_METRICS_PORT/metrics)
  analytics-query   http://127.0.0.1:$ANALYTICS_PORT/api/v1/   gRPC 127.0.0.1:$ANALYTICS_GRPC_PORT   (ops: http://127.0.0.1:$ANALYTICS_METRICS_PORT/metrics)
  ws-gateway        ws://127.0.0.1:$WS_PORT/ws   (ops: http://127.0.0.1:$WS_METRICS_PORT/metrics)
  keen-forwarder    ${forwarding:-off (set KEEN_PROJECT_ID + KEEN_WRITE_KEY, WEBHOOK_URLS or LRS_URL)}   (ops: http://127.0.0.1:$FORWARDER_METRICS_PORT/metrics)
  eagle-pinger      http://127.0.0.1:$EAGLE_PORT/api/users   (ops: http://127.0.0.1:$EAGLE_METRICS_PORT/metrics; meters 000001-000003 on fake-eagle 127.0.0.1:$FAKE_EAGLE_PORT)
  notebook-scanner  drop a notebook into $var/notebooks/homes/demo/ (learners: $var/notebooks/users.csv; snapshots: $var/snapshots)   (ops: http://127.0.0.1:$NOTEBOOK_METRICS_PORT/metrics)
  shim-agent        $bin/shim-agent install --user   (then: shim-agent upload, with NATS_URL=$NATS_URL)

A student token (24 h):
  TOKEN=$token

The dashboard, course ruby-101 (paste into a browser; the instructor token in the link moves into the
tab's session storage; names come from $var/roster.csv; the requests below show up within seconds):
  http://127.0.0.1:$ANALYTICS_PORT/?course=ruby-101#token=$instructor_token

Try it:
  curl -i -X POST http://127.0.0.1:$TRACKING_PORT/api/tracking \\
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \\
    -d '{"tracking_event_type":"video_play","node_id":"unit-1","course_slug":"ruby-101","event_data":{"video_id":"intro","current_time":0}}'
  curl -s 'http://127.0.0.1:$NATS_MONITOR_PORT/jsz?streams=1' | grep -A3 '"name": "EVENTS"'   # the event is stored
  $bin/ws-send "ws://127.0.0.1:$WS_PORT/ws?token=$token" '{"id":"try-1","user":"learner-1","t":'"\$(date +%s000)"',"exp":"spinner","hardware":"spin30","course":"engdes1","type":"log","payload":{"log":"click","data":{"target":"run"}}}' '{"type":"request","user":"learner-1","content":"summary"}'   # a lab log over WebSocket (ack) and learner-1's summary
  curl -s http://127.0.0.1:$EAGLE_PORT/api/event/000001 -H "Authorization: Bearer $instructor_token"   # a meter's reading, polled now
  curl -s http://127.0.0.1:$EAGLE_PORT/api/user/000003 -H "Authorization: Bearer $instructor_token"   # a refused meter: auth_failed
  cp services/notebook-scanner/tests/fixtures/passing.ipynb $var/notebooks/homes/demo/ruby-101/ps1/problem1.ipynb   # a save: its snapshot (and a backup of the last one) in $var/snapshots/demo/ruby-101/ps1, its NotebookSnapshot event in EVENTS; the dashboard shows the cells pass
  curl -s http://127.0.0.1:$ANALYTICS_PORT/api/v1/learners/learner-1/summary -H "Authorization: Bearer $token"   # learner-1's summary
  curl -s 'http://127.0.0.1:$ANALYTICS_PORT/3.0/projects/learntrail/queries/count?event_collection=lms.video&timeframe=this_1_days&interval=hourly&group_by=lmsEvent.eventType' -H "Authorization: $token"   # Keen-style count
EOT
