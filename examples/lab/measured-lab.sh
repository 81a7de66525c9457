#!/bin/sh
# The measured strategy's lab: three hosts, each a network namespace joined to this one by a
# veth pair, each with an HTTP backend and a UDP ping server, faults injected in user space (no
# netem):
#
#   10.199.35.2  fast                 HTTP :8001  UDP :2526
#   10.199.36.2  lossy                HTTP :8002 loses 20 % of the monitor's probes (users'
#                                     requests are answered); UDP :2527 drops 20 % of datagrams
#   10.199.37.2  slow, until `fast`   HTTP :8003 and UDP :2528 answer 20 ms late
#
# The backends are `netpulse serve http` and `netpulse serve udp` (host 36's with `--loss 0.2`)
# on the namespace's loopback, behind examples/lab/relay.py on the veth address, which holds the
# answers back (host 37: for the ms in $RUN/slow.delay, which `fast` sets to 0 and `slow` to 20)
# or leaves HTTP probes unanswered (host 36).
#
#   sudo sh examples/lab/measured-lab.sh up       # build it (tears down a leftover one first)
#   netpulse up --config examples/measured.toml   # the balancers over it, and the monitor
#   sudo sh examples/lab/measured-lab.sh fast     # the slow backend is fast again
#   sudo sh examples/lab/measured-lab.sh slow     # ... and slow again
#   sudo sh examples/lab/measured-lab.sh down     # stop the backends, remove the namespaces
#
# Needs root, iproute2 and python3. NETPULSE names the binary (default: netpulse on the PATH);
# RUN the directory for pid files, logs and the delay's control file (default /run/netpulse-lab).
set -eu
NETPULSE=${NETPULSE:-netpulse}
RUN=${RUN:-/run/netpulse-lab}
HERE=$(cd "$(dirname "$0")" && pwd)
HOSTS="35 36 37"

# The backend on host N: its port, and what its relay does to it.
port() { echo $((8001 + $1 - 35)); }
faults() {
    case $1 in
    36) echo "--drop-probes 0.2 --seed 36" ;;
    37) echo "--delay 20 --control $RUN/slow.delay" ;;
    *) echo "" ;;
    esac
}

down() {
    for pid in "$RUN"/*.pid; do
        [ -f "$pid" ] || continue
        kill "$(cat "$pid")" 2>/dev/null || true
        rm -f "$pid"
    done
    for n in $HOSTS; do
        ip netns del "netpulse-lab$n" 2>/dev/null || true
        ip link del "nplab$n" 2>/dev/null || true
    done
}

# Starts `ip netns exec` of host N running the rest, logging to $RUN/NAME.log.
start() {
    n=$1 name=$2
    shift 2
    ip netns exec "netpulse-lab$n" "$@" >"$RUN/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

# Waits (at most 10 s) until host N's relay accepts connections.
wait_for() {
    n=$1 tries=0
    until "$NETPULSE" ping "10.199.$n.2" --tcp "$(port "$n")" -c 1 -W 0.2 >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ $tries -ge 50 ]; then
            echo "measured-lab: host $n does not answer on 10.199.$n.2:$(port "$n"); see $RUN/*.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

up() {
    down
    mkdir -p "$RUN"
    echo 20 >"$RUN/slow.delay"
    for n in $HOSTS; do
        ns=netpulse-lab$n
        ip netns add "$ns"
        ip link add "nplab$n" type veth peer name "nplab$n-in"
        ip link set "nplab$n-in" netns "$ns"
        ip addr add "10.199.$n.1/24" dev "nplab$n"
        ip link set "nplab$n" up
        ip netns exec "$ns" sh -c "ip addr add 10.199.$n.2/24 dev nplab$n-in && ip link set nplab$n-in up && ip link set lo up"
        start "$n" "serve$n" "$NETPULSE" serve http --bind 127.0.0.1 --ports "$(port "$n")" --quiet
        # shellcheck disable=SC2046 # the faults are words
        start "$n" "relay$n" python3 "$HERE/relay.py" "10.199.$n.2:$(port "$n")" "127.0.0.1:$(port "$n")" $(faults "$n")
    done
    for n in $HOSTS; do
        udp=$((2526 + n - 35))
        loss=""
        [ "$n" = 36 ] && loss="--loss 0.2 --seed 36"
        # shellcheck disable=SC2086 # the loss is words
        start "$n" "udp$n" "$NETPULSE" serve udp --bind 127.0.0.1 --ports "$udp" $loss --quiet
        delay=""
        [ "$n" = 37 ] && delay="--delay 20 --control $RUN/slow.delay"
        # shellcheck disable=SC2086 # the delay is words
        start "$n" "udprelay$n" python3 "$HERE/relay.py" --udp "10.199.$n.2:$udp" "127.0.0.1:$udp" $delay
    done
    for n in $HOSTS; do wait_for "$n"; done
    echo "measured-lab is up: fast 10.199.35.2 (:8001, :2526), lossy 10.199.36.2 (:8002, :2527)," \
        "slow 10.199.37.2 (:8003, :2528; +20 ms)"
}

case ${1:-} in
up) up ;;
down) down ;;
fast) echo 0 >"$RUN/slow.delay" && echo "measured-lab: 10.199.37.2 answers at once" ;;
slow) echo 20 >"$RUN/slow.delay" && echo "measured-lab: 10.199.37.2 answers 20 ms late" ;;
*)
    echo "usage: measured-lab.sh up|fast|slow|down" >&2
    exit 2
    ;;
esac
