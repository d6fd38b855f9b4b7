#!/usr/bin/env bash
# veza-jobs beside graphile-worker 0.18, in one run on this machine (absolute figures drift
# from run to run; the ratio is what to read). Runs, in turn:
#   1. cargo bench -p engine --bench throughput   (SQLite and Postgres: bulk enqueue,
#      one-by-one enqueue with 8 producers, backlog drain at the defaults (claim-ahead
#      1000) and at the old default claim-ahead 100, latency)
#   2. graphile-worker 0.18 in the same scenario (bench/graphile/bench.mjs) on Postgres,
#      installed with npm under $TOOLS (outside the clone) when missing.
# Needs TEST_POSTGRES_URL (a role that may create databases), node and npm.
# Usage: bench/compare.sh   (BENCH_JOBS changes the backlog size, default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TEST_POSTGRES_URL:?set TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres}"
TOOLS=${TOOLS:-/var/tmp/veza-jobs-tools}
graphile=$TOOLS/graphile
if [ ! -d "$graphile/node_modules/graphile-worker" ]; then
    mkdir -p "$graphile"
    cp bench/graphile/package.json "$graphile/"
    (cd "$graphile" && npm install --no-audit --no-fund --loglevel=error)
fi
cp bench/graphile/bench.mjs "$graphile/"

echo "### veza-jobs (cargo bench -p engine --bench throughput)"
cargo bench -q -p engine --bench throughput 2>/dev/null

db=graphile_bench_$$
psql "$TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >/dev/null
trap 'psql "$TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
echo
echo "### graphile-worker 0.18, Postgres, same scenario (jobs/s; latency p50 p99 in ms)"
GRAPHILE_DB_URL="${TEST_POSTGRES_URL%/*}/$db" node --no-warnings "$graphile/bench.mjs"
