#!/bin/sh
# What the terminal dashboard costs: `netpulse up` over 10 targets at a 1 s interval, run in
# tmux with the dashboard and with --no-tui, CPU (utime + stime from /proc) over DUR seconds,
# for the whole process and for the dashboard's threads (netpulse-tui*); then `netpulse
# monitor` over 1,000 targets with the dashboard: its threads' CPU per report is the time to
# take a report and draw a frame.
#   BIN=target/release/netpulse DUR=30 sh bench/tui-cpu.sh
set -eu
BIN=${BIN:-target/release/netpulse}
DUR=${DUR:-30}
INTERVAL=${INTERVAL:-1s}
dir=$(mktemp -d)
trap 'tmux -L netpulse-cpu kill-server 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/lab.toml" <<TOML
[serve.http]
bind = "127.0.16.1"
ports = "18001-18004"
[serve.udp]
bind = "127.0.16.1"
ports = "12526-12528"
[[balance.http]]
name = "web"
listen = "127.0.16.1:18000"
backends = ["127.0.16.1:18001", "127.0.16.1:18002", "127.0.16.1:18003", "127.0.16.1:18004"]
[[balance.udp]]
name = "ping"
listen = "127.0.16.1:18888"
backends = ["127.0.16.1:12526", "127.0.16.1:12527", "127.0.16.1:12528"]
[monitor]
interval = "$INTERVAL"
targets = ["tcp://127.0.16.1:18001", "tcp://127.0.16.1:18002", "tcp://127.0.16.1:18003"]
TOML
hz=$(getconf CLK_TCK)
ticks() { # utime + stime of $1 (a /proc/PID or /proc/PID/task/TID directory)
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$1/stat"
}
tui_ticks() {
    t=0
    for task in /proc/"$1"/task/*; do
        case "$(cat "$task/comm")" in netpulse-tui*) t=$((t + $(ticks "$task"))) ;; esac
    done
    echo "$t"
}
# Runs "$@" in a 120x40 tmux window for DUR seconds; prints the process's and the dashboard
# threads' CPU ticks.
measure() {
    tmux -L netpulse-cpu -f /dev/null new-session -d -x 120 -y 40 "exec $*"
    sleep 3
    pid=$(tmux -L netpulse-cpu list-panes -F '#{pane_pid}')
    a=$(ticks /proc/"$pid"); ta=$(tui_ticks "$pid")
    sleep "$DUR"
    b=$(ticks /proc/"$pid"); tb=$(tui_ticks "$pid")
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    tmux -L netpulse-cpu kill-server 2>/dev/null || true
    echo "$((b - a)) $((tb - ta))"
}
for mode in dashboard --no-tui; do
    flag=""; [ "$mode" = --no-tui ] && flag=--no-tui
    set -- $(measure "$BIN" up -c "$dir/lab.toml" $flag)
    awk -v m="$mode" -v d="$1" -v t="$2" -v hz="$hz" -v s="$DUR" 'BEGIN {
        printf "up, 10 targets, %-9s: process %.2f%% of a core, dashboard threads %.2f%%\n", m, d / hz / s * 100, t / hz / s * 100 }'
done
# (Too long a command line for tmux: a script that execs it.)
echo "exec $BIN monitor --interval 1s $(seq 20000 20999 | sed 's|^|tcp://127.0.16.5:|' | tr '\n' ' ')" > "$dir/monitor.sh"
set -- $(measure sh "$dir/monitor.sh")
awk -v d="$1" -v t="$2" -v hz="$hz" -v s="$DUR" 'BEGIN {
    printf "monitor, 1000 targets: process %.2f%% of a core, dashboard threads %.2f%% = %.1f ms per report\n",
        d / hz / s * 100, t / hz / s * 100, t / hz / s * 1000 }'
