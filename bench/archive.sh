#!/usr/bin/env bash
# Archiving one month (docs/archives.md): `archive run` rows/s and peak RSS, the Parquet (and
# seals) bytes against the month's PostgreSQL heap+index bytes, and `archive verify` rows/s
# offline with its peak RSS, and the CPU (user + system) each spent per row: on a machine
# others load, the CPU per row says more than the rate.
#
#   cargo build --release --bin audit-manager
#   bench/archive.sh                # ROWS=1000000
#   COMPARE="old-binary new-binary" ROUNDS=3 bench/archive.sh
#                                   # interleaved A/B of `archive run` on the same month
#
# The month (2026-03) is filled with $ROWS rows by one INSERT … SELECT generate_series (each row
# like the sink benchmark's event: a `changes` list and a few scalars in `details`), sealed by a
# maintain role (signing key, no writer keys), then archived to a `file://` directory.
# PostgreSQL on $PGURL (database audit_bench_archive, recreated); scratch files in $DIR.
set -euo pipefail

ROWS=${ROWS:-1000000}
BIN=${BIN:-./target/release/audit-manager}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
DIR=${DIR:-/tmp/bench-archive}
DB="$PGURL/audit_bench_archive"
LISTEN=127.0.0.1:18031

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
  psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS audit_bench_archive WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$DIR" && mkdir -p "$DIR"
psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS audit_bench_archive WITH (FORCE)" \
  -c "CREATE DATABASE audit_bench_archive" >/dev/null 2>&1
"$BIN" keygen --out "$DIR/seal.key" >/dev/null

# A maintain role: creates the schema, then seals what is inserted.
DATABASE_URL=$DB AUDIT_MANAGER__INTEGRITY__SIGNING_KEY_FILE="$DIR/seal.key" \
  AUDIT_MANAGER__INTEGRITY__SEAL_INTERVAL=1s AUDIT_MANAGER__INTEGRITY__SEAL_TOPIC="" \
  AUDIT_MANAGER__HTTP__LISTEN=$LISTEN RUST_LOG=error "$BIN" serve --roles maintain \
  >"$DIR/maintain.log" 2>&1 &
maintain=$!
pids+=("$maintain")
for _ in $(seq 1 600); do
  [ "$(psql -qtA "$DB" -c "SELECT to_regclass('audit_events') IS NOT NULL" 2>/dev/null)" = "t" ] && break
  sleep 0.1
done

echo "inserting $ROWS rows into 2026-03"
start=$(date +%s.%N)
psql -q "$DB" -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE IF NOT EXISTS audit_events_2026_03 PARTITION OF audit_events
  FOR VALUES FROM ('2026-03-01T00:00:00Z') TO ('2026-04-01T00:00:00Z');
BEGIN;
-- The seal write lock, shared, as every storing transaction holds it (store::locks::SealWrite):
-- the sealer then never seals past rows this transaction has not committed yet.
SELECT pg_advisory_xact_lock_shared(x'6175646974000004'::bigint);
INSERT INTO audit_events (id, occurred_at, source, type, subject, actor_type, actor_id,
    resource_type, resource_id, action, outcome, reason, trace_id, details, auth_type, auth_id)
SELECT md5(i::text), '2026-03-01T00:00:00Z'::timestamptz + ((i - 1) * (2678400.0 / $ROWS)) * interval '1 second',
       '/registry/' || (i % 7), 'org.openg2p.registry.beneficiary.update', 'beneficiary-' || (i % 50000),
       'user', 'u-' || (i % 2000), 'beneficiary', 'b-' || (i % 50000), 'update',
       CASE WHEN i % 50 = 0 THEN 'failure' ELSE 'success' END,
       CASE WHEN i % 50 = 0 THEN 'validation failed' END,
       substr(md5((i * 7)::text), 1, 32),
       jsonb_build_object('changes', jsonb_build_array(
           jsonb_build_object('field', 'phone', 'old', '+1555' || (i % 10000), 'new', '+1555' || ((i + 1) % 10000)),
           jsonb_build_object('field', 'address', 'old', 'Street ' || (i % 300), 'new', 'Avenue ' || (i % 300))),
         'amount', (i % 1000) * 1.25, 'program', 'cash-transfer', 'cycle', i % 12),
       'api_key', 'registry'
  FROM generate_series(1, $ROWS) AS i;
COMMIT;
ANALYZE audit_events_2026_03;
SQL
echo "inserted in $(echo "$(date +%s.%N) - $start" | bc) s; waiting for the seals"
for _ in $(seq 1 3600); do
  left=$(psql -qtA "$DB" -c "SELECT count(*) FROM audit_events WHERE seal_seq > COALESCE((SELECT max(hi_seq) FROM audit_seals), 0)")
  [ "$left" = "0" ] && break
  sleep 1
done
kill -TERM "$maintain"; wait "$maintain" 2>/dev/null || true
pids=()

heap_index=$(psql -qtA "$DB" -c "SELECT pg_total_relation_size('audit_events_2026_03')")
cat >"$DIR/config.yaml" <<YAML
audit_manager:
  database:
    url: $DB
  integrity:
    signing_key_file: $DIR/seal.key
    public_key_files: [$DIR/seal.key.pub]
  archive:
    url: file://$DIR/archive
    after_months: 0
YAML

# With COMPARE, each binary archives the same month ROUNDS times, alternating (the archive
# directory and audit_archives emptied before each run); then the measured run below.
if [ -n "${COMPARE:-}" ]; then
  for round in $(seq 1 "${ROUNDS:-3}"); do
    for bin in $COMPARE; do
      rm -rf "$DIR/archive"
      psql -q "$DB" -c "TRUNCATE audit_archives" >/dev/null
      /usr/bin/time -f "%e %M %U %S" -o "$DIR/ab.time" "$bin" -c "$DIR/config.yaml" archive run \
        --month 2026-03 >/dev/null
      read -r s kib user sys <"$DIR/ab.time"
      echo "round $round $bin: ${s} s, $(echo "$ROWS / $s" | bc) rows/s, CPU $(echo "scale=1; ($user + $sys) * 1000000 / $ROWS" | bc) µs/row, peak RSS $((kib / 1024)) MiB, load $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
  rm -rf "$DIR/archive"
  psql -q "$DB" -c "TRUNCATE audit_archives" >/dev/null
fi

echo "archive run --month 2026-03"
/usr/bin/time -f "%e %M %U %S" -o "$DIR/run.time" "$BIN" -c "$DIR/config.yaml" archive run --month 2026-03
read -r run_s run_kib run_user run_sys <"$DIR/run.time"
parquet=$(find "$DIR/archive" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}')
seals=$(find "$DIR/archive" -name '*.jsonl' -printf '%s\n' | awk '{s+=$1} END {print s}')
files=$(find "$DIR/archive" -name '*.parquet' | wc -l)

echo "archive verify (offline)"
/usr/bin/time -f "%e %M %U %S" -o "$DIR/verify.time" "$BIN" archive verify "$DIR/archive" \
  --public-key "$DIR/seal.key.pub"
read -r verify_s verify_kib verify_user verify_sys <"$DIR/verify.time"

echo
echo "rows:                       $ROWS"
cpu() { echo "scale=1; ($1 + $2) * 1000000 / $ROWS" | bc; }
echo "archive run:                ${run_s} s, $(echo "$ROWS / $run_s" | bc) rows/s, CPU $(cpu "$run_user" "$run_sys") µs/row, peak RSS $((run_kib / 1024)) MiB"
echo "archive verify:             ${verify_s} s, $(echo "$ROWS / $verify_s" | bc) rows/s, CPU $(cpu "$verify_user" "$verify_sys") µs/row, peak RSS $((verify_kib / 1024)) MiB"
echo "PostgreSQL heap+index:      $heap_index bytes ($((heap_index / 1048576)) MiB)"
echo "Parquet ($files file(s)):      $parquet bytes ($((parquet / 1048576)) MiB), $(echo "scale=3; $parquet / $heap_index" | bc) of heap+index"
echo "seals files:                $seals bytes ($((seals / 1048576)) MiB)"
