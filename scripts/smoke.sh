#!/usr/bin/env bash
# make smoke: `make up` as a user meets it. Starts the stack in a scratch folder, runs the sample
# curl that the banner prints, and checks that the answer is 202 with an event id, that the event
# is in the EVENTS stream, that the banner's analytics-query curls (learner-1's summary, a
# Keen-style count) count it, that the banner's dashboard link shows it (and the demo notebook
# learner, with the roster's names), and that s3-rotator archived it; stops the stack afterwards.
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

# the banner's dashboard link: the cohort of ruby-101 lists learner-1 (the posted video play) and
# the demo notebook learner, with the roster's names for this instructor token; learner-1's
# timeline holds the event; and a headless browser opening the link paints both rows
link=$(grep -o 'http://[^ ]*/?course=ruby-101#token=[^ ]*' <<<"$banner" | head -n1 || true)
[ -n "$link" ] || fail "the banner shows no dashboard link"
base=${link%%/?course=*}
instructor=${link##*#token=}
for _ in $(seq 300); do
  cohort=$(curl -fs "$base/api/v1/dashboard/cohorts/ruby-101" -H "Authorization: Bearer $instructor") || true
  grep -q '"learner":"learner-1"' <<<"$cohort" && grep -q '"name":"Demo Learner"' <<<"$cohort" && break
  sleep 0.1
done
grep -q '"learner":"learner-1"' <<<"$cohort" || fail "the dashboard's ruby-101 cohort does not list learner-1: $cohort"
grep -q '"name":"Sample Learner"' <<<"$cohort" || fail "the cohort shows no roster name for learner-1: $cohort"
grep -q '"name":"Demo Learner"' <<<"$cohort" || fail "the demo notebook learner is not in the cohort under its roster name: $cohort"
curl -fs "$base/api/v1/learners/learner-1/timeline" -H "Authorization: Bearer $instructor" | grep -q "\"$id\"" \
  || fail "learner-1's timeline does not hold event $id"
chromium=$(command -v chromium || command -v chromium-browser) || fail "no chromium (make test-deps installs it)"
dom=$(timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --no-first-run \
  --user-data-dir="$LEARNTRAIL_VAR/chromium" --virtual-time-budget=15000 --dump-dom "$link" 2>/dev/null) || true
grep -q 'data-learner="learner-1"' <<<"$dom" && grep -q 'Sample Learner' <<<"$dom" && grep -q 'Demo Learner' <<<"$dom" \
  || fail "the dashboard page, opened from the banner's link, does not show both learners: ${dom:0:2000}"
echo "smoke: the banner's dashboard link shows learner-1 and the demo learner, with their names"

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
