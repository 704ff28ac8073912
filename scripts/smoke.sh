#!/usr/bin/env bash
# make smoke: `make up` as a user meets it. Starts the stack in a scratch folder, runs the sample
# curl that the banner prints, and checks that the answer is 202 with an event id, that the event
# is in the EVENTS stream, that the banner's analytics-query curls (learner-1's summary, a
# Keen-style count) count it, and that s3-rotator archived it; stops the stack afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
LEARNTRAIL_VAR=$(mktemp -d /tmp/learntrail-smoke.XXXXXX)
export LEARNTRAIL_VAR LEARNTRAIL_BIN=${LEARNTRAIL_BIN:-$PWD/target/release} ROTATE_INTERVAL=2s
trap 'scripts/down.sh >/dev/null' EXIT
fail() { echo "smoke: $*; logs in $LEARNTRAIL_VAR/log" >&2; exit 1; }

banner=$(scripts/up.sh)
# shellcheck disable=SC1091
. "$LEARNTRAIL_VAR/ports.env"
sample=$(sed -n '/^Try it:/,/jsz/p' <<<"$banner" | sed '1d;$d')
[ -n "$sample" ] || fail "the banner shows no sample request"
answer=$(eval "${sample/curl -i/curl -si}")
grep -q '^HTTP/1.1 202' <<<"$answer" || fail "the sample request was not accepted: $answer"
id=$(tail -n1 <<<"$answer" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || fail "no event id in the answer: $answer"
echo "smoke: 202 for event $id"

messages=$(curl -fs "http://127.0.0.1:$NATS_MONITOR_PORT/jsz?streams=1" | tr -d ' \n' \
  | grep -o '"name":"EVENTS".*' | grep -o '"messages":[0-9]*' | head -n1 | cut -d: -f2)
[ "${messages:-0}" -ge 1 ] || fail "EVENTS holds no message"
echo "smoke: EVENTS holds $messages message(s)"

# the banner's analytics curls: learner-1's summary counts the posted video play, and so does
# the Keen-style count (projection is asynchronous: poll until it shows, at most 30 s)
summary=$(grep "learner-1's summary" <<<"$banner" | sed 's/ *# .*//')
count=$(grep 'Keen-style count' <<<"$banner" | sed 's/ *# .*//')
[ -n "$summary" ] && [ -n "$count" ] || fail "the banner shows no analytics-query curls"
for _ in $(seq 300); do
  answer=$(eval "$summary -w '\\n%{http_code}'") || true
  [ "$(tail -n1 <<<"$answer")" = 200 ] && grep -q '"videosPlayed":"1"' <<<"$answer" && break
  sleep 0.1
done
[ "$(tail -n1 <<<"$answer")" = 200 ] || fail "the summary curl did not answer 200: $answer"
grep -q '"videosPlayed":"1"' <<<"$answer" || fail "the summary does not count the posted video play: $answer"
echo "smoke: learner-1's summary counts the video play"
answer=$(eval "$count -w '\\n%{http_code}'") || true
[ "$(tail -n1 <<<"$answer")" = 200 ] && grep -q '"result":1' <<<"$answer" \
  || fail "the Keen-style count does not count the video play: $answer"
echo "smoke: the Keen-style count counts it"

for _ in $(seq 300); do
  if find "$LEARNTRAIL_VAR/archive" -name '*.ndjson.gz' -exec zcat {} + 2>/dev/null | grep -q "\"$id\""; then
    echo "smoke: event $id archived under $(cd "$LEARNTRAIL_VAR/archive" && find . -name '*.ndjson.gz' | head -n1)"
    scripts/down.sh >/dev/null
    rm -rf "$LEARNTRAIL_VAR"
    exit 0
  fi
  sleep 0.1
done
fail "event $id not archived within 30 s"
