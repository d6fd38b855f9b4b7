#!/usr/bin/env bash
# What 10,000 waiting workflows cost an idle `veza-jobs serve` on Postgres: transactions
# and rows read per second by its database over 20 s, without them and then with them
# (jobs `pending` with their run_at a day away and `scheduled = 1`, as `ctx.sleep` /
# `ctx.wait_for_signal` leave them, inserted straight into the database). Issue 15's target: no worker slots
# held and no added polling load. Usage: bench/idle_waiting.sh (from the workspace root,
# after `cargo build --release -p api`; TEST_POSTGRES_URL names a role that may create
# databases). WAITING changes how many, MEASURE_SECONDS the measure (20).
set -euo pipefail
: "${TEST_POSTGRES_URL:?set TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres}"
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/veza-jobs}
WAITING=${WAITING:-10000}
SECONDS_=${MEASURE_SECONDS:-20}
db=veza_idle_$$
url="${TEST_POSTGRES_URL%/*}/$db"
work=$(mktemp -d)
psql "$TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >/dev/null
trap 'kill "${server:-}" 2>/dev/null || true; wait "${server:-}" 2>/dev/null || true; psql "$TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; rm -rf "$work"' EXIT
export DATABASE_URL=$url HTTP_ADDR=127.0.0.1:18082 LOG_LEVEL=warn MEDIA_ROOT=$work/media \
    EXPORT_DIR=$work/exports MAIL_OUTBOX_DIR=$work/outbox
mkdir -p "$work/media"
"$BIN" migrate >/dev/null

stats() {
    psql "$url" -Atc "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = current_database()"
}

measure() {
    local label=$1
    "$BIN" serve >"$work/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do curl -sf localhost:18082/health >/dev/null && break; sleep 0.2; done
    sleep 5 # boot work (schedules, the orphan sweep at boot) settles
    psql "$url" -qc "SELECT pg_stat_clear_snapshot()" >/dev/null
    local before after
    before=$(stats)
    sleep "$SECONDS_"
    after=$(stats)
    kill -TERM "$server"; wait "$server" || true
    server=
    python3 - "$label" "$before" "$after" "$SECONDS_" <<'PY'
import sys
label, before, after, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
(t0, r0), (t1, r1) = (map(int, before.split("|")), map(int, after.split("|")))
print(f"{label:<40} {(t1 - t0) / secs:8.1f} transactions/s {(r1 - r0) / secs:10.1f} rows read/s")
PY
}

measure "idle, no waiting workflows"
psql "$url" -qc "INSERT INTO jobs (kind, args, status, priority, attempt, max_attempts, \
    backoff_base_ms, backoff_cap_ms, run_at, created_at, scheduled) \
    SELECT 'orphan_sweep', '{}', 'pending', 0, 1, 4, 1000, 60000, \
           (extract(epoch FROM now()) * 1000)::bigint + 86400000, \
           (extract(epoch FROM now()) * 1000)::bigint, 1 \
    FROM generate_series(1, $WAITING); ANALYZE jobs"
measure "idle, $WAITING workflows waiting"
echo "(the difference is the cost of the waiting; the stats include this script's own reads)"
