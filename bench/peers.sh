#!/usr/bin/env bash
# Issue 11's side-by-side benchmark: CPU per request of every proxy, on our backends and on
# backends we did not write, HTTP and UDP, 1 and 2 workers, in one command.
#
#   bench/peers.sh [SECONDS_PER_CASE=5]          about 8 minutes with the defaults below
#   ROUNDS=3 WORKERS="1 2" HTTP="ours nginx" UDP="ours inetd" FLOWS=32 CONNS=64 bench/peers.sh 5
#   BASELINE=path/to/older/netpulse bench/peers.sh   adds that build as a contender ("before")
#   NETPULSE=path/to/netpulse UDP_LOAD=path/to/udp_load bench/peers.sh   skips the cargo build
#   HAPROXY_REUSE=always bench/peers.sh   HAProxy's http-reuse (default: not set, i.e. safe)
#   NGINX_UDP_RESPONSES= bench/peers.sh   nginx UDP without proxy_responses (default 1: a session
#                                         per datagram; unset: one per client, pinned to a backend)
#   PROXY_CPUS=0.5 bench/peers.sh   (root) every proxy limited to half a core (a cgroup CPU quota of its
#                                   own, 5 ms per 10 ms; as in a container with a CPU limit), so
#                                   the proxy, not load or backends, is what bounds req/s
#   EACH_CPUS=0.6 bench/peers.sh    (root) every process limited to 0.6 of a core, each in its own cgroup:
#                                   proxy, backends and load generator, as if each had a machine
#                                   of its own (then "direct" is no longer two processes sharing
#                                   what three share through a proxy)
#
# Needs: apt-get install -y nginx libnginx-mod-stream haproxy wrk inetutils-inetd; python3.
#
# What runs, on loopback 127.0.45.x only (NET= picks another range; one 2-core machine: load, proxy and backends share it):
#   HTTP backends, "ours":  one `netpulse serve http --quiet` on 4 ports (one thread).
#   HTTP backends, "nginx": one nginx (BACKEND_WORKERS=1 worker) answering `return 200` on 4 ports
#                           with its default keep-alive limits (keepalive_requests 1000,
#                           keepalive_timeout 75s), so every proxy reopens upstream connections.
#   UDP backends, "ours":   one `netpulse serve udp --quiet` on 3 ports (upper-cased echo).
#   UDP backends, "inetd":  inetutils-inetd's internal `echo dgram` service on 3 addresses (port 7;
#                           its built-ins are found by service name, so one address each).
#   Proxies, each with W workers (--workers W, worker_processes W, nbthread W), round robin over
#   the 4 (3) backends, no access log, configured as their users would:
#     netpulse  `balance http|udp` with its defaults (health checks on) and --quiet.
#     nginx     upstream `keepalive $CONNS` with proxy_http_version 1.1 and Connection "" (the
#               documented way to pool; as many idle connections as wrk opens, so nginx never has
#               to close a reusable one), `reuseport` on both listeners, everything else default
#               (keepalive_requests 1000 on both sides); UDP: stream with proxy_responses 1.
#     haproxy   `http-reuse` left at its default, `safe` (HAProxy's own recommendation; with
#               keep-alive clients it reuses idle server connections for every request after a
#               client connection's first), `check` on every server, timeouts 5s/30s/30s.
#   "direct" is the same load against one backend port, no proxy.
# Load: wrk -t$W -c$CONNS keep-alive (-t1 with 1 worker: one load thread per proxy worker, and a
# single wrk thread drives more than any proxy here does), --latency; UDP: examples/udp_load.rs,
# $FLOWS closed-loop clients on one thread. Every contender is warmed up for 1 s first, then the
# cases run interleaved (direct, netpulse, nginx, haproxy, before; each round starts one later)
# for ROUNDS rounds; medians.
# CPU: utime+stime from /proc/PID/stat of the proxy's whole process set (itself and all its
# descendants: nginx's master and workers), of the backend's, and of the load generator (the
# shell's reaped-children times), over each run; "other" is the rest of the machine's busy time
# (other users of the shared machine; under a CPU limit also the kernel's network work done
# outside the measured processes, by ksoftirqd or in interrupts on an idle CPU, which no quota
# bounds). "of it, user": the proxy's user-space share (utime), the rest is the kernel's work
# for it. A process at >= 90 % of the cores it can use is flagged.
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
SECS=${1:-5}
if ! [[ $SECS =~ ^[0-9]+$ ]] || [ "$SECS" -eq 0 ]; then echo "peers: seconds per case must be a whole number above 0, not '$SECS' (bench/peers.sh --help)" >&2; exit 2; fi
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1 2}
HTTP=${HTTP-ours nginx}
UDP=${UDP-ours inetd}
FLOWS=${FLOWS:-32}
CONNS=${CONNS:-64}
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
[ -n "$HTTP$UDP" ] || { echo "peers: HTTP= and UDP= are both empty: nothing to run" >&2; exit 2; }
NET=${NET:-127.0.45} # NET=127.0.43 bench/peers.sh runs on another range
PROXY_CPUS=${PROXY_CPUS:-} # a CPU limit for every proxy (cores; empty: none)
EACH_CPUS=${EACH_CPUS:-}   # the same for every process of the run
LIMIT_CPUS=${EACH_CPUS:-$PROXY_CPUS}
PX=$NET.10 # every proxy listens here, each on its own port

need=(nginx haproxy wrk python3 ss pgrep)
case " $UDP " in *" inetd "*) need+=(inetutils-inetd) ;; esac
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null || { echo "peers: $tool is missing (apt-get install -y nginx libnginx-mod-stream haproxy wrk inetutils-inetd)" >&2; exit 2; }
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || { echo "peers: nginx's stream module is missing (apt-get install -y libnginx-mod-stream)" >&2; exit 2; }
# A leftover or a second run on these addresses would answer in place of a contender that failed
# to bind, and its figures would be taken for that contender's.
busy=$(ss -Htuln | awk -v net="$NET." 'index($5, net) == 1 {print $1 " " $5}' | tr '\n' ' ')
[ -z "$busy" ] || { echo "peers: $NET.x is already in use ($busy); stop what listens there first" >&2; exit 1; }
if [ -z "${NETPULSE:-}" ] || [ -z "${UDP_LOAD:-}" ]; then
  cargo build --release --quiet --bin netpulse --example udp_load
fi
OUT=${CARGO_TARGET_DIR:-target}
BIN=${NETPULSE:-$OUT/release/netpulse}
LOAD=${UDP_LOAD:-$OUT/release/examples/udp_load}
TICK=$(getconf CLK_TCK)
# PROXY_CPUS, EACH_CPUS: each contender (and under EACH_CPUS each backend and the load) gets a
# cgroup of its own with a CFS quota (cgroup v2's cpu.max, or v1's cpu controller), its processes
# started in it.
CGROUP='' CGROUP_V=''
if [ -n "$LIMIT_CPUS" ]; then
  QUOTA=0 # awk would read "0.6abc" as 0.6 and "abc" as 0: only a plain number of cores is taken
  [[ $LIMIT_CPUS =~ ^[0-9]*\.?[0-9]+$ ]] && QUOTA=$(awk -v c="$LIMIT_CPUS" 'BEGIN { q = int(c * 10000 + 0.5); print q < 1000 ? 0 : q }')
  [ "$QUOTA" -gt 0 ] || { echo "peers: a CPU limit of $LIMIT_CPUS: give cores, at least 0.1" >&2; exit 2; }
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    CGROUP=/sys/fs/cgroup/netpulse-peers-$$ CGROUP_V=2
    echo +cpu 2>/dev/null >/sys/fs/cgroup/cgroup.subtree_control ||
      { echo "peers: a CPU limit: cannot enable cgroup v2's cpu controller under /sys/fs/cgroup (root is needed)" >&2; exit 2; }
  elif [ -d /sys/fs/cgroup/cpu ]; then
    CGROUP=/sys/fs/cgroup/cpu/netpulse-peers-$$ CGROUP_V=1
  else
    echo "peers: a CPU limit needs a cgroup cpu controller (v2 cpu.max or v1 cpu), and root" >&2; exit 2
  fi
  mkdir "$CGROUP" || { echo "peers: a CPU limit: cannot make $CGROUP (root is needed)" >&2; exit 2; }
  # v2: the groups made under it get a cpu.max only where it hands the controller down.
  if [ "$CGROUP_V" = 2 ] && ! echo +cpu 2>/dev/null >"$CGROUP/cgroup.subtree_control"; then
    rmdir "$CGROUP"; echo "peers: a CPU limit: cannot enable the cpu controller in $CGROUP" >&2; exit 2
  fi
fi
TMP=$(mktemp -d)
export XDG_DATA_HOME=$TMP/data # netpulse keeps its rotation state here, not in the user's home
PIDS=()  # everything started, killed at exit
GROUP=() # the proxies of the current group, killed at its end
INETD_PID=

cleanup() {
  for p in "${GROUP[@]}" "${PIDS[@]}" $INETD_PID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
  if [ -n "$CGROUP" ]; then
    # A killed proxy's processes (inetd: not our child, not waited for) may take a moment to
    # leave their cgroup. Nothing here may fail under `set -e`: that would end the cleanup.
    local g
    for _ in $(seq 30); do
      for g in "$CGROUP"/*/; do [ ! -d "$g" ] || rmdir "$g" 2>/dev/null || true; done
      rmdir "$CGROUP" 2>/dev/null && break
      sleep 0.1
    done
    [ ! -d "$CGROUP" ] || echo "peers: $CGROUP is left (processes still in it: $(cat "$CGROUP"/*/cgroup.procs 2>/dev/null | tr '\n' ' '))" >&2
  fi
}
trap cleanup EXIT

# start NAME CMD... : run in the background, stderr kept in $TMP/NAME.err; pid in $STARTED.
start() {
  local name=$1; shift
  "$@" >/dev/null 2>"$TMP/$name.err" &
  STARTED=$!
}
# limit KIND NAME: sets LIM to what runs a command in NAME's cgroup when KIND is limited
# (proxies under PROXY_CPUS or EACH_CPUS; backends and load under EACH_CPUS); else to nothing.
LIM=()
limit() {
  LIM=()
  [ -n "$CGROUP" ] || return 0
  [ "$1" = proxy ] || [ -n "$EACH_CPUS" ] || return 0
  local g=$CGROUP/$2
  if [ ! -d "$g" ]; then
    mkdir "$g"
    if [ "$CGROUP_V" = 2 ]; then
      echo "$QUOTA 10000" >"$g/cpu.max"
    else
      echo 10000 >"$g/cpu.cfs_period_us"; echo "$QUOTA" >"$g/cpu.cfs_quota_us"
    fi
  fi
  # shellcheck disable=SC2016 # $$ and $0 are the inner shell's
  LIM=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$g")
}
# start_proxy NAME CMD... : start, within NAME's CPU limit when there is one.
start_proxy() {
  local name=$1; shift
  limit proxy "$name"
  start "$name" "${LIM[@]}" "$@"
}
ready() { # NAME PID ADDR tcp|udp: wait until ADDR answers; if NAME's process ends first, say why
  local name=$1 pid=$2 addr=$3 proto=$4
  for _ in $(seq 200); do
    if [ "$proto" = tcp ]; then
      (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && return 0
    else
      ss -Hlun "sport = :${addr##*:}" | grep -q "${addr%:*}:${addr##*:} " && return 0
    fi
    [ "$pid" = - ] || kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "peers: $name is not answering on $proto $addr" >&2
  cat "$TMP/$name.err" >&2 2>/dev/null || true
  exit 1
}

# utime+stime (clock ticks) of process $1 and all its live descendants, then utime alone;
# "0 0" for "-".
tree_ticks() {
  [ "$1" = - ] && { echo 0 0; return; }
  local todo=("$1") sum=0 user=0 p s
  local -a f
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}")
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -ra f <<<"${s##*) }" # fields from 3 (state) on: utime is f[11], stime f[12]
    sum=$((sum + f[11] + f[12])); user=$((user + f[11]))
    mapfile -t -O ${#todo[@]} todo < <(pgrep -P "$p" || true)
  done
  echo "$sum $user"
}
# CPU of this shell's reaped children (the load generator), and the machine's busy ticks.
child_ticks() { local s; s=$(</proc/"$1"/stat); read -ra f <<<"${s##*) }"; echo $((f[13] + f[14])); }
busy_ticks() { local u n s i w q sq st; read -r _ u n s i w q sq st _ </proc/stat; echo $((u + n + s + q + sq + st)); }

# measure PROTO SETUP W CASE PROXY_PID BACKEND_PID -- LOAD COMMAND... >> rows
# Row: proto setup W case requests rate p99_ms errors proxy_ticks backend_ticks load_ticks busy_ticks wall_s proxy_user_ticks
measure() {
  local proto=$1 setup=$2 w=$3 name=$4 ppid=$5 bpid=$6; shift 7
  local p0 pu0 b0 l0 m0 t0 out p1 pu1 b1 l1 m1 t1 me=$BASHPID
  read -r p0 pu0 <<<"$(tree_ticks "$ppid")"; read -r b0 _ <<<"$(tree_ticks "$bpid")"; m0=$(busy_ticks)
  t0=$EPOCHREALTIME; l0=$(child_ticks "$me")
  limit load load
  out=$("${LIM[@]}" "$@" 2>&1) || true
  l1=$(child_ticks "$me"); t1=$EPOCHREALTIME
  m1=$(busy_ticks); read -r p1 pu1 <<<"$(tree_ticks "$ppid")"; read -r b1 _ <<<"$(tree_ticks "$bpid")"
  local fields
  if [ "$proto" = http ]; then
    fields=$(awk '/ requests in / {n = $1} /^Requests\/sec:/ {r = $2}
      $1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v); p = (u == "us" ? v / 1000 : (u == "s" ? v * 1000 : v)) }
      /Non-2xx/ {e += $NF} /Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
      END { printf "%d %s %s %d", n, (r == "" ? 0 : r), (p == "" ? "nan" : p), e }' <<<"$out")
  else
    fields=$(awk '/^datagrams\/s/ {printf "%d %s nan %d", $4, $2, $6}' <<<"$out")
  fi
  if [ -z "$fields" ] || [ "${fields%% *}" = 0 ]; then
    echo "peers: $proto $setup W=$w $name: no answers: $(head -c 300 <<<"$out")" >&2
    : >"$TMP/incomplete"
    fields="0 0 nan 0"
  fi
  echo "$proto $setup $w $name $fields $((p1 - p0)) $((b1 - b0)) $((l1 - l0)) $((m1 - m0)) $(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}') $((pu1 - pu0))"
}

# ---------------------------------------------------------------- backends (kept for the whole run)
declare -A HTTP_BACK HTTP_BPID UDP_BACK UDP_BPID
for s in $HTTP; do
  case $s in
    ours)
      limit backend ours-http-backend
      start ours-http-backend "${LIM[@]}" "$BIN" serve http --bind $NET.1 --ports 9001-9004 --quiet
      PIDS+=("$STARTED"); HTTP_BPID[ours]=$STARTED; HTTP_BACK[ours]="$NET.1:9001 $NET.1:9002 $NET.1:9003 $NET.1:9004" ;;
    nginx)
      {
        echo "worker_processes $BACKEND_WORKERS; daemon off; pid $TMP/backend-nginx.pid; error_log $TMP/backend-nginx.log warn;"
        echo "events { worker_connections 4096; } http { access_log off;"
        for p in 9001 9002 9003 9004; do
          printf '  server { listen %s:%s; location / { default_type text/plain; return 200 "Handled by server on port %s\\n"; } }\n' $NET.2 $p $p
        done
        echo "}"
      } >"$TMP/backend-nginx.conf"
      limit backend nginx-http-backend
      start nginx-http-backend "${LIM[@]}" nginx -c "$TMP/backend-nginx.conf" -p "$TMP"
      PIDS+=("$STARTED"); HTTP_BPID[nginx]=$STARTED; HTTP_BACK[nginx]="$NET.2:9001 $NET.2:9002 $NET.2:9003 $NET.2:9004" ;;
    *) echo "peers: HTTP setups are ours and nginx, not $s" >&2; exit 2 ;;
  esac
done
for s in $UDP; do
  case $s in
    ours)
      limit backend ours-udp-backend
      start ours-udp-backend "${LIM[@]}" "$BIN" serve udp --bind $NET.1 --ports 9101-9103 --quiet
      PIDS+=("$STARTED"); UDP_BPID[ours]=$STARTED; UDP_BACK[ours]="$NET.1:9101 $NET.1:9102 $NET.1:9103" ;;
    inetd)
      # inetutils-inetd has no foreground mode without a debug line per datagram: it daemonizes,
      # and its pid file says which process it is.
      printf '%s:echo dgram udp wait root internal\n' $NET.5 $NET.6 $NET.7 >"$TMP/inetd.conf"
      limit backend inetd
      "${LIM[@]}" inetutils-inetd -p"$TMP/inetd.pid" "$TMP/inetd.conf"
      for _ in $(seq 100); do [ -s "$TMP/inetd.pid" ] && break; sleep 0.05; done
      INETD_PID=$(cat "$TMP/inetd.pid")
      UDP_BPID[inetd]=$INETD_PID; UDP_BACK[inetd]="$NET.5:7 $NET.6:7 $NET.7:7" ;;
    *) echo "peers: UDP setups are ours and inetd, not $s" >&2; exit 2 ;;
  esac
done
for s in $HTTP; do for a in ${HTTP_BACK[$s]}; do ready "$s-http-backend" "${HTTP_BPID[$s]}" "$a" tcp; done; done
for s in $UDP; do for a in ${UDP_BACK[$s]}; do ready "$s-udp-backend" "${UDP_BPID[$s]}" "$a" udp; done; done

stop_group() {
  local p
  for p in "${GROUP[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${GROUP[@]}"; do wait "$p" 2>/dev/null || true; done
  GROUP=()
}

# start_ours PROTO PORT BEFORE_PORT BACKENDS W: netpulse (and BASELINE, as "before") balancing
# PROTO on $PX:PORT (BEFORE_PORT) to BACKENDS; fills the caller's pid[] and port[].
start_ours() {
  local proto=$1 at=$2 before_at=$3 list=$4 w=$5
  start_proxy netpulse "$BIN" balance "$proto" --listen "$PX:$at" --backend "$list" --workers "$w" --quiet
  GROUP+=("$STARTED"); pid[netpulse]=$STARTED; port[netpulse]=$PX:$at
  if [ -n "${BASELINE:-}" ]; then
    start_proxy before "$BASELINE" balance "$proto" --listen "$PX:$before_at" --backend "$list" --workers "$w" --quiet
    GROUP+=("$STARTED"); pid[before]=$STARTED; port[before]=$PX:$before_at
  fi
}

# ---------------------------------------------------------------- HTTP: one setup, W workers
http_group() {
  local setup=$1 w=$2 back=${HTTP_BACK[$1]} bpid=${HTTP_BPID[$1]}
  local list; list=$(tr ' ' ',' <<<"$back")
  declare -A port pid
  start_ours http 9000 9030 "$list" "$w"
  {
    echo "worker_processes $w; daemon off; pid $TMP/nginx.pid; error_log $TMP/nginx.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off;"
    # shellcheck disable=SC2086 # $back is a list of addresses
    echo "  upstream b { $(printf 'server %s; ' $back)keepalive $CONNS; }"
    echo "  server { listen $PX:9010 reuseport; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
    echo "}"
  } >"$TMP/nginx-http.conf"
  start_proxy nginx nginx -c "$TMP/nginx-http.conf" -p "$TMP"
  GROUP+=("$STARTED"); pid[nginx]=$STARTED; port[nginx]=$PX:9010
  {
    printf 'global\n  nbthread %s\n' "$w"
    printf 'defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n'
    [ -z "${HAPROXY_REUSE:-}" ] || printf '  http-reuse %s\n' "$HAPROXY_REUSE"
    printf 'frontend f\n  bind %s:9020\n  default_backend b\n' $PX
    printf 'backend b\n  balance roundrobin\n'
    local i=1 a
    for a in $back; do printf '  server s%d %s check\n' $i "$a"; i=$((i + 1)); done
  } >"$TMP/haproxy.cfg"
  start_proxy haproxy haproxy -f "$TMP/haproxy.cfg"
  GROUP+=("$STARTED"); pid[haproxy]=$STARTED; port[haproxy]=$PX:9020
  pid[direct]=-; port[direct]=${back%% *}
  local cases=(direct netpulse nginx haproxy ${BASELINE:+before}) c
  for c in "${cases[@]}"; do ready "$c" "${pid[$c]}" "${port[$c]}" tcp; done
  sleep 1 # health checks settle (netpulse checks every 1 s; every backend starts up)
  limit load load # the warm-up within the load's limit too, as the runs it warms up
  for c in "${cases[@]}"; do
    "${LIM[@]}" wrk -t"$w" -c"$CONNS" -d1s "http://${port[$c]}/" >/dev/null || { echo "peers: $c failed its warm-up" >&2; cat "$TMP/$c.err" >&2 2>/dev/null; exit 1; }
  done
  for r in $(seq 0 $((ROUNDS - 1))); do
    for c in $(rotated "$r" "${cases[@]}"); do
      measure http "$setup" "$w" "$c" "${pid[$c]}" "$bpid" -- \
        wrk -t"$w" -c"$CONNS" -d"${SECS}s" --latency "http://${port[$c]}/" >>"$TMP/rows"
    done
  done
  stop_group
}

# The cases in round R (from 0), rotated by R: no contender always runs first, or right after the
# same other one.
rotated() {
  local r=$1 i
  shift
  for ((i = 0; i < $#; i++)); do
    local k=$(((i + r) % $# + 1))
    echo "${!k}"
  done
}

# ---------------------------------------------------------------- UDP: one setup, W workers
udp_group() {
  local setup=$1 w=$2 back=${UDP_BACK[$1]} bpid=${UDP_BPID[$1]}
  local list resp=${NGINX_UDP_RESPONSES-1}; list=$(tr ' ' ',' <<<"$back")
  declare -A port pid
  start_ours udp 9888 9890 "$list" "$w"
  {
    echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
    echo "worker_processes $w; daemon off; pid $TMP/nginx.pid; error_log $TMP/nginx.log warn;"
    echo "events { worker_connections 4096; }"
    echo "stream {"
    # shellcheck disable=SC2086 # $back is a list of addresses
    echo "  upstream u { $(printf 'server %s; ' $back)}"
    echo "  server { listen $PX:9889 udp reuseport; proxy_pass u; ${resp:+proxy_responses $resp; }proxy_timeout 1s; }"
    echo "}"
  } >"$TMP/nginx-udp.conf"
  start_proxy nginx nginx -c "$TMP/nginx-udp.conf" -p "$TMP"
  GROUP+=("$STARTED"); pid[nginx]=$STARTED; port[nginx]=$PX:9889
  pid[direct]=-; port[direct]=${back%% *}
  local cases=(direct netpulse nginx ${BASELINE:+before}) c
  for c in "${cases[@]}"; do ready "$c" "${pid[$c]}" "${port[$c]}" udp; done
  sleep 1
  limit load load
  for c in "${cases[@]}"; do "${LIM[@]}" "$LOAD" "${port[$c]}" "$FLOWS" 1 >/dev/null; done
  for r in $(seq 0 $((ROUNDS - 1))); do
    for c in $(rotated "$r" "${cases[@]}"); do
      measure udp "$setup" "$w" "$c" "${pid[$c]}" "$bpid" -- "$LOAD" "${port[$c]}" "$FLOWS" "$SECS" >>"$TMP/rows"
    done
  done
  stop_group
}

{
  echo "netpulse bench/peers.sh: $(git describe --always --dirty 2>/dev/null || echo '?'), $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ -n "$EACH_CPUS" ]; then
    echo "  every process (proxy, backends, load) limited to $EACH_CPUS of a core, each in its own cgroup (v$CGROUP_V CPU quota: ${QUOTA} µs per 10 ms)"
  elif [ -n "$PROXY_CPUS" ]; then
    echo "  every proxy limited to $PROXY_CPUS of a core (cgroup v$CGROUP_V CPU quota: ${QUOTA} µs per 10 ms)"
  fi
  echo "  $ROUNDS rounds x ${SECS}s per case, medians; $(nginx -v 2>&1 | sed 's/.*version: //'), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}'); wrk -t<W> -c$CONNS, udp_load $FLOWS flows"
} >"$TMP/head"
for w in $WORKERS; do
  for s in $HTTP; do http_group "$s" "$w"; done
  for s in $UDP; do udp_group "$s" "$w"; done
done
echo "  load at the end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$TMP/head"
cat "$TMP/head"

LIMIT_CPUS=$LIMIT_CPUS EACH_CPUS=$EACH_CPUS BACKEND_WORKERS=$BACKEND_WORKERS TICK=$TICK python3 - "$TMP/rows" <<'PY'
import os, sys, statistics as st
tick = float(os.environ["TICK"])
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    proto, setup, w, case = r[0], r[1], int(r[2]), r[3]
    n, rate, p99, err = int(r[4]), float(r[5]), float(r[6]), int(r[7])
    pt, bt, lt, mt, wall, ut = (float(x) for x in r[8:14])
    d = dict(n=n, rate=rate, p99=p99, err=err,
             pus=pt / tick * 1e6 / n if n else float("nan"), pcpu=pt / tick / wall * 100,
             uus=ut / tick * 1e6 / n if n else float("nan"),
             bus=bt / tick * 1e6 / n if n else float("nan"), bcpu=bt / tick / wall * 100,
             lcpu=lt / tick / wall * 100, ocpu=max(0.0, (mt - pt - bt - lt) / tick / wall * 100))
    groups.setdefault((proto, setup, w), {}).setdefault(case, []).append(d)

def med(runs, k):
    v = [x[k] for x in runs if x[k] == x[k]]
    return st.median(v) if v else float("nan")

BW = int(os.environ["BACKEND_WORKERS"])
LIMIT = float(os.environ["LIMIT_CPUS"]) if os.environ.get("LIMIT_CPUS") else None
EACH = bool(os.environ.get("EACH_CPUS"))
backend_cores = {("http", "ours"): 1, ("http", "nginx"): BW, ("udp", "ours"): 1, ("udp", "inetd"): 1}
backend_name = {("http", "ours"): "netpulse serve http (1 thread)",
                ("http", "nginx"): f"nginx return 200, default keep-alive limits ({BW} worker)",
                ("udp", "ours"): "netpulse serve udp (1 thread)",
                ("udp", "inetd"): "inetutils-inetd echo dgram (1 process)"}
summary = {"http": [], "udp": []}
for (proto, setup, w), cases in groups.items():
    m = {c: {k: med(runs, k) for k in runs[0]} for c, runs in cases.items()}
    for c, runs in cases.items():
        m[c]["err"] = sum(x["err"] for x in runs)
    http = proto == "http"
    unit = "req/s" if http else "dgram/s"
    cols = [(unit, "", 8, lambda c, x: f"{x['rate']:.0f}")]
    if http:
        cols.append(("p99", "ms", 7, lambda c, x: "-" if x["p99"] != x["p99"] else f"{x['p99']:.2f}"))
    cols += [("proxy", "µs", 7, lambda c, x: "-" if c == "direct" else f"{x['pus']:.2f}"),
             ("of it", "user", 6, lambda c, x: "-" if c == "direct" else f"{x['uus']:.2f}"),
             ("proxy", "%core", 6, lambda c, x: "-" if c == "direct" else f"{x['pcpu']:.0f}"),
             ("backend", "µs", 8, lambda c, x: f"{x['bus']:.2f}"),
             ("backend", "%core", 8, lambda c, x: f"{x['bcpu']:.0f}"),
             ("load", "%core", 6, lambda c, x: f"{x['lcpu']:.0f}"),
             ("other", "%core", 6, lambda c, x: f"{x['ocpu']:.0f}"),
             ("errors" if http else "lost", "", 7, lambda c, x: str(x["err"]))]
    print()
    print(f"{proto.upper()}  backends: {backend_name[(proto, setup)]}; {w} worker(s) per proxy"
          f" (µs: CPU per {'request' if http else 'datagram answered'})")
    print("  " + " " * 9 + "".join(f" {h:>{n}}" for h, _, n, _ in cols))
    print("  " + " " * 9 + "".join(f" {h:>{n}}" for _, h, n, _ in cols))
    flags = []
    lcores = w if http else 1
    lcores = min(lcores, LIMIT) if EACH else lcores
    for c, x in m.items():
        print(f"  {c:9}" + "".join(f" {f(c, x):>{n}}" for _, _, n, f in cols))
        bcores = min(backend_cores[(proto, setup)], LIMIT) if EACH else backend_cores[(proto, setup)]
        if x["bcpu"] >= 90 * bcores:
            flags.append(f"{c}: the backend at {x['bcpu']:.0f} % of its {bcores:g} core(s): backend-bound, this row measures the backend")
        pcores = min(w, LIMIT) if LIMIT else w
        if c != "direct" and x["pcpu"] >= 90 * pcores:
            flags.append(f"{c}: proxy at {x['pcpu']:.0f} % of its {pcores:g} core(s) (proxy-bound)")
        if x["lcpu"] >= 90 * lcores:
            flags.append(f"{c}: load generator at {x['lcpu']:.0f} % of its {lcores:g} core(s): load-bound")
        if x["err"]:
            flags.append(f"{c}: {x['err']} {'errors (non-2xx or socket)' if proto == 'http' else 'datagrams unanswered'}")
    np = m.get("netpulse")
    if proto == "http" and np:
        peers = [c for c in ("nginx", "haproxy") if c in m]
        cpu_best = min(peers, key=lambda c: m[c]["pus"])
        rate_best = max(peers, key=lambda c: m[c]["rate"])
        rc, rr = np["pus"] / m[cpu_best]["pus"], np["rate"] / m[rate_best]["rate"]
        p99s = ", ".join(f"{c} {m[c]['p99']:.2f}" for c in peers)
        print(f"  netpulse / best of nginx, haproxy: CPU per request {rc:.2f}x ({cpu_best}; target <= 0.80), "
              f"req/s {rr:.2f}x ({rate_best}; target >= 1.20), p99 {np['p99']:.2f} ms vs {p99s}")
        summary["http"].append((setup, w, m, rc, rr))
    if proto == "udp" and np:
        rn, rd = np["rate"] / m["nginx"]["rate"], np["rate"] / m["direct"]["rate"]
        print(f"  netpulse / nginx = {rn:.2f}x (target >= 2), netpulse / direct = {rd:.2f}x (target >= 0.5); "
              f"CPU per datagram {np['pus']:.2f} vs nginx {m['nginx']['pus']:.2f} µs ({np['pus'] / m['nginx']['pus']:.2f}x)")
        summary["udp"].append((setup, w, m, rn, rd))
    if len(next(iter(cases.values()))) > 1:
        spread = ", ".join(f"{c} {min(r['pus'] for r in runs):.2f}-{max(r['pus'] for r in runs):.2f}"
                           for c, runs in cases.items() if c != "direct")
        print(f"  proxy µs over the rounds (min-max): {spread}")
    if "before" in m and np:
        print(f"  netpulse / before: CPU {np['pus'] / m['before']['pus']:.2f}x, rate {np['rate'] / m['before']['rate']:.2f}x")
    for f in flags:
        print(f"  ! {f}")

others = [d["ocpu"] for g in groups.values() for runs in g.values() for d in runs]
print()
what = "Other processes on the machine" if LIMIT is None else "Work outside every measured process (other processes; kernel work no quota bounds)"
print(f"{what} took {st.median(others):.0f} % of a core (median; {min(others):.0f}-{max(others):.0f}) during the runs.")
print("Where a row's %core columns add up to all the cores, the machine is saturated and req/s is shared out")
print("among everyone's CPU per request: compare req/s within a group, µs (CPU per request) across groups.")

def fmt(m, c, k, f):
    return format(m[c][k], f) if c in m else "-"
if summary["http"]:
    print()
    print("| HTTP backends | W | proxy µs/req: netpulse / nginx / haproxy | ÷ best (≤ 0.8) | req/s: netpulse / nginx / haproxy | ÷ best (≥ 1.2) | p99 ms: netpulse / nginx / haproxy |")
    print("|---|---|---|---|---|---|---|")
    for setup, w, m, rc, rr in sorted(summary["http"], key=lambda s: (s[0] != "ours", s[1])):
        print(f"| {setup} | {w} | {fmt(m,'netpulse','pus','.2f')} / {fmt(m,'nginx','pus','.2f')} / {fmt(m,'haproxy','pus','.2f')} | **{rc:.2f}x** "
              f"| {fmt(m,'netpulse','rate','.0f')} / {fmt(m,'nginx','rate','.0f')} / {fmt(m,'haproxy','rate','.0f')} | **{rr:.2f}x** "
              f"| {fmt(m,'netpulse','p99','.2f')} / {fmt(m,'nginx','p99','.2f')} / {fmt(m,'haproxy','p99','.2f')} |")
if summary["udp"]:
    print()
    print("| UDP backends | W | dgram/s: netpulse / nginx / direct | ÷ nginx (≥ 2) | ÷ direct (≥ 0.5) | proxy µs/dgram: netpulse / nginx |")
    print("|---|---|---|---|---|---|")
    for setup, w, m, rn, rd in sorted(summary["udp"], key=lambda s: (s[0] != "ours", s[1])):
        print(f"| {setup} | {w} | {fmt(m,'netpulse','rate','.0f')} / {fmt(m,'nginx','rate','.0f')} / {fmt(m,'direct','rate','.0f')} | **{rn:.2f}x** | **{rd:.2f}x** "
              f"| {fmt(m,'netpulse','pus','.2f')} / {fmt(m,'nginx','pus','.2f')} |")
PY
if [ -e "$TMP/incomplete" ]; then
  echo "peers: some cases got no answers (see above): their rows are not figures" >&2
  exit 1
fi
