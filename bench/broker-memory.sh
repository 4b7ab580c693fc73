#!/usr/bin/env bash
# Peak memory of every role in one process against a real Kafka-compatible broker (tansu) and
# against the development broker, under the loads of docs/memory.md:
#
#   single     single events, wrk -c64, SECONDS_EACH
#   batch500   500-event batches (audit-loadgen, c16) for SECONDS_EACH, then until the sink has
#              stored every accepted event (--verify): peak over both
#   e2e        200 000 events in 500-event batches (c8), HTTP -> PostgreSQL, until all stored
#
#   cargo build --release --bin audit-manager --bin audit-loadgen
#   cargo install tansu --locked --features dynostore   # once (~40 min; memory:// needs dynostore)
#   bench/broker-memory.sh                # both brokers; BROKERS=tansu for one
#
# Each broker gets a fresh process, a fresh database (audit_bench_broker) and, for tansu, a fresh
# in-memory broker with the two topics created with 12 partitions. Peak RSS is VmHWM from
# /proc/PID/status, reset before each load (clear_refs 5). Every second a sampler appends the
# resident set and the process's queue gauges (/metrics) to $DIR/samples-BROKER.tsv, which is
# kept: it shows where memory rises during a load (the breakdown in BENCHMARKS.md). Needs wrk.
set -euo pipefail

SECONDS_EACH=${SECONDS_EACH:-15}
PORT=${PORT:-18200}
BROKER_PORT=${BROKER_PORT:-19092}
DIR=${DIR:-/tmp/bench-broker-memory}
BIN=${BIN:-./target/release/audit-manager}
LOADGEN=${LOADGEN:-./target/release/audit-loadgen}
TANSU=${TANSU:-tansu}
BROKERS=${BROKERS:-dev tansu}
LOADS=${LOADS:-single batch500 e2e}
# How long the load generator waits for every accepted event to be stored. The dev broker keeps
# only 5 MB per partition: when the sink falls that far behind, it drops records the sink has
# not read, and they are never stored (the run then says so instead of a rate).
VERIFY_TIMEOUT=${VERIFY_TIMEOUT:-900}
CONFIG=${CONFIG:-}   # an extra configuration file for the service (e.g. to try kafka.consumer bounds)
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
DB=audit_bench_broker
URL="http://127.0.0.1:$PORT"
TOPICS="openg2p.audit.events openg2p.audit.dlq openg2p.audit.seals"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
mkdir -p "$DIR"

# start_broker KIND: a fresh, empty broker; its pid in $broker, its address in $BOOTSTRAP.
start_broker() {
  case $1 in
  dev)
    rm -f "$DIR/bootstrap"
    RUST_LOG=warn "$BIN" dev-kafka --bootstrap-file "$DIR/bootstrap" >>"$DIR/dev-kafka.log" 2>&1 &
    broker=$!
    pids+=("$broker")
    for _ in $(seq 1 500); do [ -s "$DIR/bootstrap" ] && break; sleep 0.02; done
    BOOTSTRAP=$(cat "$DIR/bootstrap")
    ;;
  tansu)
    BOOTSTRAP="127.0.0.1:$BROKER_PORT"
    RUST_LOG=warn "$TANSU" broker --listener-url "tcp://$BOOTSTRAP" \
      --advertised-listener-url "tcp://$BOOTSTRAP" --storage-engine memory://tansu/ \
      >>"$DIR/tansu.log" 2>&1 &
    broker=$!
    pids+=("$broker")
    for _ in $(seq 1 500); do
      (echo >"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && break
      sleep 0.02
    done
    for t in $TOPICS; do
      "$TANSU" topic create "$t" --broker "tcp://$BOOTSTRAP" --partitions 12 >>"$DIR/tansu.log" 2>&1
    done
    ;;
  esac
}

start_service() {
  rm -rf "$DIR/spool"
  psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
  env AUDIT_MANAGER__SPOOL__PATH="$DIR/spool" AUDIT_MANAGER__HTTP__LISTEN="127.0.0.1:$PORT" \
    AUDIT_MANAGER__ROLES=ingest,forward,sink,maintain \
    AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP" \
    AUDIT_MANAGER__KAFKA__CONSUMER_GROUP="bench-$RANDOM" \
    ${CONFIG:+CONFIG_PATH="$CONFIG"} DATABASE_URL="$PGURL/$DB" RUST_LOG=warn "$BIN" serve \
    >"$DIR/service.log" 2>&1 &
  service=$!
  pids+=("$service")
  for _ in $(seq 1 1500); do
    curl -sf "$URL/v1/auditmanager/ready" >/dev/null 2>&1 && return 0
    sleep 0.02
  done
  echo "the service did not become ready; its log:" >&2
  cat "$DIR/service.log" >&2
  exit 1
}

# sampler FILE: every second, the resident set (MiB) and the queue gauges, until killed.
GAUGES='audit_forward_in_flight_bytes|audit_sink_batch_bytes|audit_sink_carried_bytes|audit_sink_consumer_lag|audit_spool_pending_bytes|audit_kafka_[a-z_]*bytes'
sampler() {
  local file=$1 t=0
  while kill -0 "$service" 2>/dev/null; do
    local rss g
    rss=$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$service/status" 2>/dev/null || true)
    g=$(curl -s --max-time 1 "$URL/v1/auditmanager/metrics" 2>/dev/null |
      grep -E "^($GAUGES)[ {]" | sed 's/{.*}//' |
      awk '{ s[$1] += $NF } END { for (k in s) printf "%s=%.0f ", k, s[k] }' || true)
    printf '%s\t%s\t%s\n' "$t" "$rss" "$g" >>"$file"
    sleep 1
    t=$((t + 1))
  done
}

reset_peak() { echo 5 >"/proc/$service/clear_refs"; }
peak_mib() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$service/status"; }

declare -A rate peak
run_loads() {
  local b=$1 l
  for l in $LOADS; do
    reset_peak
    case $l in
    single)
      rate[$b/$l]=$(wrk -t1 -c64 -d"${SECONDS_EACH}s" -s bench/single-event.lua "$URL" |
        awk '/^Requests\/sec/ { printf "%.0f", $2 }') ;;
    batch500)
      local out stored=1
      out=$("$LOADGEN" --url "$URL" --events 1000000000 --duration "$SECONDS_EACH" \
        --concurrency 16 --batch-size 500 --retry-503 --verify --verify-timeout "$VERIFY_TIMEOUT" \
        --database-url "$PGURL/$DB") || stored=""
      rate[$b/$l]=$(awk '/^throughput:/ { printf "%.0f", $2 }' <<<"$out")
      [ -n "$stored" ] || rate[$b/$l]+=" (not all stored in ${VERIFY_TIMEOUT}s)" ;;
    e2e)
      # events/s from the first request until the last event is stored
      local t0 t1
      t0=$(date +%s.%N)
      if "$LOADGEN" --url "$URL" --events 200000 --concurrency 8 --batch-size 500 \
        --retry-503 --verify --verify-timeout "$VERIFY_TIMEOUT" --database-url "$PGURL/$DB" >/dev/null; then
        t1=$(date +%s.%N)
        rate[$b/$l]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 200000 / (b - a) }')
      else
        rate[$b/$l]="not all stored in ${VERIFY_TIMEOUT}s"
      fi ;;
    esac
    peak[$b/$l]=$(peak_mib)
    echo "$b $l: ${rate[$b/$l]} events/s accepted, peak ${peak[$b/$l]} MiB" >&2
    echo "# end of $l" >>"$DIR/samples-$b.tsv"
  done
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo);" \
  "load average $(cut -d' ' -f1-3 /proc/loadavg); ${SECONDS_EACH}s per timed load" >&2

for b in $BROKERS; do
  start_broker "$b"
  start_service
  : >"$DIR/samples-$b.tsv"
  sampler "$DIR/samples-$b.tsv" &
  pids+=("$!")
  run_loads "$b"
  kill -TERM "$service"
  wait "$service" 2>/dev/null || true
  kill -9 "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
done

echo
echo "| broker | load | events/s (e2e: until stored) | peak RSS (MiB) |"
echo "|---|---|---|---|"
for b in $BROKERS; do
  for l in $LOADS; do
    echo "| $b | $l | ${rate[$b/$l]} | ${peak[$b/$l]} |"
  done
done
echo
echo "samples (seconds, RSS MiB, gauges) in $DIR/samples-*.tsv"
