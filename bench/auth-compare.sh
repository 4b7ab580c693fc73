#!/usr/bin/env bash
# Ingest throughput with bearer-token authentication against none, same build, measured in one
# run on one machine with the runs interleaved (none token none token ...), so a change in the
# machine's load hits both alike.
#
# Per mode and round: a fresh spool, the ingest role only, single-event POSTs with wrk (c=64,
# $SECONDS_SINGLE s, bench/single-event.lua), then $BATCH_EVENTS events in 500-event batches
# with audit-loadgen (c=8). With `token`, a principals file of $PRINCIPALS entries (the
# benchmark's emitter last, so every request compares every hash) and every request carrying
# `Authorization: Bearer`; its source pattern is `urn:openg2p:*`. Prints every run, the median
# per mode and token's difference to none.
#
#   cargo build --release --workspace
#   bench/auth-compare.sh [./target/release/audit-manager]
#
# Needs wrk (apt-get install wrk) and openssl. Uses 127.0.0.1:$PORT and $DIR (removed between
# runs).
set -euo pipefail

BIN=${1:-./target/release/audit-manager}
ROUNDS=${ROUNDS:-3}
SECONDS_SINGLE=${SECONDS_SINGLE:-10}
BATCH_EVENTS=${BATCH_EVENTS:-200000}
PRINCIPALS=${PRINCIPALS:-20}
PORT=${PORT:-18000}
DIR=${DIR:-/tmp/auth-compare}
LOADGEN=${LOADGEN:-./target/release/audit-loadgen}
URL="http://127.0.0.1:$PORT"

pid=""
work=$(mktemp -d)
cleanup() { [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$DIR" "$work"; }
trap cleanup EXIT

token=$(openssl rand -hex 32)
{
  echo "principals:"
  for i in $(seq 2 "$PRINCIPALS"); do
    echo "  - name: other-$i"
    echo "    role: emitter"
    echo "    $(openssl rand -hex 32 | "$BIN" token hash)"
    echo "    sources: [\"/other/$i/*\"]"
  done
  echo "  - name: loadgen"
  echo "    role: emitter"
  echo "    $(echo "$token" | "$BIN" token hash)"
  echo "    sources: [\"urn:openg2p:*\"]"
} > "$work/tokens.yaml"

start() { # mode
  rm -rf "$DIR"
  local env=(AUDIT_MANAGER__SPOOL__PATH="$DIR" AUDIT_MANAGER__HTTP__LISTEN="127.0.0.1:$PORT"
    AUDIT_MANAGER__ROLES=ingest RUST_LOG=warn AUDIT_MANAGER__AUTH__MODE="$1")
  [ "$1" = token ] && env+=(AUDIT_MANAGER__AUTH__TOKENS_FILE="$work/tokens.yaml")
  env "${env[@]}" "$BIN" serve &
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
  for mode in none token; do
    start "$mode"
    tok=""
    [ "$mode" = token ] && tok=$token
    out=$(AUDIT_TOKEN="$tok" wrk -t1 -c64 -d"${SECONDS_SINGLE}s" -s bench/single-event.lua "$URL")
    s=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
    # A refused request would make the numbers meaningless: every answer must be a 202.
    grep -q 'non-2xx/3xx 0$' <<<"$out" || { echo "$mode: non-202 answers:"; echo "$out"; exit 1; }
    b=$(AUDIT_LOADGEN_TOKEN="$tok" "$LOADGEN" --url "$URL" --events "$BATCH_EVENTS" \
      --concurrency 8 --batch-size 500 | awk '/^throughput:/ { printf "%.0f", $2 }')
    stop
    echo "round $round  $mode: single $s events/s, batch $b events/s"
    single[$mode]+="$s "
    batch[$mode]+="$b "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "| mode | single events/s (median of $ROUNDS) | batch-500 events/s (median of $ROUNDS) |"
echo "|---|---|---|"
for mode in none token; do
  echo "| $mode | $(echo "${single[$mode]}" | median) | $(echo "${batch[$mode]}" | median) |"
done
sn=$(echo "${single[none]}" | median); st=$(echo "${single[token]}" | median)
bn=$(echo "${batch[none]}" | median); bt=$(echo "${batch[token]}" | median)
awk -v sn="$sn" -v st="$st" -v bn="$bn" -v bt="$bt" 'BEGIN {
  printf "token vs none: single %+.1f%%, batch %+.1f%%\n", (st - sn) * 100 / sn, (bt - bn) * 100 / bn }'
