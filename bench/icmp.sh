#!/usr/bin/env bash
# ICMP accuracy and scale on loopback, side by side with iputils ping.
#
#   bench/icmp.sh            (needs root for the raw socket and iputils' 10 ms interval:
#                             apt-get install -y iputils-ping)
#
# 1. Loopback RTT: 5 interleaved rounds of 200 echoes at 10 ms from iputils `ping` and from
#    `netpulse ping`; the median of all per-reply times of each.
# 2. Scale: `netpulse monitor` over 10,000 targets (127.1.x.y, all answered by loopback) at a
#    1 s interval for 10 rounds, JSON report every second; CPU time from /proc, loss from the
#    last report.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v ping >/dev/null || { echo "bench: iputils ping is missing (apt-get install -y iputils-ping)" >&2; exit 2; }
cargo build --release --quiet --bin netpulse
BIN=target/release/netpulse
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "netpulse icmp bench: $(nproc) cores, $(date -u +%FT%TZ)"
for r in 1 2 3 4 5; do
  ping -n -c 200 -i 0.01 127.0.0.1 | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' >>"$TMP/iputils"
  "$BIN" ping -c 200 -i 0.01 127.0.0.1 | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' >>"$TMP/netpulse"
done
python3 - "$TMP" <<'PY'
import statistics, sys
d = sys.argv[1]
med = {}
for name in ("iputils", "netpulse"):
    v = [float(x) for x in open(f"{d}/{name}")]
    med[name] = statistics.median(v)
    print(f"  loopback RTT {name:<9} median {med[name]*1000:7.1f} us over {len(v)} replies")
print(f"  difference {abs(med['netpulse'] - med['iputils'])*1000:.1f} us (goal: within 20 us)")
PY

TARGETS=$(python3 -c "print(' '.join(f'127.1.{i//250}.{i%250+1}' for i in range(10000)))")
# shellcheck disable=SC2086
/usr/bin/time -f "%U %S %e" -o "$TMP/time" "$BIN" monitor $TARGETS --interval 1s --count 10 --window 10 --format json >"$TMP/10k.json"
python3 - "$TMP" <<'PY'
import json, sys
d = sys.argv[1]
user, system, wall = map(float, open(f"{d}/time").read().split()[-3:])
lines = open(f"{d}/10k.json").read().splitlines()
t = json.loads(lines[-1])["targets"]
sent = sum(x["sent"] for x in t); got = sum(x["received"] for x in t)
print(f"  10,000 targets x {len(lines)} rounds: {sent} sent, {got} received, {100*(sent-got)/sent:.3f}% loss")
print(f"  CPU {user+system:.2f} s ({user:.2f} user + {system:.2f} sys) over {wall:.2f} s = {100*(user+system)/wall:.1f}% of one core (goal: <= 20%)")
PY
