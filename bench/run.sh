#!/usr/bin/env bash
# Side-by-side throughput on loopback: netpulse vs direct, nginx and HAProxy, in one run.
#
#   bench/run.sh [SECONDS_PER_CASE=5] [WORKERS=1]      (ROUNDS=3 FLOWS=32 WRK_THREADS=1)
#   BASELINE=path/to/older/netpulse bench/run.sh ...   adds that build as a contender ("before")
#   BACKENDS=nginx bench/run.sh ...                     HTTP backends served by nginx, not by us
#     (nginx's default keepalive_requests 1000: every proxy reopens upstream connections now and
#     then; NGINX_KEEPALIVE_REQUESTS=1000000 keeps them open, as the runs before 2026-11-30 did)
#   (CPU per request of every proxy, nginx backends with default keep-alive, UDP via inetd: bench/peers.sh)
#
# Needs: apt-get install -y nginx libnginx-mod-stream haproxy wrk
# HTTP: wrk, 64 keep-alive connections, 4 backends (`netpulse serve http`), every proxy with the
# same worker count and no access log. UDP: closed-loop clients (examples/udp_load.rs) through
# each proxy to 3 `netpulse serve udp` servers. Only 127.0.9.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
WORKERS=${2:-1}
IP=127.0.9.1
FLOWS=${FLOWS:-32}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-1}
for tool in nginx haproxy wrk; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install -y nginx libnginx-mod-stream haproxy wrk)" >&2; exit 2; }
done
cargo build --release --quiet --bin netpulse --example udp_load
BIN=${CARGO_TARGET_DIR:-target}/release/netpulse
LOAD=${CARGO_TARGET_DIR:-target}/release/examples/udp_load
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

start() { "$@" >/dev/null 2>"$TMP/$(basename "$1").$RANDOM.err" & PIDS+=($!); }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$IP/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "bench: port $1 never opened" >&2; exit 1; }

# Backends shared by every case: our mock servers, or (BACKENDS=nginx) a second nginx we did not
# write, answering the same body from memory on the same four ports.
if [ "${BACKENDS:-netpulse}" = nginx ]; then
  {
    echo "worker_processes 1; daemon off; pid $TMP/backends.pid; error_log $TMP/backends-error.log warn;"
    echo "events { worker_connections 4096; } http { access_log off; keepalive_requests ${NGINX_KEEPALIVE_REQUESTS:-1000};"
    for p in 9001 9002 9003 9004; do
      echo "  server { listen $IP:$p; location / { default_type text/plain; return 200 \"Handled by server on port $p\\n\"; } }"
    done
    echo "}"
  } >"$TMP/backends.conf"
  start nginx -c "$TMP/backends.conf" -p "$TMP"
else
  start "$BIN" serve http --bind $IP --ports 9001-9004 --quiet
fi
start "$BIN" serve udp --bind $IP --ports 9101-9103 --quiet
wait_port 9001

# The proxies under test, all running at once on their own ports.
start "$BIN" balance http --listen $IP:9000 --backend $IP:9001,$IP:9002,$IP:9003,$IP:9004 --workers "$WORKERS" --quiet
start "$BIN" balance udp --listen $IP:9888 --backend $IP:9101,$IP:9102,$IP:9103 --workers "$WORKERS" --quiet
if [ -n "${BASELINE:-}" ]; then
  start "$BASELINE" balance http --listen $IP:9030 --backend $IP:9001,$IP:9002,$IP:9003,$IP:9004 --workers "$WORKERS" --quiet
  start "$BASELINE" balance udp --listen $IP:9890 --backend $IP:9101,$IP:9102,$IP:9103 --workers "$WORKERS" --quiet
fi
cat >"$TMP/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $WORKERS;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream b { server $IP:9001; server $IP:9002; server $IP:9003; server $IP:9004; keepalive 256; }
  server {
    listen $IP:9010 reuseport;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
stream {
  upstream u { server $IP:9101; server $IP:9102; server $IP:9103; }
  server { listen $IP:9889 udp; proxy_pass u; proxy_responses 1; proxy_timeout 1s; }
}
NGINX
start nginx -c "$TMP/nginx.conf" -p "$TMP"
cat >"$TMP/haproxy.cfg" <<HAPROXY
global
  nbthread $WORKERS
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend f
  bind $IP:9020
  default_backend b
backend b
  balance roundrobin
  server s1 $IP:9001
  server s2 $IP:9002
  server s3 $IP:9003
  server s4 $IP:9004
HAPROXY
start haproxy -f "$TMP/haproxy.cfg"
wait_port 9000; wait_port 9010; wait_port 9020
if [ -n "${BASELINE:-}" ]; then wait_port 9030; fi

http_case() { # name port -> "name req/s p99_ms"
  local out rps p99
  out=$(wrk -t"$WRK_THREADS" -c64 -d"${SECS}s" --latency "http://$IP:$2/")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        print (u == "us" ? v / 1000 : (u == "s" ? v * 1000 : v)) }' <<<"$out")
  echo "$1 $rps $p99"
}
udp_case() { # name port -> "name datagrams/s lost"
  local out
  out=$("$LOAD" "$IP:$2" "$FLOWS" "$SECS")
  echo "$1 $(awk '{print $2, $6}' <<<"$out")"
}
# Median of column 2 (and 3) per name, in the order names first appear.
median() {
  python3 -c '
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
names = list(dict.fromkeys(r[0] for r in rows))
for n in names:
    col = lambda i: statistics.median(float(r[i]) for r in rows if r[0] == n)
    print(n, col(1), col(2))
' "$1"
}

echo "netpulse bench: $ROUNDS rounds x ${SECS}s per case (medians), $WORKERS worker(s) per proxy, $(nproc) cores, $(date -u +%FT%TZ)"
for port in 9001 9000 9010 9020 ${BASELINE:+9030}; do wrk -t1 -c64 -d1s "http://$IP:$port/" >/dev/null; done # warm pools
for r in $(seq "$ROUNDS"); do
  # Cases interleave so that slow drift of a shared machine hits every contender alike.
  http_case direct 9001 >>"$TMP/http"
  http_case netpulse 9000 >>"$TMP/http"
  http_case nginx 9010 >>"$TMP/http"
  http_case haproxy 9020 >>"$TMP/http"
  if [ -n "${BASELINE:-}" ]; then http_case before 9030 >>"$TMP/http"; fi
  udp_case direct 9101 >>"$TMP/udp"
  udp_case netpulse 9888 >>"$TMP/udp"
  udp_case nginx 9889 >>"$TMP/udp"
  if [ -n "${BASELINE:-}" ]; then udp_case before 9890 >>"$TMP/udp"; fi
done

echo
echo "HTTP (wrk -c64 keep-alive, 4 backends)"
median "$TMP/http" | awk 'NR==1 {d=$2} {best[$1]=$2; p99[$1]=$3}
  {printf "  %-9s %10.0f req/s  %5.2fx direct  p99 %.2f ms\n", $1, $2, $2/d, $3} END {
  m = (best["nginx"] > best["haproxy"]) ? "nginx" : "haproxy";
  printf "  netpulse / faster of nginx and haproxy (%s) = %.2fx, p99 %.2f vs %.2f ms\n", m, best["netpulse"]/best[m], p99["netpulse"], p99[m];
  if ("before" in best) printf "  netpulse / before = %.2fx\n", best["netpulse"]/best["before"] }'
echo
echo "UDP (closed loop, $FLOWS flows, 64-byte datagrams, 3 servers)"
median "$TMP/udp" | awk 'NR==1 {d=$2} {v[$1]=$2} {printf "  %-9s %10.0f datagrams/s  %5.2fx direct  lost %d\n", $1, $2, $2/d, $3} END {
  printf "  netpulse / nginx = %.2fx\n", v["netpulse"]/v["nginx"];
  if ("before" in v) printf "  netpulse / before = %.2fx\n", v["netpulse"]/v["before"] }'
