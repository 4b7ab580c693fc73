#!/usr/bin/env bash
# Spool restart after SIGKILL, per commit mode (AUDIT_MANAGER_SPOOL_REPAIR=full|quick), and the
# ingest throughput each mode allows, measured in the same run.
#
# For each mode: a fresh spool; single-event load (audit-loadgen, concurrency 64); then EVENTS
# events in 500-event batches (concurrency 8), which also fills the spool; SIGKILL; restart and
# time from exec until the first POST /events is answered 202 (polled every 10 ms).
#
# Usage (from the repository root, after `cargo build --release --bins`):
#   bench/spool-restart.sh                 # EVENTS=1000000 MODES="full quick"
#   EVENTS=200000 MODES=quick bench/spool-restart.sh
#   DROP_CACHES=1 bench/spool-restart.sh   # (root) empty the page cache after the kill, as a
#                                          # power cut would: the restart reads from the disk
# Needs curl. Uses 127.0.0.1:$PORT and $DIR (default /tmp/spool-restart-bench, removed first).
set -euo pipefail

EVENTS=${EVENTS:-1000000}
SINGLE_EVENTS=${SINGLE_EVENTS:-100000}
MODES=${MODES:-"full quick"}
PORT=${PORT:-18000}
DIR=${DIR:-/tmp/spool-restart-bench}
BIN=${BIN:-./target/release}
URL="http://127.0.0.1:$PORT"
EVENT='{"specversion":"1.0","id":"restart-probe-ID","source":"urn:bench","type":"org.openg2p.bench","subject":"beneficiary/1","time":"2026-11-01T10:00:00.000Z","data":{"actor":{"type":"user","id":"u1"},"action":"bench.probe","outcome":"success","resource":{"type":"beneficiary","id":"1"}}}'

pid=""
cleanup() { [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null || true; }
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }

start() { # mode
  AUDIT_MANAGER_SPOOL_REPAIR="$1" AUDIT_MANAGER__SPOOL__PATH="$DIR/$1" \
    AUDIT_MANAGER__HTTP__LISTEN="127.0.0.1:$PORT" AUDIT_MANAGER__ROLES=ingest RUST_LOG=warn \
    "$BIN/audit-manager" serve &
  pid=$!
}

# Polls POST /events until it is answered 202; prints the milliseconds since $1.
until_202() { # start_ms probe_id
  local code
  while true; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
      --data "${EVENT/ID/$2}" "$URL/v1/auditmanager/events" || true)
    if [[ "$code" == 202 ]]; then
      echo $(($(now_ms) - $1))
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "audit-manager exited before answering 202" >&2
      exit 1
    fi
    sleep 0.01
  done
}

throughput() { # loadgen args...
  "$BIN/audit-loadgen" --url "$URL" "$@" | awk '/^throughput:/ {print $2}'
}

declare -A single batch restart size
for mode in $MODES; do
  rm -rf "${DIR:?}/$mode"
  mkdir -p "$DIR"
  start "$mode"
  until_202 "$(now_ms)" "warmup-$mode" >/dev/null
  single[$mode]=$(throughput --events "$SINGLE_EVENTS" --concurrency 64)
  batch[$mode]=$(throughput --events "$EVENTS" --batch-size 500 --concurrency 8)
  size[$mode]=$(du -m "$DIR/$mode/spool.redb" | cut -f1)
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  if [[ "${DROP_CACHES:-0}" == 1 ]]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
  fi
  t0=$(now_ms)
  start "$mode"
  restart[$mode]=$(until_202 "$t0" "after-kill-$mode")
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  echo "mode=$mode drop_caches=${DROP_CACHES:-0} spooled=$((EVENTS + SINGLE_EVENTS + 1)) file_mib=${size[$mode]}" \
    "single_c64_events_per_s=${single[$mode]} batch500_c8_events_per_s=${batch[$mode]}" \
    "restart_to_202_ms=${restart[$mode]}"
done
rm -rf "$DIR"
