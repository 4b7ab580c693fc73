#!/usr/bin/env bash
# Ingest throughput of several builds or settings, measured in one run on one machine, with the
# runs interleaved (A B C A B C ...) so a change in the machine's load hits every variant alike.
#
# Each variant is LABEL=BINARY[:VALIDATION]; VALIDATION sets ingest.validation (leave it out for
# builds that predate the key). Per variant and round: a fresh spool, the ingest role only,
# single-event POSTs with wrk (c=64, $SECONDS_SINGLE s, bench/single-event.lua), then
# $BATCH_EVENTS events in 500-event batches with audit-loadgen (c=8). Prints every run and the
# median per variant.
#
#   cargo build --release --workspace
#   bench/ingest-compare.sh before=/path/to/old/audit-manager \
#       compatible=./target/release/audit-manager:compatible \
#       strict=./target/release/audit-manager:strict
#
# Needs wrk (apt-get install wrk). Uses 127.0.0.1:$PORT and $DIR (removed between runs).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_SINGLE=${SECONDS_SINGLE:-10}
BATCH_EVENTS=${BATCH_EVENTS:-200000}
PORT=${PORT:-18000}
DIR=${DIR:-/tmp/ingest-compare}
LOADGEN=${LOADGEN:-./target/release/audit-loadgen}
URL="http://127.0.0.1:$PORT"
[ $# -gt 0 ] || { sed -n 2,16p "$0"; exit 2; }

pid=""
cleanup() { [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

start() { # binary validation
  rm -rf "$DIR"
  local env=(AUDIT_MANAGER__SPOOL__PATH="$DIR" AUDIT_MANAGER__HTTP__LISTEN="127.0.0.1:$PORT"
    AUDIT_MANAGER__ROLES=ingest RUST_LOG=warn)
  [ -n "$2" ] && env+=(AUDIT_MANAGER__INGEST__VALIDATION="$2")
  env "${env[@]}" "$1" serve &
  pid=$!
  for _ in $(seq 1 500); do
    curl -sf "$URL/v1/auditmanager/health" >/dev/null 2>&1 && return 0
    sleep 0.02
  done
  echo "server did not come up" >&2
  exit 1
}

stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

declare -A single batch
for ((round = 1; round <= ROUNDS; round++)); do
  for variant in "$@"; do
    label=${variant%%=*}
    spec=${variant#*=}
    bin=${spec%%:*}
    mode=""
    [[ "$spec" == *:* ]] && mode=${spec#*:}
    start "$bin" "$mode"
    s=$(wrk -t1 -c64 -d"${SECONDS_SINGLE}s" -s bench/single-event.lua "$URL" |
      awk '/^Requests\/sec/ { printf "%.0f", $2 }')
    b=$("$LOADGEN" --url "$URL" --events "$BATCH_EVENTS" --concurrency 8 --batch-size 500 |
      awk '/^throughput:/ { printf "%.0f", $2 }')
    stop
    echo "round $round  $label: single $s events/s, batch $b events/s"
    single[$label]+="$s "
    batch[$label]+="$b "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "| variant | single events/s (median of $ROUNDS) | batch-500 events/s (median of $ROUNDS) |"
echo "|---|---|---|"
for variant in "$@"; do
  label=${variant%%=*}
  echo "| $label | $(echo "${single[$label]}" | median) | $(echo "${batch[$label]}" | median) |"
done
