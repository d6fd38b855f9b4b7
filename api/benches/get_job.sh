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
    # One job to read: the orphan sweep runs at boot.
    sleep 1
    id=$(curl -sf -H "X-API-Key: $key" "localhost:$PORT/v1/jobs?limit=1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p' | head -1)
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $key" "localhost:$PORT/v1/jobs/$id")
    echo "== $name: GET /v1/jobs/$id answers $status"
    wrk -t2 -c32 -d"$DURATION" -H "X-API-Key: $key" "http://127.0.0.1:$PORT/v1/jobs/$id"
    kill -TERM "$server"; wait "$server" || true
}

run sqlite "sqlite://$work/bench.db?mode=rwc"
if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    db=veza_bench_$$
    psql "$TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >/dev/null
    run postgres "${TEST_POSTGRES_URL%/*}/$db"
    psql "$TEST_POSTGRES_URL" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
fi
