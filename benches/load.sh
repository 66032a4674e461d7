#!/usr/bin/env bash
# The load benchmark: the same tiny backend reached directly, through nginx, through HAProxy,
# through a bare Pingora proxy (the floor strangle is built on), through strangle with routing
# only, and through strangle with the full pipeline (JWT with the token cache, sticky split,
# rate limit, max-in-flight, metrics, access log to a file, traces at 1% sent to an OTLP
# receiver), and the same without tracing (`strangle-full-untraced`: what tracing costs), and
# strangle with routing only plus shadow traffic at 10% (`strangle-shadow`: what copying a
# tenth of the requests to the other side and comparing the answers costs the clients), and
# HTTPS: nginx and strangle (routing only) each terminating TLS 1.3 with the same ECDSA P-256
# certificate, kept-alive connections (`nginx-tls`, `strangle-tls`).
# Each proxy gets one worker pinned to CPU 0; the load generator and the backend share CPU 1.
# Runs are interleaved (every target once per round), the warm-up is discarded, and the tables
# report medians over ROUNDS rounds of:
#   1. throughput, closed loop (wrk), and the proxy's CPU time per request (/proc);
#   2. latency at a fixed rate of half the slowest proxy's throughput (oha, open loop with
#      latency correction): p50/p99/p99.9, and what each proxy adds over the direct path;
#   3. resident memory with 10,000 idle keep-alive connections (benches/idle.py);
#   4. p99 and errors at the same fixed rate while the config is rewritten every second
#      (strangle reloads it; nginx gets `nginx -s reload`), against the same run without.
# Loopback only.
#
# Usage: benches/load.sh [OUT.md]
#   ROUNDS=3 DURATION=8 CONNECTIONS=50 LATENCY_DURATION=10 IDLE=10000 by default;
#   STRANGLE_BIN=path/to/strangle measures another build (e.g. a baseline before a change).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
LATENCY_DURATION=${LATENCY_DURATION:-10}
IDLE=${IDLE:-10000}
STRANGLE_BIN=${STRANGLE_BIN:-target/release/strangle}
# Room for the idle connections: as many descriptors as this machine allows.
ulimit -n "$(ulimit -Hn)"
# HAProxy sizes itself for two descriptors per connection and refuses a maxconn the limit
# cannot cover, so under a low limit it gets fewer idle connections (said in the table).
HAPROXY_MAXCONN=$(( ($(ulimit -n) - 200) / 2 ))
[ "$HAPROXY_MAXCONN" -gt 20000 ] && HAPROXY_MAXCONN=20000
OUT=${1:-}
# shellcheck source=benches/common.sh
. benches/common.sh

BACKEND=$(free_port); NGINX=$(free_port); HAPROXY=$(free_port); ROUTING=$(free_port); FULL=$(free_port)
BARE=$(free_port)
ISSUER=$(free_port)

start_backend "$BACKEND"
start_nginx_proxy "$NGINX" "$BACKEND"; NGINX_PID=$!

# HAProxy as the proxy.
cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn $HAPROXY_MAXCONN
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
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db & PIDS+=($!); HAPROXY_PID=$!

# Bare Pingora: the floor under strangle (examples/bare_pingora.rs).
taskset -c 0 target/release/examples/bare_pingora "127.0.0.1:$BARE" "127.0.0.1:$BACKEND" \
  2>"$WORK/bare.log" & PIDS+=($!); BARE_PID=$!

# strangle with routing only: a route with a sticky split, access log off.
ROUTING_ADMIN="127.0.0.1:$(free_port)"
routing_config "$ROUTING" "$ROUTING_ADMIN" "$BACKEND" > "$WORK/routing.toml"
taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/routing.toml" 2>"$WORK/routing.log" & PIDS+=($!)
ROUTING_PID=$!

# strangle with the full pipeline: JWT (static key from the test issuer, token cache on), sticky
# split by claim, a rate limit far above the load, max-in-flight, metrics, access log to a file,
# traces sampled at 1% and exported to the tests' OTLP receiver.
start_issuer "$ISSUER"
TOKEN=$(mint_token "$ISSUER")
RECEIVER=$(free_port)
start_receiver "$RECEIVER"
full_config "$FULL" "127.0.0.1:$(free_port)" "$BACKEND" "$RECEIVER" > "$WORK/full.toml"
taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/full.toml" 2>"$WORK/full.log" & PIDS+=($!)
FULL_PID=$!
# The same full pipeline without tracing, for what tracing at 1% costs (measured in the same
# rounds, interleaved like the others).
UNTRACED=$(free_port)
full_config "$UNTRACED" "127.0.0.1:$(free_port)" "$BACKEND" > "$WORK/untraced.toml"
sed -i "s#$WORK/access.log#$WORK/access-untraced.log#" "$WORK/untraced.toml"
taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/untraced.toml" 2>"$WORK/untraced.log" & PIDS+=($!)
UNTRACED_PID=$!

# Routing only, with a tenth of the requests copied to the other side and compared.
SHADOW=$(free_port)
routing_config "$SHADOW" "127.0.0.1:$(free_port)" "$BACKEND" \
  | sed 's/^sticky = "header:x-user-id"$/&\nshadow = { percent = "10%" }/' > "$WORK/shadow.toml"
grep -q '^shadow = ' "$WORK/shadow.toml"
taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/shadow.toml" 2>"$WORK/shadow.log" & PIDS+=($!)
SHADOW_PID=$!

# HTTPS: one certificate (ECDSA P-256, localhost) for nginx and strangle, both terminating TLS
# in front of the same backend over plain HTTP.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
NGINX_TLS=$(free_port)
mkdir -p "$WORK/nginx-tls"
sed -e "s|$WORK/nginx/|$WORK/nginx-tls/|g" \
  -e "s|listen 127.0.0.1:$NGINX;|listen 127.0.0.1:$NGINX_TLS ssl; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:1m;|" \
  "$WORK/nginx/nginx.conf" > "$WORK/nginx-tls/nginx.conf"
grep -q "listen 127.0.0.1:$NGINX_TLS ssl" "$WORK/nginx-tls/nginx.conf"
taskset -c 0 nginx -c "$WORK/nginx-tls/nginx.conf" -p "$WORK/nginx-tls" & PIDS+=($!); NGINX_TLS_PID=$!
STRANGLE_TLS=$(free_port)
routing_config "$(free_port)" "127.0.0.1:$(free_port)" "$BACKEND" \
  | sed "s|^\[admin\]$|[[server.tls]]\nlisten = [\"127.0.0.1:$STRANGLE_TLS\"]\ncert = \"$WORK/tls.crt\"\nkey = \"$WORK/tls.key\"\n&|" \
  > "$WORK/strangle-tls.toml"
grep -q '^\[\[server.tls\]\]' "$WORK/strangle-tls.toml"
taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/strangle-tls.toml" 2>"$WORK/strangle-tls.log" & PIDS+=($!)
STRANGLE_TLS_PID=$!

for p in $BACKEND $NGINX $HAPROXY $BARE $ROUTING $FULL $UNTRACED $SHADOW $NGINX_TLS $STRANGLE_TLS; do wait_port "$p"; done

# CPU ticks (user + system) of a process and its children (nginx's worker does nginx's work).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
TICK=$(getconf CLK_TCK)

declare -A PORT=([direct]=$BACKEND [nginx]=$NGINX [haproxy]=$HAPROXY [pingora-bare]=$BARE [strangle-routing]=$ROUTING [strangle-full]=$FULL [strangle-full-untraced]=$UNTRACED [strangle-shadow]=$SHADOW [nginx-tls]=$NGINX_TLS [strangle-tls]=$STRANGLE_TLS)
declare -A PID=([nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID [pingora-bare]=$BARE_PID [strangle-routing]=$ROUTING_PID [strangle-full]=$FULL_PID [strangle-full-untraced]=$UNTRACED_PID [strangle-shadow]=$SHADOW_PID [nginx-tls]=$NGINX_TLS_PID [strangle-tls]=$STRANGLE_TLS_PID)
ORDER=(direct nginx haproxy pingora-bare strangle-routing strangle-full strangle-full-untraced strangle-shadow nginx-tls strangle-tls)
url_for() { # target -> the URL every tool requests
  case "$1" in *-tls) echo "https://127.0.0.1:${PORT[$1]}/bookings/42" ;; *) echo "http://127.0.0.1:${PORT[$1]}/bookings/42" ;; esac
}
PROXIES=(nginx haproxy pingora-bare strangle-routing strangle-full)
headers_for() { # the request headers every tool sends to a target
  echo "x-user-id: user-1"
  case "$1" in strangle-full*) echo "Authorization: Bearer $TOKEN" ;; esac
  return 0
}

run() { # target seconds -> "rps cpu_us_per_request"
  local target=$1 secs=$2 port=${PORT[$1]} pid=${PID[$1]:-} before after out rps reqs h
  local headers=()
  while read -r h; do headers+=(-H "$h"); done < <(headers_for "$target")
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${secs}s" "${headers[@]}" "$(url_for "$target")")
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

echo "$(date +%T) warm-up" >&2
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
ratio() { python3 -c "print(f'{$1/$2:.2f}')" 2>/dev/null || echo -; }
throughput=$(
  echo "| target | requests/s (median) | vs nginx | vs HAProxy | proxy CPU µs/request | vs nginx |"
  echo "|---|---|---|---|---|---|"
  n_rps=$(echo "${RPS[nginx]}" | median); h_rps=$(echo "${RPS[haproxy]}" | median); n_cpu=$(echo "${CPU[nginx]}" | median)
  for t in "${ORDER[@]}"; do
    rps=$(echo "${RPS[$t]}" | median); cpu=$(echo "${CPU[$t]}" | median)
    cpu_ratio=$([ "$cpu" = - ] && echo - || ratio "$cpu" "$n_cpu")
    echo "| $t | $rps | $(ratio "$rps" "$n_rps") | $(ratio "$rps" "$h_rps") | $cpu | $cpu_ratio |"
  done
)
echo "$throughput" >&2
https_line="HTTPS, kept-alive connections (TLS 1.3, ECDSA P-256): strangle-tls $(echo "${RPS[strangle-tls]}" | median) requests/s against nginx-tls $(echo "${RPS[nginx-tls]}" | median), ratio $(ratio "$(echo "${RPS[strangle-tls]}" | median)" "$(echo "${RPS[nginx-tls]}" | median)"); CPU per request $(echo "${CPU[strangle-tls]}" | median) µs against $(echo "${CPU[nginx-tls]}" | median) µs."
echo "$https_line" >&2

# 2. Latency at a fixed rate: half the slowest proxy's median throughput.
slowest=$(for t in "${PROXIES[@]}"; do echo "${RPS[$t]}" | median; done | sort -g | head -1)
RATE=$(python3 -c "print(int($slowest / 2))")
echo "$(date +%T) fixed rate: $RATE requests/s (half of the slowest proxy's $slowest)" >&2
oha_run() { # target seconds [url] -> the oha JSON on stdout
  local target=$1 secs=$2 url=${3:-$(url_for "$1")} h headers=()
  while read -r h; do headers+=(-H "$h"); done < <(headers_for "$target")
  taskset -c 1 oha -z "${secs}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction --no-tui \
    --insecure -w --output-format json "${headers[@]}" "$url"
}
# "p50 p99 p99.9 errors" in microseconds from oha's JSON (errors: failed requests and non-2xx).
oha_summary() {
  python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d["latencyPercentiles"]
bad = sum(d.get("errorDistribution", {}).values())
if bad:
    print("oha errors:", d["errorDistribution"], file=sys.stderr)
bad += sum(n for code, n in d.get("statusCodeDistribution", {}).items() if not code.startswith("2"))
print(*(round((p[k] or 0) * 1e6, 1) for k in ("p50", "p99", "p99.9")), bad)'
}
declare -A P50 P99 P999 ERR
for t in "${ORDER[@]}"; do oha_run "$t" 2 >/dev/null; done
for r in $(seq "$ROUNDS"); do
  for t in "${ORDER[@]}"; do
    read -r p50 p99 p999 err < <(oha_run "$t" "$LATENCY_DURATION" | oha_summary)
    echo "round $r $t at $RATE/s: p50 $p50 p99 $p99 p99.9 $p999 us, $err errors" >&2
    P50[$t]+="$p50 "; P99[$t]+="$p99 "; P999[$t]+="$p999 "; ERR[$t]+="$err "
  done
done
sum() { tr ' ' '\n' | grep -v '^$' | awk '{s+=$1} END {print s+0}'; }
d50=$(echo "${P50[direct]}" | median); d99=$(echo "${P99[direct]}" | median); d999=$(echo "${P999[direct]}" | median)
n99_added=$(python3 -c "print($(echo "${P99[nginx]}" | median) - $d99)")
latency=$(
  echo "| target | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | added p99 vs nginx | errors |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for t in "${ORDER[@]}"; do
    p50=$(echo "${P50[$t]}" | median); p99=$(echo "${P99[$t]}" | median); p999=$(echo "${P999[$t]}" | median)
    if [ "$t" = direct ]; then a50=-; a99=-; a999=-; rel=-; else
      a50=$(python3 -c "print(round($p50 - $d50, 1))"); a99=$(python3 -c "print(round($p99 - $d99, 1))")
      a999=$(python3 -c "print(round($p999 - $d999, 1))"); rel=$(ratio "$a99" "$n99_added"); fi
    echo "| $t | $p50 | $p99 | $p999 | $a50 | $a99 | $a999 | $rel | $(echo "${ERR[$t]}" | sum) |"
  done
)
echo "$latency" >&2
r99=$(echo "${P99[strangle-routing]}" | median); s99=$(echo "${P99[strangle-shadow]}" | median)
shadowed=$(curl -s "http://$(awk -F'"' '/^listen = "127/ {print $2; exit}' "$WORK/shadow.toml")/metrics" \
  | awk '/^strangle_shadow_requests_total/ {s += $2} END {print s + 0}')
shadow_line="Shadow traffic at 10%: client p99 $s99 µs against $r99 µs without it (strangle-routing), ratio $(ratio "$s99" "$r99"); $shadowed copies compared in the run."
echo "$shadow_line" >&2

# 3. Resident memory with $IDLE idle keep-alive connections (each has had one answer).
rss_kb() { # a process and its children
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}
memory=$(
  echo "| proxy | resident MB, warm | with $IDLE idle connections | added KB per connection |"
  echo "|---|---|---|---|"
  for t in "${PROXIES[@]}"; do
    n=$IDLE
    [ "$t" = haproxy ] && [ "$n" -gt "$HAPROXY_MAXCONN" ] && n=$((HAPROXY_MAXCONN - 100))
    before=$(rss_kb "${PID[$t]}")
    mapfile -t hs < <(headers_for "$t")
    coproc IDLER { taskset -c 1 python3 benches/idle.py "${PORT[$t]}" "$n" "${hs[@]}"; }
    read -r ready _ <&"${IDLER[0]}" || true
    if [ "$ready" != ready ]; then echo "$t: idle connections failed" >&2; fi
    sleep 1
    with=$(rss_kb "${PID[$t]}")
    eval "exec ${IDLER[1]}>&-"
    wait "$IDLER_PID" 2>/dev/null || true
    echo "$t: $before kB warm, $with kB with $n idle connections" >&2
    note=$([ "$n" = "$IDLE" ] || echo " (with $n: the descriptor limit)")
    echo "| $t | $(python3 -c "print(round($before/1024, 1))") | $(python3 -c "print(round($with/1024, 1))")$note | $(python3 -c "print(round(($with-$before)/$n, 2))") |"
    sleep 2
  done
)
echo "$memory" >&2

# 4. Reloading every second at the fixed rate, against the same run without reloads.
reload_loop() { # target: rewrites/reloads once a second until killed
  local n=0
  while sleep 1; do
    n=$((n + 1))
    if [ "$1" = nginx ]; then
      nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -s reload 2>/dev/null
    else
      # A real change each time (the flights route 10% <-> 11%), written the way editors and
      # ConfigMaps do (a new file renamed over the old).
      sed "s/^shift = \"1[01]%\"/shift = \"$((10 + n % 2))%\"/" "$WORK/routing.toml" > "$WORK/routing.next"
      mv "$WORK/routing.next" "$WORK/routing.toml"
    fi
  done
}
reloads_done() { curl -s "http://$ROUTING_ADMIN/metrics" | awk '/^strangle_config_reloads_total/ {print $2}'; }
declare -A R99 RERR
for r in $(seq "$ROUNDS"); do
  for t in strangle-routing nginx; do
    for mode in steady reloading; do
      if [ "$mode" = reloading ]; then reload_loop "$t" & RL=$!; fi
      read -r _ p99 _ err < <(oha_run "$t" "$LATENCY_DURATION" | oha_summary)
      if [ "$mode" = reloading ]; then kill "$RL"; wait "$RL" 2>/dev/null || true; fi
      echo "round $r $t $mode: p99 $p99 us, $err errors" >&2
      R99[$t-$mode]+="$p99 "; RERR[$t-$mode]+="$err "
    done
  done
done
reload=$(
  echo "| proxy | p99 µs steady | p99 µs reloading every second | ratio | errors steady | errors reloading |"
  echo "|---|---|---|---|---|---|"
  for t in strangle-routing nginx; do
    s99=$(echo "${R99[$t-steady]}" | median); l99=$(echo "${R99[$t-reloading]}" | median)
    echo "| $t | $s99 | $l99 | $(ratio "$l99" "$s99") | $(echo "${RERR[$t-steady]}" | sum) | $(echo "${RERR[$t-reloading]}" | sum) |"
  done
)
echo "strangle reloads applied: $(reloads_done)" >&2
echo "$reload" >&2

report=$(
  echo "### Throughput (closed loop, wrk -t1 -c$CONNECTIONS, medians of $ROUNDS x ${DURATION}s)"
  echo; echo "$throughput"; echo
  echo "$https_line"; echo
  echo "### Latency at $RATE requests/s (half the slowest proxy; oha -c$CONNECTIONS --latency-correction, medians of $ROUNDS x ${LATENCY_DURATION}s)"
  echo; echo "$latency"; echo
  echo "$shadow_line"; echo
  echo "### Memory with $IDLE idle keep-alive connections"
  echo; echo "$memory"; echo
  echo "### Reloading every second at $RATE requests/s (medians of $ROUNDS x ${LATENCY_DURATION}s; strangle applied $(reloads_done) reloads)"
  echo; echo "$reload"
)
echo "$report"
if [ -n "$OUT" ]; then echo "$report" > "$OUT"; fi
