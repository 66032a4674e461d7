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
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on :$1" >&2; return 1; }

BACKEND=$(free_port); NGINX=$(free_port); ROUTING=$(free_port)
mkdir -p "$WORK/backend" "$WORK/nginx"
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello from the monolith\n"; } }
}
CONF
taskset -c 1 nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" & PIDS+=($!)
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)
cat > "$WORK/routing.toml" <<CONF
[server]
listen = ["127.0.0.1:$ROUTING"]
threads = 1
default = "monolith"
[admin]
listen = "127.0.0.1:$(free_port)"
[log]
access = "off"
level = "warn"
[upstreams.monolith]
addresses = ["127.0.0.1:$BACKEND"]
[upstreams.new]
addresses = ["127.0.0.1:$BACKEND"]
[[routes]]
id = "bookings"
path = "/bookings"
legacy = "monolith"
new = "new"
shift = "25%"
sticky = "header:x-user-id"
CONF
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
