#!/usr/bin/env bash
# The sustained HTTP -> PostgreSQL run of docs/benchmark-history.md with sealing on: an agent
# (ingest + forward), `audit-manager dev-kafka` (24 partitions) and a sink+maintain process that seals
# every $INTERVAL, under `audit-loadgen --rate $RATE` for $SECS seconds with --verify. Prints the
# load generator's summary, the largest `audit_seal_lag_seconds` seen (read every second), the
# peak RSS of both processes, the seals, and `audit-manager verify` over every row.
#
#   cargo build --release --bin audit-manager --bin audit-loadgen
#   bench/sustained-sealing.sh          # INTERVAL=1s RATE=25000 SECS=60
#
# PostgreSQL on $PGURL (database audit_bench_sustained, recreated).
set -euo pipefail

INTERVAL=${INTERVAL:-1s}
RATE=${RATE:-25000}
SECS=${SECS:-60}
BIN=${BIN:-./target/release/audit-manager}
LOADGEN=${LOADGEN:-./target/release/audit-loadgen}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
DIR=${DIR:-/tmp/bench-sustained}
DB="$PGURL/audit_bench_sustained"
AGENT=127.0.0.1:18000
SINK=127.0.0.1:18001

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
rm -rf "$DIR" && mkdir -p "$DIR"
psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS audit_bench_sustained" \
  -c "CREATE DATABASE audit_bench_sustained" >/dev/null 2>&1
"$BIN" keygen --out "$DIR/seal.key" >/dev/null

RUST_LOG=warn "$BIN" dev-kafka --partitions 24 --bootstrap-file "$DIR/kafka.addr" >"$DIR/kafka.log" 2>&1 &
kafka=$!
pids+=("$kafka")
for _ in $(seq 1 500); do [ -s "$DIR/kafka.addr" ] && break; sleep 0.02; done
BOOTSTRAP=$(cat "$DIR/kafka.addr")

AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS=$BOOTSTRAP AUDIT_MANAGER__SPOOL__PATH="$DIR/spool" \
  AUDIT_MANAGER__HTTP__LISTEN=$AGENT RUST_LOG=warn "$BIN" serve --roles ingest,forward \
  >"$DIR/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
DATABASE_URL=$DB AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS=$BOOTSTRAP \
  AUDIT_MANAGER__INTEGRITY__SIGNING_KEY_FILE="$DIR/seal.key" \
  AUDIT_MANAGER__INTEGRITY__SEAL_INTERVAL=$INTERVAL AUDIT_MANAGER__HTTP__LISTEN=$SINK \
  RUST_LOG=warn "$BIN" serve --roles sink,maintain >"$DIR/sink.log" 2>&1 &
sink=$!
pids+=("$sink")
for addr in $AGENT $SINK; do
  for _ in $(seq 1 1000); do
    curl -sf "http://$addr/v1/auditmanager/ready" >/dev/null 2>&1 && break
    sleep 0.05
  done
done
for p in $agent $sink; do echo 5 >"/proc/$p/clear_refs"; done

"$LOADGEN" --url "http://$AGENT" --events 1000000000 --duration "$SECS" --rate "$RATE" \
  --batch-size 50 --concurrency 32 --verify --database-url "$DB" >"$DIR/loadgen.log" 2>&1 &
loadgen=$!
largest=0
while kill -0 "$loadgen" 2>/dev/null; do
  lag=$(curl -s "http://$SINK/v1/auditmanager/metrics" | awk '/^audit_seal_lag_seconds / { print $2 }')
  largest=$(awk -v a="${lag:-0}" -v b="$largest" 'BEGIN { print (a > b) ? a : b }')
  sleep 1
done
wait "$loadgen" || { cat "$DIR/loadgen.log"; exit 1; }
grep -v '^audit-loadgen: sending' "$DIR/loadgen.log"
echo "largest seal lag: ${largest}s (seal interval $INTERVAL)"
peak() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
echo "peak RSS: agent $(peak "$agent") MiB, sink+maintain $(peak "$sink") MiB"

# Every stored row sealed, then verify everything with the public key only.
for _ in $(seq 1 600); do
  unsealed=$(psql -tA "$DB" -c "SELECT count(*) FROM audit_events
    WHERE seal_seq > COALESCE((SELECT max(hi_seq) FROM audit_seals), 0)")
  [ "$unsealed" = 0 ] && break
  sleep 0.1
done
psql -tA -F' ' "$DB" -c "SELECT 'seals: ' || count(*), 'rows sealed: ' || sum(leaves),
  'unpublished: ' || count(*) FILTER (WHERE published_at IS NULL) FROM audit_seals"
printf 'audit_manager:\n  database:\n    url: "%s"\n  integrity:\n    public_key_files: ["%s"]\n' \
  "$DB" "$DIR/seal.key.pub" >"$DIR/verify.yaml"
"$BIN" verify --config "$DIR/verify.yaml"
