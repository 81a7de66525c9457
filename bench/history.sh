#!/usr/bin/env bash
# History at scale.
#
#   bench/history.sh [TARGETS] [SECONDS]     (default 10000 targets, 600 one-second intervals)
#   bench/history.sh rss [TARGETS] [SECONDS] [BIN...]   (default 2000 targets for 150 s)
#
# Synthetic reports (no probes sent; examples/history_bench.rs):
# 1. write: TARGETS targets at 1 s for SECONDS intervals through the history writer's own code
#    (history::writer::replay), as fast as it goes; the writer thread's CPU time (RUSAGE_THREAD)
#    per interval is its share of a core at 1 s. Raw intervals are kept 5 minutes here so that
#    pruning runs as it does after 48 hours.
# 2. size: 100 targets for a whole day of 1 s intervals with the default retention: the file's
#    bytes per target per day (intervals, minute and hour rows, series, events).
# 3. query: 100 targets, 30 days of minute rows (one report a minute carrying 60 probes); one
#    target's 30 days at a 1-minute step, and its summary, 11 times each: the median.
# 4. memory: 2,000 targets every 100 ms for 3 minutes of reports: the writer's peak resident
#    memory over that of the reports alone (VmHWM, reset between the two).
#
# rss: the writer's memory on a real monitor: `netpulse monitor` over TARGETS udp:// targets on
# loopback (two `serve udp` of TARGETS/2 ports each, 127.0.25.251-252) at 100 ms for SECONDS
# (more than two minutes, so that minutes are packed), reports to /dev/null, once without
# history and once with it, for each BIN (default: this tree's release build; give an older
# build's binary too to compare). Prints the peak and the mean of the last minute of VmRSS
# (sampled each second) and VmHWM. MODES="on" skips the run without history.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT

rss() {
    local targets=${1:-2000} seconds=${2:-150}
    shift $(( $# < 2 ? $# : 2 ))
    local bins=("$@")
    if [ ${#bins[@]} -eq 0 ]; then
        cargo build --release --quiet --bin netpulse
        bins=("${CARGO_TARGET_DIR:-target}/release/netpulse")
    fi
    local half=$(( targets / 2 )) list=()
    for ip in 127.0.25.251 127.0.25.252; do
        "${bins[0]}" serve udp --bind "$ip" --ports "2526-$(( 2525 + half ))" -q >/dev/null &
        PIDS+=($!)
        for p in $(seq 2526 $(( 2525 + half ))); do list+=("udp://$ip:$p"); done
    done
    sleep 2
    echo "netpulse history rss: $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), $(date -u +%FT%TZ), $targets udp targets at 100 ms for $seconds s"
    for bin in "${bins[@]}"; do
        for history in ${MODES:-off on}; do
            local flag=(--no-history)
            [ "$history" = on ] && flag=(--history "$TMP/h.db")
            rm -f "$TMP"/h.db*
            "$bin" monitor "${list[@]}" --interval 100ms --format json "${flag[@]}" >/dev/null 2>"$TMP/err" &
            local pid=$! peak=0 samples=()
            for _ in $(seq "$seconds"); do
                sleep 1
                local kb
                kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
                samples+=("$kb")
                [ "$kb" -gt "$peak" ] && peak=$kb
            done
            local hwm
            hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
            kill -TERM "$pid"
            wait "$pid" || true
            local last=("${samples[@]: -60}") sum=0
            for kb in "${last[@]}"; do sum=$(( sum + kb )); done
            printf '%s, history %-3s: VmRSS peak %d MB, mean of the last minute %d MB; VmHWM %d MB; file %s\n' \
                "$bin" "$history" $(( peak / 1024 )) $(( sum / ${#last[@]} / 1024 )) $(( hwm / 1024 )) \
                "$(du -b "$TMP"/h.db* 2>/dev/null | awk '{s += $1} END {print s + 0}') bytes"
            grep -h "history:" "$TMP/err" | head -3 || true
        done
    done
}

if [ "${1:-}" = rss ]; then
    shift
    rss "$@"
    exit
fi

TARGETS=${1:-10000}
SECONDS_=${2:-600}
cargo build --release --quiet --example history_bench
BIN=${CARGO_TARGET_DIR:-target}/release/examples/history_bench
echo "netpulse history bench: $(nproc) cores, $(date -u +%FT%TZ), files in $TMP ($(df -T "$TMP" | awk 'NR==2 {print $2}'))"
"$BIN" write "$TARGETS" "$SECONDS_" "$TMP/write.db"
"$BIN" size 100 86400 "$TMP/size.db"
"$BIN" query 100 30 "$TMP/query.db"
"$BIN" memory 2000 180 "$TMP/memory.db" 100
