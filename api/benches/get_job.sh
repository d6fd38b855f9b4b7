#!/usr/bin/env bash
# GET /v1/jobs/{id} requests/s on loopback with wrk, the release server on SQLite, then on
# Postgres when TEST_POSTGRES_URL is set. Usage: api/benches/get_job.sh (from the workspace
# root, after `cargo build --release -p api`). Needs wrk (`apt-get install -y wrk`).
set -euo pipefail
BIN=${BIN:-target/release/veza-jobs}
PORT=${PORT:-18080}
DURATION=${DURATION:-10s}
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

JOBS=${JOBS:-1000}
SEED_COLUMNS="INSERT INTO jobs (kind, args, max_attempts, run_at, created_at) SELECT 'bench.read', '{\"n\": 1}', 1, 9000000000000, 0"

# Writes $JOBS waiting jobs into the database at $1.
seed() {
    case $1 in
    postgres*) psql "$1" -qc "$SEED_COLUMNS FROM generate_series(1, $JOBS)" >/dev/null ;;
    sqlite*) python3 - "${1#sqlite://}" "$JOBS" "$SEED_COLUMNS" <<'PY' ;;
import sqlite3, sys
path, jobs, insert = sys.argv[1].split("?")[0], int(sys.argv[2]), sys.argv[3]
with sqlite3.connect(path) as db:
    db.execute(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs}) {insert} FROM n")
PY
    esac
}

run() {
    local name=$1 url=$2
    export DATABASE_URL=$url HTTP_ADDR=127.0.0.1:$PORT LOG_LEVEL=warn MEDIA_ROOT=$work/media \
        RATE_LIMIT_READS_PER_HOUR=1000000000 RATE_LIMIT_WRITES_PER_HOUR=1000000000
    mkdir -p "$work/media"
    "$BIN" migrate >/dev/null
    key=$("$BIN" api-key create --name bench --scope read --json | sed -n 's/.*"key": "\(vz_[0-9a-f]*\)".*/\1/p')
    "$BIN" serve >"$work/$name.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.2; done
    # Jobs to read, each request a random one of them (concurrent requests for one id could
    # be answered by one read): waiting jobs of a kind no worker runs, written straight into
    # the table.
    seed "$url"
    first=$(curl -sf -H "X-API-Key: $key" "localhost:$PORT/v1/jobs?kind=bench.read&limit=1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p' | head -1)
    lo=$((first - JOBS + 1))
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $key" "localhost:$PORT/v1/jobs/$lo")
    echo "== $name: GET /v1/jobs/{$lo..$first} (GET /v1/jobs/$lo answers $status)"
    cat >"$work/random_id.lua" <<LUA
request = function() return wrk.format(nil, "/v1/jobs/" .. math.random($lo, $first)) end
LUA
    wrk -t2 -c32 -d"$DURATION" -s "$work/random_id.lua" -H "X-API-Key: $key" "http://127.0.0.1:$PORT"
    kill -TERM "$server"; wait "$server" || true
}

run sqlite "sqlite://$work/bench.db?mode=rwc"
if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    db=veza_bench_$$
    psql "$TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >/dev/null
    run postgres "${TEST_POSTGRES_URL%/*}/$db"
    psql "$TEST_POSTGRES_URL" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
fi
