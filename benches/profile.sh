#!/usr/bin/env bash
# Where a proxy's CPU goes under load: strangle (routing only) and nginx side by side, each
# pinned to CPU 0, under the same closed-loop load as the load benchmark (wrk -t1 -c50 on CPU 1,
# nginx backend on CPU 1). For each: the top functions by self time (perf, sampled at 999 Hz),
# time in the kernel vs user space, the syscalls per request (strace -c over every thread), and
# the thread count. Then the scheduler's view of the tail: at a fixed rate (RATE, open loop,
# oha), what else ran on CPU 0 and how long each of the proxy's threads waited to run
# (`perf sched`), with the threads' wake-ups while idle. Loopback only.
#
# Usage: benches/profile.sh [OUTDIR]   (DURATION=10 RATE=3000 by default; needs perf, strace,
#   wrk, oha, nginx)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
RATE=${RATE:-3000}
OUT=${1:-/tmp/strangle-profile}
STRANGLE_BIN=${STRANGLE_BIN:-target/release/strangle}
mkdir -p "$OUT"
# shellcheck source=benches/common.sh
. benches/common.sh

BACKEND=$(free_port); NGINX=$(free_port); ROUTING=$(free_port)
start_backend "$BACKEND"
start_nginx_proxy "$NGINX" "$BACKEND"
routing_config "$ROUTING" "127.0.0.1:$(free_port)" "$BACKEND" > "$WORK/routing.toml"
taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/routing.toml" 2>"$WORK/routing.log" & PIDS+=($!)
STRANGLE_PID=$!
for p in $BACKEND $NGINX $ROUTING; do wait_port "$p"; done
# nginx's master forks the worker that serves: profile the worker.
sleep 0.5
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | head -1)

load() { taskset -c 1 wrk -t1 -c50 -d"$2"s -H 'x-user-id: user-1' "http://127.0.0.1:$1/bookings/42" | awk '/Requests\/sec/ {print $2}'; }

profile() {
  local name=$1 port=$2 pid=$3
  load "$port" 2 >/dev/null
  perf record -q -F 999 -p "$pid" -o "$OUT/$name.perf.data" -- sleep "$DURATION" 2>/dev/null &
  local perf_pid=$!
  local rps; rps=$(load "$port" "$DURATION")
  wait "$perf_pid" || true
  perf report -i "$OUT/$name.perf.data" --stdio --no-children --sort symbol --percent-limit 1 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -25 > "$OUT/$name.top.txt"
  perf report -i "$OUT/$name.perf.data" --stdio --no-children --sort dso 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -8 > "$OUT/$name.dso.txt"
  strace -c -f -q -p "$pid" -o "$OUT/$name.strace.txt" &
  local strace_pid=$!
  sleep 0.5
  local srps; srps=$(load "$port" 5)
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
  local threads; threads=$(ls "/proc/$pid/task" | wc -l)
  echo "== $name: $rps requests/s under perf, $srps under strace (5 s), $threads threads"
  echo "-- top functions by self time:"; cat "$OUT/$name.top.txt"
  echo "-- by object:"; cat "$OUT/$name.dso.txt"
  echo "-- syscalls (5 s under strace, $srps requests/s):"; head -14 "$OUT/$name.strace.txt"
}

# The scheduler's view at a fixed rate: per thread of the proxy, how often it ran, its longest
# and average wait between being woken and running (perf sched latency), and every other task
# that took CPU 0 meanwhile; then the proxy's context switches over 5 idle seconds.
scheduling() {
  local name=$1 port=$2 pid=$3
  perf sched record -q -C 0 -o "$OUT/$name.sched.data" -- sleep 5 >/dev/null 2>&1 &
  local perf_pid=$!
  taskset -c 1 oha --no-tui -z 5s -q "$RATE" -c 50 -H 'x-user-id: user-1' \
    "http://127.0.0.1:$port/bookings/42" >/dev/null 2>&1 || true
  wait "$perf_pid" || true
  echo "== $name at $RATE requests/s: scheduling on CPU 0 (perf sched latency, by longest wait)"
  perf sched latency -i "$OUT/$name.sched.data" --sort max 2>/dev/null \
    | grep -E '^ +[A-Za-z|-]|Task' | head -14
  local before after
  before=$(idle_switches "$pid"); sleep 5; after=$(idle_switches "$pid")
  echo "-- context switches of all its threads over 5 idle seconds: $((after - before))"
}

# The process's voluntary and involuntary context switches so far, all threads.
idle_switches() {
  cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'
}

profile strangle "$ROUTING" "$STRANGLE_PID" | tee "$OUT/summary.txt"
profile nginx "$NGINX" "$NGINX_WORKER" | tee -a "$OUT/summary.txt"
scheduling strangle "$ROUTING" "$STRANGLE_PID" | tee -a "$OUT/summary.txt"
scheduling nginx "$NGINX" "$NGINX_WORKER" | tee -a "$OUT/summary.txt"
echo "written to $OUT"
