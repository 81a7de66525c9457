#!/usr/bin/env bash
# History at scale, with synthetic reports (no probes sent; examples/history_bench.rs):
#
#   bench/history.sh [TARGETS] [SECONDS]     (default 10000 targets, 600 one-second intervals)
#
# 1. write: TARGETS targets at 1 s for SECONDS intervals through the history writer's own code
#    (history::writer::replay), as fast as it goes; the writer thread's CPU time (RUSAGE_THREAD)
#    per interval is its share of a core at 1 s. Raw intervals are kept 5 minutes here so that
#    pruning runs as it does after 48 hours.
# 2. size: 100 targets for a whole day of 1 s intervals with the default retention: the file's
#    bytes per target per day (intervals, minute and hour rows, series, events).
# 3. query: 100 targets, 30 days of minute rows (one report a minute carrying 60 probes); one
#    target's 30 days at a 1-minute step, and its summary, 11 times each: the median.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${1:-10000}
SECONDS_=${2:-600}
cargo build --release --quiet --example history_bench
BIN=${CARGO_TARGET_DIR:-target}/release/examples/history_bench
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "netpulse history bench: $(nproc) cores, $(date -u +%FT%TZ), files in $TMP ($(df -T "$TMP" | awk 'NR==2 {print $2}'))"
"$BIN" write "$TARGETS" "$SECONDS_" "$TMP/write.db"
"$BIN" size 100 86400 "$TMP/size.db"
"$BIN" query 100 30 "$TMP/query.db"
