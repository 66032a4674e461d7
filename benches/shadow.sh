#!/usr/bin/env bash
# What shadow traffic costs the clients: the same fixed-rate load (oha, open loop with latency
# correction) through three strangle instances on one config with routing only, interleaved
# round by round:
#   routing   no shadow;
#   shadow    `shadow = { percent = "10%" }`: a tenth of the requests copied to the other side
#             (the same backend) and the answers compared;
#   closed    the same, with the other side on a closed port: the copies cost the proxy (capture,
#             queue, a connect attempt, the failure counted) but never the backend, which shares
#             a CPU with the load generator.
#   apart     the same as shadow, with the copies going to a second backend run at the lowest
#             CPU priority: as when the new side is another machine, the copies' own answers do
#             not take the load generator's CPU, and what is measured is strangle's cost.
# Each proxy is pinned to CPU 0, the backend and the load generator to CPU 1. Loopback only.
#
# The host's swings move a round's p99 by much more than shadowing does, so there are many short
# rounds, and the figure is the median over rounds of each round's p99 against routing's.
#
# Usage: benches/shadow.sh [OUT.md]; ROUNDS=30 SECS=4 RATE=4800 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-30}
SECS=${SECS:-4}
RATE=${RATE:-4800}
STRANGLE_BIN=${STRANGLE_BIN:-target/release/strangle}
OUT=${1:-}
# shellcheck source=benches/common.sh
. benches/common.sh

BACKEND=$(free_port)
start_backend "$BACKEND"
# The copies' backend for `apart`: nginx as the first, niced to the lowest priority on CPU 1.
APART=$(free_port)
mkdir -p "$WORK/apart"
sed -e "s|$WORK/backend|$WORK/apart|g" -e "s|127.0.0.1:$BACKEND|127.0.0.1:$APART|" "$WORK/backend/nginx.conf" > "$WORK/apart/nginx.conf"
taskset -c 1 nice -n 19 nginx -c "$WORK/apart/nginx.conf" -p "$WORK/apart" & PIDS+=($!)
wait_port "$APART"
VARIANTS=(routing shadow closed apart)
declare -A PORT ADMIN
for v in "${VARIANTS[@]}"; do
  PORT[$v]=$(free_port)
  ADMIN[$v]="127.0.0.1:$(free_port)"
  # Every request on the legacy side (shift 0%), so that a closed new side fails copies only.
  routing_config "${PORT[$v]}" "${ADMIN[$v]}" "$BACKEND" | sed 's/^shift = "25%"$/shift = "0%"/' > "$WORK/$v.toml"
  if [ "$v" != routing ]; then
    sed -i 's/^sticky = "header:x-user-id"$/&\nshadow = { percent = "10%" }/' "$WORK/$v.toml"
  fi
  if [ "$v" = closed ] || [ "$v" = apart ]; then
    other=$([ "$v" = closed ] && free_port || echo "$APART")
    python3 - "$WORK/$v.toml" "$other" "$BACKEND" <<'PY'
import sys
path, dead, backend = sys.argv[1:]
text = open(path).read()
new = '[upstreams.new]\naddresses = ["127.0.0.1:%s"]' % backend
assert new in text
open(path, "w").write(text.replace(new, '[upstreams.new]\naddresses = ["127.0.0.1:%s"]' % dead, 1))
PY
  fi
  taskset -c 0 "$STRANGLE_BIN" serve -c "$WORK/$v.toml" 2>"$WORK/$v.log" & PIDS+=($!)
done
for v in "${VARIANTS[@]}"; do wait_port "${PORT[$v]}"; done

load() { # variant seconds -> "p50 p99 p99.9" in µs
  taskset -c 1 oha -z "${2}s" -q "$RATE" -c 50 --latency-correction --no-tui -w --output-format json \
    -H "x-user-id: user-1" "http://127.0.0.1:${PORT[$1]}/bookings/42" \
    | python3 -c 'import json, sys
d = json.load(sys.stdin); p = d["latencyPercentiles"]
bad = sum(d.get("errorDistribution", {}).values()) + sum(n for c, n in d.get("statusCodeDistribution", {}).items() if not c.startswith("2"))
print(*(round(p[k] * 1e6, 1) for k in ("p50", "p99", "p99.9")), bad)'
}
for v in "${VARIANTS[@]}"; do load "$v" 2 >/dev/null; done
declare -A P50 P99 P999 ERR ROUND
for r in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    read -r p50 p99 p999 err < <(load "$v" "$SECS")
    echo "round $r $v: p50 $p50 p99 $p99 p99.9 $p999 us, $err errors" >&2
    P50[$v]+="$p50 "; P99[$v]+="$p99 "; P999[$v]+="$p999 "; ERR[$v]+="$err "; ROUND[$v,$r]=$p99
  done
done
# Each round's p99 against routing's in the same round (run seconds apart): the host's slow
# swings, which move every variant of a round together, cancel out of these ratios.
# The median of those ratios, and their quartiles (how far single rounds wander).
paired() {
  for r in $(seq "$ROUNDS"); do echo "${ROUND[$1,$r]} ${ROUND[routing,$r]}"; done | python3 -c 'import sys, statistics as st
r = [float(a) / float(b) for a, b in (l.split() for l in sys.stdin)]
q = st.quantiles(r, n=4) if len(r) > 1 else r * 3
print(f"{st.median(r):.2f} ({q[0]:.2f}-{q[2]:.2f})")'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
copies() { curl -s "http://${ADMIN[$1]}/metrics" | awk '/^strangle_shadow_requests_total/ {split($1, a, "outcome=\""); split(a[2], b, "\""); n[b[1]] += $2} END {printf "%d matched, %d error, %d dropped", n["matched"], n["error"], n["dropped"]}'; }
r99=$(echo "${P99[routing]}" | median)
report=$(
  echo "| strangle | p50 µs | p99 µs | p99.9 µs | p99 vs routing | p99 vs routing, median of rounds (quartiles) | errors | copies |"
  echo "|---|---|---|---|---|---|---|---|"
  for v in "${VARIANTS[@]}"; do
    p99=$(echo "${P99[$v]}" | median)
    c=$([ "$v" = routing ] && echo - || copies "$v")
    echo "| $v | $(echo "${P50[$v]}" | median) | $p99 | $(echo "${P999[$v]}" | median) | $(python3 -c "print(f'{$p99/$r99:.2f}')") | $(paired "$v") | $(echo "${ERR[$v]}" | tr ' ' '\n' | awk '{s+=$1} END {print s+0}') | $c |"
  done
)
echo "$report"
if [ -n "$OUT" ]; then echo "$report" > "$OUT"; fi
