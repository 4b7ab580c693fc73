#!/usr/bin/env bash
# The lean-path and memory comparison in one go, on one machine: the bare-HTTP ceiling, single
# and batch ingest for an ingest-only process and for every role in one process, the two-process
# split (ingest+forward agent, sink+maintain), the peak RSS of every process under every load,
# and the ratios the targets are stated in:
#
#   durable single events / bare HTTP (same ingest-only server)   target >= 0.6
#   all roles single events / ingest-only single events           target >= 0.6
#   peak RSS of any process under any load                        target < 150 MiB
#
#   cargo build --release --bin audit-manager --bin audit-loadgen
#   bench/ratios.sh                     # SECONDS_EACH=15 per load
#   RTT=50ms bench/ratios.sh            # the broker answers every request 50 ms late
#
# The broker is `audit-manager dev-kafka` in its own process (RTT slows it down). It keeps only
# the newest 5 MB of each partition (librdkafka's mock cluster), so a sink that falls further
# behind under batch loads skips what was dropped: its log says "offset reset"; PostgreSQL on
# $PGURL (database audit_bench_ratios, recreated). Needs wrk (apt-get install wrk). Peak RSS
# is VmHWM from /proc/PID/status, reset before every load (clear_refs 5). CPU per event is the
# process's user + system time during the load (/proc/PID/stat) over the events accepted in it:
# with the split shape, the agent's minus the ingest-only process's is what forwarding costs,
# and the sink process's is what storing costs. The ingest-only process has nobody draining its
# spool, so its spool bound is raised (a few GB of disk).
set -euo pipefail

SECONDS_EACH=${SECONDS_EACH:-15}
PORT=${PORT:-18100}
SINK_PORT=${SINK_PORT:-18101}
DIR=${DIR:-/tmp/bench-ratios}
BIN=${BIN:-./target/release/audit-manager}
LOADGEN=${LOADGEN:-./target/release/audit-loadgen}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
DB=audit_bench_ratios
RTT=${RTT:-}
URL="http://127.0.0.1:$PORT"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
rm -rf "$DIR" && mkdir -p "$DIR"

psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null

# start_broker: a fresh, empty broker (its pid in $broker, its address in $BOOTSTRAP). Each
# shape with a sink starts on an empty topic (the ingest-only shape forwards nothing), so no
# sink starts behind on what an earlier shape produced: its peak memory would depend on that
# backlog.
start_broker() {
  local args=(dev-kafka --bootstrap-file "$DIR/bootstrap")
  [ -n "$RTT" ] && args+=(--rtt "$RTT")
  rm -f "$DIR/bootstrap"
  RUST_LOG=warn "$BIN" "${args[@]}" >>"$DIR/dev-kafka.log" 2>&1 &
  broker=$!
  pids+=("$broker")
  for _ in $(seq 1 500); do [ -s "$DIR/bootstrap" ] && break; sleep 0.02; done
  BOOTSTRAP=$(cat "$DIR/bootstrap")
}

# start NAME ROLES PORT: a fresh spool per process; its pid in $started. Each process has a
# consumer group of its own (a sink joining the group a stopped one left would wait out that
# member's session timeout).
start() {
  local name=$1 roles=$2 port=$3
  env AUDIT_MANAGER__SPOOL__PATH="$DIR/spool-$name" AUDIT_MANAGER__HTTP__LISTEN="127.0.0.1:$port" \
    AUDIT_MANAGER__ROLES="$roles" AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP" \
    AUDIT_MANAGER__SPOOL__MAX_BYTES=64GiB AUDIT_MANAGER__KAFKA__CONSUMER_GROUP="bench-$name" \
    DATABASE_URL="$PGURL/$DB" RUST_LOG=warn "$BIN" serve >"$DIR/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 1 1000); do
    curl -sf "http://127.0.0.1:$port/v1/auditmanager/ready" >/dev/null 2>&1 && return 0
    sleep 0.02
  done
  echo "$name did not become ready; its log:" >&2
  cat "$DIR/$name.log" >&2
  exit 1
}

stop() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }

reset_peak() { for p in "$@"; do echo 5 >"/proc/$p/clear_refs"; done; }
TICKS=$(getconf CLK_TCK)
# cpu_ticks PID: user + system time so far, in clock ticks (the fields after the command name).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
peak_mib() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# load KIND: runs one load for SECONDS_EACH against $URL, prints events/s.
load() {
  case $1 in
  bare)
    wrk -t1 -c128 -d"${SECONDS_EACH}s" "$URL/v1/auditmanager/version" |
      awk '/^Requests\/sec/ { printf "%.0f", $2 }' ;;
  single)
    wrk -t1 -c128 -d"${SECONDS_EACH}s" -s bench/single-event.lua "$URL" |
      awk '/^Requests\/sec/ { printf "%.0f", $2 }' ;;
  batch*)
    "$LOADGEN" --url "$URL" --events 1000000000 --duration "$SECONDS_EACH" --concurrency 8 \
      --batch-size "${1#batch}" --retry-503 | awk '/^throughput:/ { printf "%.0f", $2 }' ;;
  esac
}

declare -A rate rss cpu
# measure SHAPE LOADS PIDS...: each load with fresh peak counters on every pid.
measure() {
  local shape=$1 loads=$2
  shift 2
  for l in $loads; do
    reset_peak "$@"
    local before=() p i
    for p in "$@"; do before+=("$(cpu_ticks "$p")"); done
    rate[$shape/$l]=$(load "$l")
    local peaks="" cpus=""
    i=0
    for p in "$@"; do
      peaks+="$(peak_mib "$p") "
      cpus+="$(awk -v t="$(( $(cpu_ticks "$p") - before[i] ))" -v hz="$TICKS" \
        -v r="${rate[$shape/$l]}" -v s="$SECONDS_EACH" \
        'BEGIN { if (r > 0) printf "%.1f", t / hz * 1e6 / (r * s); else print "n/a" }') "
      i=$((i + 1))
    done
    rss[$shape/$l]=${peaks% }
    cpu[$shape/$l]=${cpus% }
    echo "$shape $l: ${rate[$shape/$l]} events/s, peak RSS ${rss[$shape/$l]} MiB," \
      "CPU ${cpu[$shape/$l]} µs/event" >&2
  done
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo);" \
  "load average $(cut -d' ' -f1-3 /proc/loadavg); broker RTT ${RTT:-none}; ${SECONDS_EACH}s per load" >&2

start_broker
start ingest ingest "$PORT" && p=$started
measure ingest-only "bare single batch100 batch500" "$p"
stop "$p"

start all ingest,forward,sink,maintain "$PORT" && p=$started
measure all-roles "single batch100 batch500" "$p"
stop "$p"
stop "$broker"

start_broker
start agent ingest,forward "$PORT" && a=$started
start sink sink,maintain "$SINK_PORT" && s=$started
measure "agent+sink" "single batch100 batch500" "$a" "$s"
stop "$a"
stop "$s"
stop "$broker"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
max_rss=0
for k in "${!rss[@]}"; do
  for v in ${rss[$k]}; do ((v > max_rss)) && max_rss=$v; done
done

echo
echo "| shape | load | events/s | peak RSS (MiB) | CPU per event (µs) |"
echo "|---|---|---|---|---|"
for shape in ingest-only all-roles agent+sink; do
  for l in bare single batch100 batch500; do
    [ -n "${rate[$shape/$l]:-}" ] || continue
    echo "| $shape | $l | ${rate[$shape/$l]} | ${rss[$shape/$l]// / + } | ${cpu[$shape/$l]// / + } |"
  done
done
echo
echo "single / bare HTTP (ingest-only):        $(ratio "${rate[ingest-only/single]}" "${rate[ingest-only/bare]}")  (target >= 0.6)"
echo "all-roles single / ingest-only single:   $(ratio "${rate[all-roles/single]}" "${rate[ingest-only/single]}")  (target >= 0.6)"
echo "largest peak RSS of any process:         $max_rss MiB  (target < 150)"
