#!/usr/bin/env bash
# Where a proxy's CPU goes under load: strangle (routing only) and nginx side by side, each
# pinned to CPU 0, under the same closed-loop load as the load benchmark (wrk -t1 -c50 on CPU 1,
# nginx backend on CPU 1). For each: the top functions by self time (perf, sampled at 999 Hz),
# time in the kernel vs user space, the syscalls per request (strace -c over every thread), and
# the thread count. Loopback only.
#
# Usage: benches/profile.sh [OUTDIR]   (DURATION=10 by default; needs perf, strace, wrk, nginx)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
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

profile strangle "$ROUTING" "$STRANGLE_PID" | tee "$OUT/summary.txt"
profile nginx "$NGINX" "$NGINX_WORKER" | tee -a "$OUT/summary.txt"
echo "written to $OUT"
