#!/usr/bin/env bash
# User-space instructions per HTTP request of a netpulse build, counted by callgrind: a figure
# that does not move with the machine's load, unlike time (issue 11's HTTP steps were measured
# with it).
#
#   bench/callgrind.sh [NETPULSE_BINARY] [SECONDS=6]     (needs valgrind, nginx, wrk; 127.0.48.1)
#
# `balance http --workers 1 --check none` runs under callgrind in front of one nginx answering
# `return 200` on 4 ports with its default keep-alive limits; wrk -t1 -c16 warms it up for 3 s,
# the counters are zeroed (callgrind_control -z), wrk runs SECONDS more, the counters are dumped,
# and their total is divided by the requests wrk completed in that window. KEEP=FILE keeps the
# dump (read it with `callgrind_annotate --inclusive=yes FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/netpulse}
SECS=${2:-6}
IP=127.0.48.1
for tool in valgrind callgrind_control nginx wrk; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is missing (apt-get install -y valgrind nginx wrk)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "callgrind.sh: no netpulse at $BIN (cargo build --release)" >&2; exit 2; }
if ss -Htln "src $IP" | grep -q .; then echo "callgrind.sh: $IP is in use" >&2; exit 1; fi
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
cat >"$TMP/backends.conf" <<NGINX
worker_processes 1; daemon off; pid $TMP/nginx.pid; error_log $TMP/nginx.log warn;
events { worker_connections 4096; }
http { access_log off;
  server { listen $IP:9001; listen $IP:9002; listen $IP:9003; listen $IP:9004; location / { return 200 "ok\n"; } } }
NGINX
nginx -c "$TMP/backends.conf" -p "$TMP" & PIDS+=($!)
XDG_DATA_HOME=$TMP valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" "$BIN" balance http \
  --listen $IP:9000 --backend $IP:9001,$IP:9002,$IP:9003,$IP:9004 --workers 1 --quiet --check none \
  >/dev/null 2>"$TMP/valgrind.log" & PIDS+=($!)
VG=$!
for _ in $(seq 150); do (exec 3<>"/dev/tcp/$IP/9000") 2>/dev/null && break; sleep 0.2; done
wrk -t1 -c16 -d3s "http://$IP:9000/" >/dev/null
callgrind_control -z "$VG" >/dev/null 2>&1
reqs=$(wrk -t1 -c16 -d"${SECS}s" "http://$IP:9000/" | awk '/requests in/ {print $1}')
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 1
dump=$(ls -t "$TMP"/cg.out* | head -1)
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
[ -n "${KEEP:-}" ] && cp "$dump" "$KEEP"
awk -v t="$total" -v n="$reqs" -v b="$BIN" 'BEGIN { printf "%s: %d requests, %.0f user-space instructions per request\n", b, n, t / n }'
