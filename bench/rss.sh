#!/usr/bin/env bash
# Memory of `veza-jobs serve` on SQLite: resident set size idle, then the peak while it
# drains 50,000 jobs (orphan_sweep, a quick real kind) inserted straight into its database.
# Usage: bench/rss.sh (from the workspace root, after `cargo build --release -p api`).
# JOBS changes the backlog size.
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/veza-jobs}
JOBS=${JOBS:-50000}
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
export DATABASE_URL="sqlite://$work/rss.db?mode=rwc" HTTP_ADDR=127.0.0.1:18081 LOG_LEVEL=warn \
    MEDIA_ROOT=$work/media EXPORT_DIR=$work/exports MAIL_OUTBOX_DIR=$work/outbox
mkdir -p "$work/media"
"$BIN" migrate >/dev/null
"$BIN" serve >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 50); do curl -sf localhost:18081/health >/dev/null && break; sleep 0.2; done
sleep 5
rss() { awk '/^VmRSS/ {print int($2/1024)}' "/proc/$server/status"; }
peak() { awk '/^VmHWM/ {print int($2/1024)}' "/proc/$server/status"; }
echo "idle RSS after 5 s: $(rss) MB (peak so far $(peak) MB)"
python3 - "$work/rss.db" "$JOBS" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
now = int(time.time() * 1000)
db.executemany(
    "INSERT INTO jobs (kind, args, status, priority, attempt, max_attempts, backoff_base_ms, "
    "backoff_cap_ms, run_at, created_at) VALUES ('orphan_sweep', '{}', 'pending', 0, 0, 3, 1000, 60000, ?, ?)",
    [(now, now)] * int(sys.argv[2]),
)
db.commit()
PY
start=$(date +%s.%N)
while [ "$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1], timeout=30).execute(\"SELECT COUNT(*) FROM jobs WHERE status IN ('pending','running','retrying')\").fetchone()[0])" "$work/rss.db")" != 0 ]; do
    sleep 0.5
done
end=$(date +%s.%N)
echo "drained $JOBS jobs in $(echo "$end - $start" | bc) s; RSS now $(rss) MB, peak $(peak) MB"
kill -TERM "$server"; wait "$server" || true
