#!/usr/bin/env bash
# HTTP -> PostgreSQL, Kafka-less mode vs Kafka mode, in one run on one machine, rounds
# interleaved (direct kafka direct kafka ...) so a change in the machine's load hits both alike.
#
# - direct: one process, `serve --roles ingest,forward` with forward.target postgres;
# - kafka:  `audit-manager dev-kafka` (12 partitions), an agent (ingest,forward) and a sink
#           process (sink), the split deployment of the design.
# Per round and mode: a fresh database, $EVENTS events in 500-event batches (audit-loadgen,
# concurrency 8, --verify: every 202 must be in audit_events exactly once); prints the load
# generator's end-to-end rate (all stored / time since the first request) and the peak RSS of
# each process.
#
# Also per round, labelled apart: the direct writer's drain rate. The spool is filled first by an
# ingest-only process (nothing written meanwhile), then a forward-only process drains it; the
# rate is the events stored after its first committed batch over the time from that batch to the
# last row committed (polled from its metrics every 0.05 s; start-up and schema set-up apart). The writer then has the machine to itself, as `\copy`
# has, so this is the figure to hold against the COPY ceiling; the end-to-end rate shares the
# cores with HTTP ingest and the load generator. Right after it, the machine's COPY ceiling for
# the same rows: exported, the table truncated, and `\copy` back in, by one psql and by four at
# once (the writer uses four connections).
#
# BEFORE=path/to/older/audit-manager adds the direct rounds of that binary (end to end and
# drain), interleaved with the others: before/after in one run.
#
#   cargo build --release --workspace
#   bench/direct-vs-kafka.sh                 # ROUNDS=2 EVENTS=300000
#
# PostgreSQL on $PGURL (database audit_bench_direct, recreated per run).
set -euo pipefail

ROUNDS=${ROUNDS:-2}
EVENTS=${EVENTS:-300000}
BIN=${BIN:-./target/release/audit-manager}
LOADGEN=${LOADGEN:-./target/release/audit-loadgen}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
BEFORE=${BEFORE:-}
DIR=${DIR:-/tmp/bench-direct}
DB="$PGURL/audit_bench_direct"
AGENT=127.0.0.1:18100
SINK=127.0.0.1:18101

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_all; rm -rf "$DIR"; }
trap cleanup EXIT

fresh() {
  stop_all
  rm -rf "$DIR" && mkdir -p "$DIR"
  psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS audit_bench_direct WITH (FORCE)" \
    -c "CREATE DATABASE audit_bench_direct" >/dev/null 2>&1
}
ready() { # addr
  for _ in $(seq 1 1000); do
    curl -sf "http://$1/v1/auditmanager/ready" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$1 did not become ready" >&2
  exit 1
}
peak() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
load() { # [--verify]: prints the end-to-end events/s
  "$LOADGEN" --url "http://$AGENT" --events "$EVENTS" --batch-size 500 --concurrency 8 \
    "$@" --database-url "$DB" >"$DIR/loadgen.log" 2>&1 || { cat "$DIR/loadgen.log" >&2; exit 1; }
  grep -E '^(throughput|verify|end to end)' "$DIR/loadgen.log" >&2 || true
  awk '/^end to end/ { for (i = 1; i <= NF; i++) if ($i == "=") { print $(i + 1); exit } }' \
    "$DIR/loadgen.log"
}

stored_now() { # addr: rows the direct writer committed (new + already stored)
  { curl -sf "http://$1/v1/auditmanager/metrics" 2>/dev/null || true; } |
    awk '/^audit_forward_(rows_inserted|duplicates)_total/ { n += $NF } END { printf "%d", n }'
}
direct_round() { # bin label: end to end, then the drain of a pre-filled spool
  local bin=$1 label=$2 p rate t0 t1
  fresh
  DATABASE_URL=$DB AUDIT_MANAGER__FORWARD__TARGET=postgres AUDIT_MANAGER__SPOOL__PATH="$DIR/spool" \
    AUDIT_MANAGER__HTTP__LISTEN=$AGENT RUST_LOG=warn "$bin" serve --roles ingest,forward \
    >"$DIR/direct.log" 2>&1 &
  p=$!
  pids+=("$p")
  ready $AGENT
  rate=$(load --verify)
  echo "round $round $label: $rate events/s HTTP -> PostgreSQL; peak RSS $(peak "$p") MiB"
  e2e+=("$label=$rate")

  fresh
  DATABASE_URL=$DB AUDIT_MANAGER__FORWARD__TARGET=postgres AUDIT_MANAGER__SPOOL__PATH="$DIR/spool" \
    AUDIT_MANAGER__HTTP__LISTEN=$AGENT RUST_LOG=warn "$bin" serve --roles ingest \
    >"$DIR/fill.log" 2>&1 &
  pids+=($!)
  ready $AGENT
  load >/dev/null
  stop_all
  t0=$(date +%s.%N)
  DATABASE_URL=$DB AUDIT_MANAGER__FORWARD__TARGET=postgres AUDIT_MANAGER__SPOOL__PATH="$DIR/spool" \
    AUDIT_MANAGER__HTTP__LISTEN=$AGENT RUST_LOG=warn "$bin" serve --roles forward \
    >"$DIR/drain.log" 2>&1 &
  pids+=($!)
  # The clock starts at the first committed batch: process start and schema setup are not
  # the writer's rate (they are printed apart).
  local first=0 tf=0 now
  for _ in $(seq 1 6000); do
    now=$(stored_now $AGENT)
    if [ "$first" -eq 0 ] && [ "$now" -gt 0 ]; then
      first=$now
      tf=$(date +%s.%N)
    fi
    [ "$now" -ge "$EVENTS" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  stop_all
  n=$(psql -tA "$DB" -c "SELECT count(*) FROM audit_events")
  [ "$n" -eq "$EVENTS" ] || { echo "$label drain: $n rows stored, not $EVENTS" >&2; exit 1; }
  rate=$(awk -v n="$((EVENTS - first))" -v a="$tf" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
  echo "round $round $label drain of a filled spool: $rate events/s (first $first rows stored" \
    "$(awk -v a="$t0" -v b="$tf" 'BEGIN { printf "%.2f", b - a }')s after the process started)"
  drain+=("$label=$rate")
}

# The COPY ceiling for the rows just drained: exported, the table truncated, and `\copy` back in.
copy_rate() { # parts
  psql -q "$DB" -c "TRUNCATE audit_events" >/dev/null
  split -n "l/$1" -d "$DIR/rows.copy" "$DIR/part."
  local t0 t1 f
  t0=$(date +%s.%N)
  for f in "$DIR"/part.*; do
    psql -q "$DB" -c "\\copy audit_events ($cols) FROM '$f'" &
  done
  wait
  t1=$(date +%s.%N)
  rm -f "$DIR"/part.*
  awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }'
}
ceiling() {
  cols=$(psql -tA "$DB" -c "SELECT string_agg(quote_ident(column_name), ',' ORDER BY ordinal_position)
    FROM information_schema.columns WHERE table_name = 'audit_events' AND column_name <> 'seal_seq'")
  psql -q "$DB" -c "\\copy (SELECT $cols FROM audit_events) TO '$DIR/rows.copy'"
  rows=$(wc -l <"$DIR/rows.copy")
  local a b
  a=$(copy_rate 1)
  b=$(copy_rate 4)
  echo "round $round COPY ceiling ($rows rows into audit_events): $a rows/s one psql, $b rows/s four at once"
  one+=("$a")
  four+=("$b")
}

declare -a e2e drain kafka one four
for ((round = 1; round <= ROUNDS; round++)); do
  [ -n "$BEFORE" ] && direct_round "$BEFORE" before
  direct_round "$BIN" direct
  ceiling

  fresh
  RUST_LOG=warn "$BIN" dev-kafka --partitions 12 --bootstrap-file "$DIR/kafka.addr" \
    >"$DIR/kafka.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 500); do [ -s "$DIR/kafka.addr" ] && break; sleep 0.02; done
  BOOTSTRAP=$(cat "$DIR/kafka.addr")
  AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS=$BOOTSTRAP AUDIT_MANAGER__SPOOL__PATH="$DIR/spool" \
    AUDIT_MANAGER__HTTP__LISTEN=$AGENT RUST_LOG=warn "$BIN" serve --roles ingest,forward \
    >"$DIR/agent.log" 2>&1 &
  a=$!
  pids+=("$a")
  DATABASE_URL=$DB AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS=$BOOTSTRAP \
    AUDIT_MANAGER__HTTP__LISTEN=$SINK RUST_LOG=warn "$BIN" serve --roles sink \
    >"$DIR/sink.log" 2>&1 &
  s=$!
  pids+=("$s")
  ready $AGENT
  ready $SINK
  rate=$(load --verify)
  echo "round $round kafka:  $rate events/s HTTP -> PostgreSQL; peak RSS agent $(peak "$a") MiB, sink $(peak "$s") MiB"
  kafka+=("$rate")
done
stop_all

echo "COPY ceiling (each round's drained rows into audit_events): one psql ${one[*]}, four at once ${four[*]} rows/s"
echo "end to end: ${e2e[*]}; kafka=${kafka[*]} (events/s HTTP -> PostgreSQL)"
echo "drain of a filled spool: ${drain[*]} (events/s spool -> PostgreSQL)"
