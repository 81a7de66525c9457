#!/usr/bin/env bash
# CPU per HTTP request of two netpulse builds, interleaved in pairs against the same backends:
# the steadier before/after measure on a shared machine (throughput swings by ±7 % between runs).
#
#   bench/pairs.sh OLD_BINARY [PAIRS=5] [SECONDS=5]     (needs wrk; uses 127.0.9.2 only)
#
# Each build runs `balance http` with one worker and no access log in front of four
# `netpulse serve http` backends; wrk drives 64 keep-alive connections. The proxy's CPU is
# utime+stime from /proc/PID/stat over the run, divided by the requests wrk completed.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: bench/pairs.sh OLD_BINARY [PAIRS] [SECONDS]}
PAIRS=${2:-5}
SECS=${3:-5}
IP=127.0.9.2
cargo build --release --quiet --bin netpulse
NEW=${CARGO_TARGET_DIR:-target}/release/netpulse
TICK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$IP/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

"$NEW" serve http --bind $IP --ports 9001-9004 --quiet >/dev/null 2>&1 & PIDS+=($!)
wait_port 9004
one() {
  local bin=$1
  "$bin" balance http --listen $IP:9000 --workers 1 --quiet --check none \
    --backend $IP:9001,$IP:9002,$IP:9003,$IP:9004 >/dev/null 2>&1 &
  local pid=$!
  wait_port 9000
  wrk -t1 -c64 -d1s "http://$IP:9000/" >/dev/null  # warm up
  local c0; c0=$(cpu $pid)
  local n; n=$(wrk -t1 -c64 -d"${SECS}s" "http://$IP:9000/" | awk '/requests in/ {print $1}')
  local c1; c1=$(cpu $pid)
  kill $pid; wait $pid 2>/dev/null || true
  awk -v c=$((c1 - c0)) -v t="$TICK" -v n="$n" 'BEGIN { printf "%.2f %d\n", c / t * 1e6 / n, n / '"$SECS"' }'
}
echo "pair  before µs/req (req/s)   now µs/req (req/s)"
for i in $(seq "$PAIRS"); do
  read -r ob orps < <(one "$OLD")
  read -r nb nrps < <(one "$NEW")
  echo "$i     $ob ($orps)          $nb ($nrps)"
  echo "$ob $nb" >> /tmp/pairs.$$
done
sort -n -k1 /tmp/pairs.$$ | awk '{a[NR]=$1} END {print "median before: " a[int((NR+1)/2)]}'
sort -n -k2 /tmp/pairs.$$ | awk '{a[NR]=$2} END {print "median now:    " a[int((NR+1)/2)]}'
rm -f /tmp/pairs.$$
