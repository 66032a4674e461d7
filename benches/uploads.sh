#!/usr/bin/env bash
# Uploads: closed-loop throughput of requests with a body (POST, BODY bytes, Content-Length),
# through nginx as a proxy, strangle routing-only with its HTTP/1 fast path, and the same
# binary with the fast path off (every request through Pingora's HttpProxy), interleaved,
# medians of ROUNDS rounds. The same set-up as load.sh (benches/common.sh): each proxy on CPU 0,
# the nginx backend and wrk on CPU 1.
#
# Usage: benches/uploads.sh   (ROUNDS=3 DURATION=5 BODY=4096 by default; loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BODY=${BODY:-4096}
CONNECTIONS=50
STRANGLE_BIN=${STRANGLE_BIN:-target/release/strangle}
# shellcheck source=benches/common.sh
. benches/common.sh

BACKEND=$(free_port)
declare -A PORT PID
PORT[nginx]=$(free_port); PORT[fast]=$(free_port); PORT[off]=$(free_port)
start_backend "$BACKEND"
start_nginx_proxy "${PORT[nginx]}" "$BACKEND"
mkdir -p "$WORK/fast" "$WORK/off"
for t in fast off; do
  routing_config "${PORT[$t]}" "127.0.0.1:$(free_port)" "$BACKEND" > "$WORK/$t/strangle.toml"
done
taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/fast/strangle.toml" 2>"$WORK/fast.log" & PIDS+=($!)
PID[fast]=$!
STRANGLE_HTTP1_FAST_PATH=off taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/off/strangle.toml" \
  2>"$WORK/off.log" & PIDS+=($!)
PID[off]=$!
for t in nginx fast off; do wait_port "${PORT[$t]}"; done
sleep 1
PID[nginx]=$(pgrep -f "nginx: worker process" -P "$(cat "$WORK/nginx/nginx.pid")" | head -1)

cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("a", $BODY)
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["x-user-id"] = "user-1"
LUA

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
run() { # target seconds -> "rps cpu_us_per_request"
  local t=$1 before after out rps reqs
  before=$(cpu_ticks "${PID[$t]}")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${2}s" -s "$WORK/post.lua" "http://127.0.0.1:${PORT[$t]}/bookings/42")
  after=$(cpu_ticks "${PID[$t]}")
  if echo "$out" | grep -q "Non-2xx"; then echo "$t: non-2xx responses" >&2; echo "$out" >&2; fi
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$rps $(python3 -c "print(round(($after-$before)/$TICK/$reqs*1e6, 2))")"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

for t in nginx fast off; do run "$t" 2 >/dev/null; done
declare -A RPS CPU
for r in $(seq "$ROUNDS"); do
  for t in nginx fast off; do
    read -r rps cpu < <(run "$t" "$DURATION")
    echo "round $r $t: $rps req/s, $cpu us CPU/request" >&2
    RPS[$t]+="$rps "; CPU[$t]+="$cpu "
  done
done
echo "### Uploads (POST, $BODY-byte body; wrk -t1 -c$CONNECTIONS, medians of $ROUNDS x ${DURATION}s)"
echo
echo "| proxy | requests/s | vs nginx | CPU µs/request | vs nginx |"
echo "|---|---|---|---|---|"
nginx_rps=$(echo "${RPS[nginx]}" | median); nginx_cpu=$(echo "${CPU[nginx]}" | median)
for t in nginx fast off; do
  rps=$(echo "${RPS[$t]}" | median); cpu=$(echo "${CPU[$t]}" | median)
  name=$t; [ "$t" = fast ] && name="strangle routing, fast path"; [ "$t" = off ] && name="strangle routing, fast path off"
  echo "| $name | $rps | $(python3 -c "print(f'{$rps/$nginx_rps:.2f}')") | $cpu | $(python3 -c "print(f'{$cpu/$nginx_cpu:.2f}')") |"
done
