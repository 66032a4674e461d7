#!/usr/bin/env bash
# The load benchmark: the same tiny backend reached directly, through nginx, through HAProxy,
# through strangle with routing only, and through strangle with the full pipeline (JWT with the
# token cache, sticky split, rate limit, max-in-flight, metrics, access log to a file).
# Each proxy gets one worker pinned to CPU 0; wrk and the backend share CPU 1. Runs are
# interleaved (every target once per round), the warm-up is discarded, and the table reports
# medians over ROUNDS rounds: requests/s (closed loop) and the proxy's CPU time per request
# (user+system from /proc). Loopback only.
#
# Usage: benches/load.sh [OUT.md]    (ROUNDS=3 DURATION=10 CONNECTIONS=50 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
OUT=${1:-}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on :$1" >&2; return 1; }

BACKEND=$(free_port); NGINX=$(free_port); HAPROXY=$(free_port); ROUTING=$(free_port); FULL=$(free_port)
ISSUER=$(free_port)

# The backend: nginx answering 200 with a small body, on CPU 1.
mkdir -p "$WORK/backend"
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

# nginx as the proxy.
mkdir -p "$WORK/nginx"
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

# HAProxy as the proxy.
cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$HAPROXY
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$BACKEND
CONF
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db & PIDS+=($!)

# strangle with routing only: a route with a sticky split, access log off.
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
taskset -c 0 target/release/strangle serve -c "$WORK/routing.toml" 2>"$WORK/routing.log" & PIDS+=($!)

# strangle with the full pipeline: JWT (static key from the test issuer, token cache on), sticky
# split by claim, a rate limit far above the load, max-in-flight, metrics, access log to a file.
python3 tests/fixtures/jwks_issuer.py "$ISSUER" > "$WORK/issuer.out" & PIDS+=($!)
wait_port "$ISSUER"
curl -s "http://127.0.0.1:$ISSUER/public/rsa-1.pem" > "$WORK/rsa-1.pem"
NOW=$(date +%s)
TOKEN=$(curl -s -X POST "http://127.0.0.1:$ISSUER/mint" -d "{\"claims\":{\"iss\":\"https://issuer.test/\",\"aud\":\"bookings\",\"sub\":\"user-1\",\"exp\":$((NOW+7200))}}")
cat > "$WORK/full.toml" <<CONF
[server]
listen = ["127.0.0.1:$FULL"]
threads = 1
default = "monolith"
[admin]
listen = "127.0.0.1:$(free_port)"
[log]
access = "$WORK/access.log"
level = "warn"
[auth.users]
keys = ["$WORK/rsa-1.pem"]
issuer = "https://issuer.test/"
audiences = ["bookings"]
algorithms = ["RS256"]
forward-claims = { sub = "x-user-id" }
[upstreams.monolith]
addresses = ["127.0.0.1:$BACKEND"]
max-in-flight = 1000
[upstreams.new]
addresses = ["127.0.0.1:$BACKEND"]
max-in-flight = 1000
[[routes]]
id = "bookings"
path = "/bookings"
legacy = "monolith"
new = "new"
shift = "25%"
sticky = "jwt:sub"
auth = "users"
rate-limit = { requests = 10000000, per = "1s", burst = 10000000, key = "jwt:sub" }
CONF
taskset -c 0 target/release/strangle serve -c "$WORK/full.toml" 2>"$WORK/full.log" & PIDS+=($!)

for p in $BACKEND $NGINX $HAPROXY $ROUTING $FULL; do wait_port "$p"; done

pid_on() { # the PID listening on a port
  ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}
# CPU ticks (user + system) of a process and its children (nginx's worker does nginx's work).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
TICK=$(getconf CLK_TCK)

declare -A PORT=([direct]=$BACKEND [nginx]=$NGINX [haproxy]=$HAPROXY [strangle-routing]=$ROUTING [strangle-full]=$FULL)
ORDER=(direct nginx haproxy strangle-routing strangle-full)

run() { # target seconds -> "rps cpu_us_per_request"
  local target=$1 secs=$2 port=${PORT[$1]} pid before after out rps reqs
  local headers=(-H "x-user-id: user-1")
  [ "$target" = strangle-full ] && headers+=(-H "Authorization: Bearer $TOKEN")
  pid=$( [ "$target" = direct ] && echo "" || pid_on "$port")
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${secs}s" "${headers[@]}" "http://127.0.0.1:$port/bookings/42")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  if echo "$out" | grep -q "Non-2xx"; then echo "$target: non-2xx responses" >&2; echo "$out" >&2; fi
  if [ -n "$pid" ]; then
    after=$(cpu_ticks "$pid")
    echo "$rps $(python3 -c "print(round(($after-$before)/$TICK/$reqs*1e6, 2))")"
  else
    echo "$rps -"
  fi
}

echo "warm-up" >&2
for t in "${ORDER[@]}"; do run "$t" 2 >/dev/null; done
declare -A RPS CPU
for r in $(seq "$ROUNDS"); do
  for t in "${ORDER[@]}"; do
    read -r rps cpu < <(run "$t" "$DURATION")
    echo "round $r $t: $rps req/s, $cpu us CPU/request" >&2
    RPS[$t]+="$rps "; CPU[$t]+="$cpu "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | grep -v '^-$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
table=$(
  echo "| target | requests/s (median) | vs nginx | vs HAProxy | proxy CPU µs/request | vs nginx |"
  echo "|---|---|---|---|---|---|"
  n_rps=$(echo "${RPS[nginx]}" | median); h_rps=$(echo "${RPS[haproxy]}" | median); n_cpu=$(echo "${CPU[nginx]}" | median)
  for t in "${ORDER[@]}"; do
    rps=$(echo "${RPS[$t]}" | median); cpu=$(echo "${CPU[$t]}" | median)
    ratio() { python3 -c "print(f'{$1/$2:.2f}')" 2>/dev/null || echo -; }
    cpu_ratio=$([ "$cpu" = - ] && echo - || ratio "$cpu" "$n_cpu")
    echo "| $t | $rps | $(ratio "$rps" "$n_rps") | $(ratio "$rps" "$h_rps") | $cpu | $cpu_ratio |"
  done
)
echo "$table"
if [ -n "$OUT" ]; then echo "$table" > "$OUT"; fi
