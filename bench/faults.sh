#!/usr/bin/env bash
# Fault behaviour on loopback: netpulse vs nginx and HAProxy, side by side in one run.
#
#   bench/faults.sh                      all rows: killed hang slowloris memory udpfd sigterm
#   bench/faults.sh killed hang          just those rows
#   DUR=25 WORKERS=2 SLOW_SECS=65 CONNS=10000 bench/faults.sh ...
#
# Needs (root not required, but `ulimit -n` is raised to the hard limit, which must be >= ~12,000
# for the memory row): apt-get install -y nginx libnginx-mod-stream haproxy wrk; python3.
#
# Rows (each is a function below):
#   killed     wrk -t2 -c64 keep-alive for $DUR s (25); backend 2 of 4 SIGKILLed at +5 s and
#              restarted at +15 s: requests, non-2xx, socket errors.
#   hang       backend 4 of 4 accepts and never answers; proxy response timeout 3 s; wrk -c16 12 s:
#              requests, non-2xx (504s), socket errors, p99 and max latency.
#   slowloris  1,000 connections per proxy, each sending one byte of a request head every 5 s:
#              when (median) each proxy cuts them, how many are open at 35 s and at $SLOW_SECS s,
#              and the status line sent before closing, if any. All proxies run at once here.
#   memory     RSS of the proxy idle, with $CONNS (10,000) idle keep-alive clients (each sent one
#              request and read its answer) and 3 s after they all closed (VmRSS; nginx: the sum of
#              its workers, the master is idle and left out): KiB per connection, back within 10 %?
#   udpfd      `netpulse balance udp` under `ulimit -n 1024`, datagrams from 1,100 distinct source
#              ports, then: still alive? does `netpulse udp-ping` through it get replies? (nginx
#              stream under the same limit for comparison; HAProxy has no UDP.)
#   sigterm    64 keep-alive clients (python3; wrk counts refused reconnects after the stop as
#              write errors, so it cannot tell them from lost requests) for 10 s, SIGTERM to the
#              proxy at +5 s: requests lost (sent, no complete answer) + non-2xx, refused connects
#              after the stop apart, how long the proxy took to exit; then nginx SIGQUIT and
#              HAProxy SIGUSR1 (their graceful stops) for comparison.
#
# How each proxy is configured (as a user would; the same for every row unless the row says so):
#   - all:      WORKERS (2, = cores here) workers each: --workers, worker_processes, nbthread;
#               round robin over 4 backends, each its own `netpulse serve http --quiet` process so
#               that one can be killed; no access log.
#   - netpulse: `balance http` with its defaults (retries 2, passive ejection after 2 failures for
#               10 s, active HTTP checks every 1 s, fall 3 rise 2, timeout 30 s, connect 1 s,
#               max-connections 10,000) plus --quiet; the hang row adds --timeout 3s.
#   - nginx:    Debian's packaged defaults where it has them: worker_connections 768 (the memory
#               row raises it to 16384: with 768 nginx cannot hold 10,000); upstream `keepalive 32`
#               with proxy_http_version 1.1 and Connection "" (the documented way to pool);
#               proxy_next_upstream left at its default (error timeout), servers at max_fails=1
#               fail_timeout=10s (defaults); client_header_timeout and keepalive_timeout left at
#               their defaults (60 s, 75 s); `reuseport` as in bench/run.sh. The hang row adds
#               proxy_read_timeout 3s. nginx open source has no active health checks.
#   - haproxy:  the shape of the typical config in HAProxy's docs and tutorials: `option redispatch`,
#               `retries 3`, `check` on every server (a TCP connect check, inter 2 s, fall 3,
#               rise 2), timeout connect 5s / client 30s / server 30s, no `timeout http-request`
#               (Debian's packaged haproxy.cfg sets none either: the client timeout then applies
#               between chunks of a request head), global maxconn left to HAProxy (derived from
#               ulimit -n; the memory row too: see there). The hang row sets timeout server 3s. The
#               slowloris row also runs a second HAProxy, "haproxy+hr", with `timeout
#               http-request 10s`, the setting HAProxy's docs recommend against this attack.
#
# Addresses: 127.0.11.1 ... 127.0.11.6, one per row; nothing else.
set -uo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-25}
WORKERS=${WORKERS:-2}
SLOW_SECS=${SLOW_SECS:-65}
CONNS=${CONNS:-10000}
ROWS=("$@")
[ ${#ROWS[@]} -eq 0 ] && ROWS=(killed hang slowloris memory udpfd sigterm)
for r in "${ROWS[@]}"; do
  case $r in killed | hang | slowloris | memory | udpfd | sigterm) ;; *) echo "faults: unknown row $r" >&2; exit 2 ;; esac
done
for tool in nginx haproxy wrk python3; do
  command -v "$tool" >/dev/null || { echo "faults: $tool is missing (apt-get install -y nginx libnginx-mod-stream haproxy wrk)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)" || true
cargo build --release --quiet --bin netpulse || exit 1
BIN=$PWD/target/release/netpulse
TMP=$(mktemp -d)
PIDS=()
declare -A RES

stop_all() { # kill everything started so far (each by its own pid) and reap it
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() { stop_all; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

LAST=
start() { # start CMD... in the background; its pid in LAST
  "$@" >>"$TMP/$(basename "$1").out" 2>>"$TMP/$(basename "$1").err" &
  LAST=$!
  PIDS+=("$LAST")
}
wait_port() { # IP PORT
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done
  echo "faults: $1:$2 never opened" >&2
  return 1
}
wait_gone() { # PID SECONDS -> prints seconds it took (or ">N")
  local t0 t1
  t0=$(date +%s.%N)
  for _ in $(seq $(($2 * 20))); do
    kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}'; return 0; }
    sleep 0.05
  done
  echo ">$2"
}

declare -A BPID
backend() { # IP PORT: one `netpulse serve http` process for one port
  start "$BIN" serve http --bind "$1" --ports "$2" --quiet
  BPID[$2]=$LAST
}
backends() { # IP: four backends on 9001-9004
  local p
  for p in 9001 9002 9003 9004; do backend "$1" $p; done
  for p in 9001 9002 9003 9004; do wait_port "$1" $p; done
}
hang_listener() { # IP PORT: accepts and never answers (never reads either)
  start python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
held = []
while True:
    held.append(s.accept()[0])
' "$1" "$2"
}

# Per-row knobs, reset by every row.
knobs() {
  NP_ARGS=()
  NGX_CONNS=768
  NGX_LOC=""
  HAP_GLOBAL=""
  HAP_DEFAULTS=""
  HAP_SERVER_TIMEOUT=30s
}
PROXY_PID=
proxy() { # KIND IP PORT -> starts it, PROXY_PID = its (master) pid
  local kind=$1 ip=$2 port=$3 b="$2:9001,$2:9002,$2:9003,$2:9004"
  case $kind in
    netpulse)
      start "$BIN" balance http --listen "$ip:$port" --backend "$b" --workers "$WORKERS" --quiet "${NP_ARGS[@]}"
      ;;
    nginx)
      mkdir -p "$TMP/nginx-$port"
      cat >"$TMP/nginx-$port/nginx.conf" <<NGINX
worker_processes $WORKERS;
daemon off;
pid $TMP/nginx-$port/nginx.pid;
error_log $TMP/nginx-$port/error.log warn;
events { worker_connections $NGX_CONNS; }
http {
  access_log off;
  upstream b { server $ip:9001; server $ip:9002; server $ip:9003; server $ip:9004; keepalive 32; }
  server {
    listen $ip:$port reuseport;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; $NGX_LOC }
  }
}
NGINX
      start nginx -c "$TMP/nginx-$port/nginx.conf" -p "$TMP/nginx-$port"
      ;;
    haproxy | haproxy+hr)
      cat >"$TMP/haproxy-$port.cfg" <<HAPROXY
global
  nbthread $WORKERS
  $HAP_GLOBAL
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server $HAP_SERVER_TIMEOUT
  $( [ "$kind" = haproxy+hr ] && echo "timeout http-request 10s" )
  option redispatch
  retries 3
  $HAP_DEFAULTS
frontend f
  bind $ip:$port
  default_backend b
backend b
  balance roundrobin
  server s1 $ip:9001 check
  server s2 $ip:9002 check
  server s3 $ip:9003 check
  server s4 $ip:9004 check
HAPROXY
      start haproxy -f "$TMP/haproxy-$port.cfg"
      ;;
  esac
  PROXY_PID=$LAST
  wait_port "$ip" "$port"
}
PORT_OF() { case $1 in netpulse) echo 9000 ;; nginx) echo 9010 ;; haproxy) echo 9020 ;; haproxy+hr) echo 9030 ;; esac; }

# wrk output -> "requests non2xx connect read write timeout p99_ms max_ms"
wrk_parse() {
  awk '
    / requests in / { req = $1 }
    /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    /Non-2xx or 3xx responses:/ { n = $5 }
    function ms(v,  u) { u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
      return u == "us" ? v / 1000 : (u == "s" ? v * 1000 : (u == "m" ? v * 60000 : v)) }
    $1 == "Latency" && NF >= 4 { mx = ms($4) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%d %d %d %d %d %d %.1f %.1f\n", req, n, c, r, w, t, p99, mx }'
}

# --------------------------------------------------------------------------------------------
row_killed() {
  local ip=127.0.11.1 kind port out req n c r w t p99 mx
  echo "== killed: wrk -t2 -c64 ${DUR}s, backend :9002 SIGKILLed at +5 s, restarted at +15 s"
  for kind in netpulse nginx haproxy; do
    knobs
    port=$(PORT_OF $kind)
    backends $ip
    proxy $kind $ip "$port"
    sleep 2 # first health checks
    wrk -t2 -c64 -d"${DUR}s" --timeout 5s --latency "http://$ip:$port/" >"$TMP/wrk.killed.$kind" 2>&1 &
    local wpid=$!
    sleep 5
    kill -KILL "${BPID[9002]}"
    wait "${BPID[9002]}" 2>/dev/null
    sleep 10
    backend $ip 9002
    wait $wpid
    out=$(wrk_parse <"$TMP/wrk.killed.$kind")
    read -r req n c r w t p99 mx <<<"$out"
    printf "  %-9s requests %8d  non-2xx %5d  socket errors connect %d read %d write %d timeout %d  p99 %.1f ms max %.1f ms\n" \
      $kind "$req" "$n" "$c" "$r" "$w" "$t" "$p99" "$mx"
    RES[killed,$kind]="$req req, $n non-2xx, $((c + r + w + t)) sock err"
    stop_all
  done
}

row_hang() {
  local ip=127.0.11.2 kind port out req n c r w t p99 mx p
  echo "== hang: backend :9004 accepts and never answers; response timeout 3 s; wrk -t2 -c16 12 s"
  for kind in netpulse nginx haproxy; do
    knobs
    NP_ARGS=(--timeout 3s)
    NGX_LOC="proxy_read_timeout 3s;"
    HAP_SERVER_TIMEOUT=3s
    port=$(PORT_OF $kind)
    for p in 9001 9002 9003; do backend $ip $p; done
    hang_listener $ip 9004
    for p in 9001 9002 9003 9004; do wait_port $ip $p; done
    proxy $kind $ip "$port"
    sleep 1
    wrk -t2 -c16 -d12s --timeout 10s --latency "http://$ip:$port/" >"$TMP/wrk.hang.$kind" 2>&1
    out=$(wrk_parse <"$TMP/wrk.hang.$kind")
    read -r req n c r w t p99 mx <<<"$out"
    printf "  %-9s requests %8d  non-2xx %5d  socket errors connect %d read %d write %d timeout %d  p99 %.1f ms max %.1f ms\n" \
      $kind "$req" "$n" "$c" "$r" "$w" "$t" "$p99" "$mx"
    RES[hang,$kind]="$req req, $n non-2xx, $((c + r + w + t)) err, max $(awk -v m="$mx" 'BEGIN{printf "%.1f", m/1000}') s"
    stop_all
  done
}

row_slowloris() {
  local ip=127.0.11.3 kind line
  echo "== slowloris: 1000 connections per proxy, 1 byte of a request head every 5 s, watched for ${SLOW_SECS} s"
  knobs
  backends $ip
  for kind in netpulse nginx haproxy haproxy+hr; do proxy $kind $ip "$(PORT_OF $kind)"; done
  sleep 1
  python3 - "$ip" "$SLOW_SECS" netpulse:9000 nginx:9010 haproxy:9020 haproxy+hr:9030 >"$TMP/slowloris" <<'PY'
import asyncio, statistics, sys, time
ip, secs, targets = sys.argv[1], float(sys.argv[2]), [t.split(":") for t in sys.argv[3:]]
N, EVERY = 1000, 5.0
HEAD = b"GET / HTTP/1.1\r\nHost: slowloris.example\r\nUser-Agent: slowloris/1.0\r\nAccept: */*\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"

async def one(name, port, res, t0):
    try:
        r, w = await asyncio.open_connection(ip, int(port))
    except OSError as e:
        res["refused"] += 1
        return
    start = time.monotonic()
    got = b""
    async def reader():
        nonlocal got
        while True:
            d = await r.read(4096)
            if not d:
                return
            got += d
    rd = asyncio.ensure_future(reader())
    i = 0
    try:
        while i < len(HEAD) and time.monotonic() - t0 < secs:
            w.write(HEAD[i:i + 1])
            i += 1
            await w.drain()
            try:
                await asyncio.wait_for(asyncio.shield(rd), EVERY)
                break  # the proxy closed it
            except asyncio.TimeoutError:
                pass
    except (ConnectionError, OSError):
        pass
    if rd.done():
        res["closed"].append(time.monotonic() - start)
        status = got.split(b"\r\n", 1)[0].decode(errors="replace")[:40] if got else "no_status_(closed_silently)"
        res["status"][status] = res["status"].get(status, 0) + 1
    else:
        res["open_end"] += 1
        rd.cancel()
    w.close()

async def main():
    t0 = time.monotonic()
    res = {n: {"closed": [], "status": {}, "open_end": 0, "refused": 0} for n, _ in targets}
    tasks = [asyncio.ensure_future(one(n, p, res[n], t0)) for n, p in targets for _ in range(N)]
    await asyncio.sleep(35 - (time.monotonic() - t0))
    at35 = {n: N - res[n]["refused"] - len(res[n]["closed"]) for n, _ in targets}
    await asyncio.gather(*tasks)
    for n, _ in targets:
        c = res[n]["closed"]
        med = "%.1f" % statistics.median(c) if c else "-"
        lo = "%.1f" % min(c) if c else "-"
        hi = "%.1f" % max(c) if c else "-"
        st = ";".join("%s=%d" % (k.replace(" ", "_"), v) for k, v in sorted(res[n]["status"].items())) or "-"
        print(n, res[n]["refused"], at35[n], res[n]["open_end"], med, lo, hi, st)

asyncio.run(main())
PY
  while read -r kind refused at35 atend med lo hi st; do
    printf "  %-10s refused %4d  open at 35 s %4d  open at %s s %4d  cut after median %s s (min %s, max %s)  sent before closing: %s\n" \
      "$kind" "$refused" "$at35" "$SLOW_SECS" "$atend" "$med" "$lo" "$hi" "$st"
    if [ "$med" = "-" ]; then
      RES[slowloris,$kind]="never cut; $at35 open at 35 s"
    else
      RES[slowloris,$kind]="cut ~${med}s; $at35 open at 35 s; ${st//_/ }"
    fi
  done <"$TMP/slowloris"
  stop_all
}

row_memory() {
  local ip=127.0.11.4 kind port pids
  echo "== memory: RSS idle, with $CONNS idle keep-alive clients, and 3 s after they closed"
  for kind in netpulse nginx haproxy; do
    knobs
    NGX_CONNS=16384
    # HAProxy keeps two descriptors per connection and will not start with a maxconn the hard
    # fd limit (20,000 here, not raisable in this container) cannot cover; its default, derived
    # from ulimit -n, is then the most it can hold (about 9,990).
    port=$(PORT_OF $kind)
    backends $ip
    proxy $kind $ip "$port"
    sleep 2
    if [ $kind = nginx ]; then pids=$(pgrep -P "$PROXY_PID" | tr '\n' ,); else pids=$PROXY_PID; fi
    python3 - "$ip" "$port" "$CONNS" "${pids%,}" >"$TMP/memory.$kind" <<'PY'
import asyncio, sys, time
ip, port, n, pids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(p) for p in sys.argv[4].split(",")]
REQ = b"GET / HTTP/1.1\r\nHost: mem\r\n\r\n"

def rss():
    total = 0
    for p in pids:
        with open("/proc/%d/status" % p) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total

async def one(sem, conns):
    async with sem:
        try:
            r, w = await asyncio.open_connection(ip, port)
            w.write(REQ)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await asyncio.wait_for(r.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError("status " + head.split(b"\r\n")[0].decode())
            conns.append((r, w))
        except Exception as e:
            errors.append(type(e).__name__)

errors = []
async def main():
    before = rss()
    conns = []
    sem = asyncio.Semaphore(256)
    await asyncio.gather(*[one(sem, conns) for _ in range(n)])
    await asyncio.sleep(2)
    during = rss()
    # Still open? A closed one reads EOF at once.
    alive = 0
    for r, w in conns:
        if not r.at_eof() and not w.is_closing():
            alive += 1
    for r, w in conns:
        w.close()
    await asyncio.sleep(3)
    after = rss()
    per = (during - before) / max(1, len(conns))
    back = "yes" if after <= before * 1.10 else "no"
    print(before, during, after, len(conns), alive, len(errors), "%.1f" % per, back,
          (sorted(set(errors))[0] if errors else "-"))

asyncio.run(main())
PY
    local before during after opened alive errs per back err1
    read -r before during after opened alive errs per back err1 <"$TMP/memory.$kind"
    printf "  %-9s RSS idle %7d KiB  with %5d open (%d alive, %d failed: %s) %8d KiB = %5s KiB/conn  after close %7d KiB  back within 10%%: %s\n" \
      $kind "$before" "$opened" "$alive" "$errs" "$err1" "$during" "$per" "$after" "$back"
    RES[memory,$kind]="${per} KiB/conn ($opened held); $((before / 1024))->$((during / 1024))->$((after / 1024)) MiB; back: $back"
    stop_all
  done
}

row_udpfd() {
  local ip=127.0.11.5 kind port pid replies alive pings err
  echo "== udpfd: UDP balancer under ulimit -n 1024, datagrams from 1,100 source ports, then udp-ping through it"
  for kind in netpulse nginx; do
    start "$BIN" serve udp --bind $ip --ports 9101-9103 --quiet
    sleep 0.5
    if [ $kind = netpulse ]; then
      port=9100
      start bash -c 'ulimit -n 1024 && exec "$@"' _ "$BIN" balance udp --listen $ip:$port --backend $ip:9101,$ip:9102,$ip:9103 --workers "$WORKERS" --quiet
    else
      port=9110
      mkdir -p "$TMP/nginx-udp"
      cat >"$TMP/nginx-udp/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $WORKERS;
daemon off;
pid $TMP/nginx-udp/nginx.pid;
error_log $TMP/nginx-udp/error.log warn;
events { worker_connections 768; }
stream {
  upstream u { server $ip:9101; server $ip:9102; server $ip:9103; }
  server { listen $ip:$port udp; proxy_pass u; proxy_responses 1; proxy_timeout 10s; }
}
NGINX
      start bash -c 'ulimit -n 1024 && exec "$@"' _ nginx -c "$TMP/nginx-udp/nginx.conf" -p "$TMP/nginx-udp"
    fi
    pid=$LAST
    sleep 1
    replies=$(python3 - $ip $port <<'PY'
import select, socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
socks = []
for i in range(1100):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.setblocking(False)
    socks.append(s)
for i, s in enumerate(socks):
    s.sendto(b"PING %d %s" % (i, time.strftime("%H:%M:%S").encode()), (ip, port))
    if i % 100 == 99:
        time.sleep(0.01)
got = set()
end = time.time() + 3
ep = select.epoll()
for i, s in enumerate(socks):
    ep.register(s.fileno(), select.EPOLLIN)
byfd = {s.fileno(): s for s in socks}
while time.time() < end and len(got) < len(socks):
    for fd, _ in ep.poll(0.2):
        try:
            byfd[fd].recv(2048)
            got.add(fd)
        except BlockingIOError:
            pass
print(len(got))
PY
)
    sleep 1
    if kill -0 "$pid" 2>/dev/null; then alive=yes; else alive=no; fi
    pings=$("$BIN" udp-ping $ip $port -c 5 -W 500ms 2>&1 | awk '/packets transmitted/ {print $4}')
    pings=${pings:-0}
    err=$(grep -h -i -m1 -E "too many|descriptor|EMFILE|error" "$TMP/bash.err" "$TMP/nginx-udp/error.log" 2>/dev/null | cut -c1-160)
    printf "  %-9s 1,100 sources: %4d replies  alive after: %s  udp-ping after: %s/5 replies%s\n" \
      $kind "$replies" "$alive" "$pings" "${err:+  (log: $err)}"
    RES[udpfd,$kind]="alive $alive; $replies/1100 answered; ping $pings/5"
    stop_all
    : >"$TMP/bash.err"
  done
  RES[udpfd,haproxy]="n/a (no UDP)"
}

row_sigterm() {
  # wrk cannot tell a request lost in the stop from a refused reconnect after it (it counts both as
  # write errors), so this row's client is a small python3 one: 64 keep-alive connections, each
  # sending GET / and reading the whole answer in a loop; a request written on an open connection
  # that gets no complete answer is "lost"; connects refused after the stop are counted apart.
  # The last two runs stop nginx and HAProxy the graceful way instead (SIGQUIT, what Debian's
  # nginx.service sends; SIGUSR1, HAProxy's soft stop), for comparison; they are not in the
  # summary's columns.
  local ip=127.0.11.6 kind port took ok non2xx lost refused other sig case
  echo "== sigterm: 64 keep-alive clients for 10 s (python3), SIGTERM to the proxy at +5 s"
  for case in netpulse:TERM nginx:TERM haproxy:TERM nginx:QUIT haproxy:USR1; do
    kind=${case%:*} sig=${case#*:}
    knobs
    port=$(PORT_OF $kind)
    backends $ip
    proxy $kind $ip "$port"
    sleep 2
    python3 - $ip "$port" >"$TMP/sigterm.$kind" <<'PY' &
import asyncio, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
REQ = b"GET / HTTP/1.1\r\nHost: term\r\n\r\n"
c = {"ok": 0, "non2xx": 0, "lost": 0, "refused": 0, "other": 0}

async def client(end):
    r = w = None
    while time.monotonic() < end:
        if w is None:
            try:
                r, w = await asyncio.open_connection(ip, port)
            except ConnectionRefusedError:
                c["refused"] += 1
                await asyncio.sleep(0.01)
                continue
            except OSError:
                c["other"] += 1
                await asyncio.sleep(0.01)
                continue
        try:
            w.write(REQ)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await asyncio.wait_for(r.readexactly(length), 5)
            c["ok" if head[9:10] in (b"2", b"3") else "non2xx"] += 1
            if b"connection: close" in head.lower():
                w.close(); r = w = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError):
            c["lost"] += 1
            w.close(); r = w = None

async def main():
    end = time.monotonic() + 10
    await asyncio.gather(*[client(end) for _ in range(64)])
    print(c["ok"], c["non2xx"], c["lost"], c["refused"], c["other"])

asyncio.run(main())
PY
    local cpid=$!
    sleep 5
    kill -"$sig" "$PROXY_PID"
    took=$(wait_gone "$PROXY_PID" 15)
    wait $cpid
    read -r ok non2xx lost refused other <"$TMP/sigterm.$kind"
    printf "  %-9s SIG%-4s answered %7d  non-2xx %4d  lost (sent, no complete answer) %4d  refused after the stop %6d  other %d  exit took %s s\n" \
      $kind "$sig" "$ok" "$non2xx" "$lost" "$refused" "$other" "$took"
    RES[sigterm,$kind,$sig]="$((lost + non2xx)) lost of $((ok + non2xx + lost)) ($non2xx non-2xx); exit ${took}s"
    stop_all
  done
}

echo "netpulse faults: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +dirty), $(nproc) cores, $WORKERS worker(s) per proxy, $(date -u +%FT%TZ)"
echo "  $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), ulimit -n $(ulimit -n)"
for r in "${ROWS[@]}"; do "row_$r"; done

echo
echo "Summary"
printf "| %-9s | %-44s | %-44s | %-44s |\n" row netpulse nginx haproxy
printf "|%s|%s|%s|%s|\n" "-----------" "$(printf -- '-%.0s' $(seq 46))" "$(printf -- '-%.0s' $(seq 46))" "$(printf -- '-%.0s' $(seq 46))"
for r in "${ROWS[@]}"; do
  h=${RES[$r,haproxy]:--}
  n=${RES[$r,nginx]:--}
  [ "$r" = slowloris ] && h="$h [with timeout http-request 10s: ${RES[slowloris,haproxy+hr]:--}]"
  if [ "$r" = sigterm ]; then
    RES[sigterm,netpulse]=${RES[sigterm,netpulse,TERM]:--}
    n="${RES[sigterm,nginx,TERM]:--} [SIGQUIT: ${RES[sigterm,nginx,QUIT]:--}]"
    h="${RES[sigterm,haproxy,TERM]:--} [SIGUSR1: ${RES[sigterm,haproxy,USR1]:--}]"
  fi
  printf "| %-9s | %-44s | %-44s | %-44s |\n" "$r" "${RES[$r,netpulse]:--}" "$n" "$h"
done
