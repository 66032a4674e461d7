#!/usr/bin/env bash
# Heap allocations per request: a count, where time on this shared host moves 20% from one
# run to the next. uprobes on the allocator's entry points (mimalloc's mi_malloc_aligned,
# mi_zalloc_aligned and mi_realloc_aligned: what Rust's global allocator calls) count every
# allocation the proxy makes while N requests go one after another over one kept-alive
# connection, for strangle routing-only and with the full pipeline (benches/common.sh). With
# SITES=1, the allocation sites too: each allocation's first caller outside the allocator and
# the standard library, with the frame that called it.
#
# Usage: benches/allocs.sh   (N=2000 by default; needs perf with uprobes, root; loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
STRANGLE_BIN=${STRANGLE_BIN:-target/release/strangle}
# shellcheck source=benches/common.sh
. benches/common.sh

# The probes go on a copy, so the build's binary is never probed (nor its probes left behind).
cp "$STRANGLE_BIN" "$WORK/strangle"
PROBES=(mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned)
for f in "${PROBES[@]}"; do
  perf probe -q -x "$WORK/strangle" "$f" >/dev/null 2>&1 || { echo "cannot probe $f (perf with uprobes, as root?)" >&2; exit 1; }
done
# `perf probe` names its events after the binary: probe_strangle:FUNCTION.
cleanup_probes() { perf probe -q -d 'probe_strangle:*' >/dev/null 2>&1 || true; cleanup; }
trap cleanup_probes EXIT
EVENTS=$(printf 'probe_strangle:%s,' "${PROBES[@]}"); EVENTS=${EVENTS%,}

BACKEND=$(free_port); ROUTING=$(free_port); FULL=$(free_port); ISSUER=$(free_port)
start_backend "$BACKEND"
start_issuer "$ISSUER"
TOKEN=$(mint_token "$ISSUER")
RECEIVER=$(free_port)
start_receiver "$RECEIVER"
# Each config in a directory of its own: the config watcher wakes for every write in the
# config's directory, and perf writes its files in $WORK.
mkdir -p "$WORK/routing" "$WORK/full"
routing_config "$ROUTING" "127.0.0.1:$(free_port)" "$BACKEND" > "$WORK/routing/strangle.toml"
full_config "$FULL" "127.0.0.1:$(free_port)" "$BACKEND" "$RECEIVER" > "$WORK/full/strangle.toml"
"$WORK/strangle" serve -c "$WORK/routing/strangle.toml" 2>"$WORK/routing.log" & PIDS+=($!)
ROUTING_PID=$!
"$WORK/strangle" serve -c "$WORK/full/strangle.toml" 2>"$WORK/full.log" & PIDS+=($!)
FULL_PID=$!
for p in $BACKEND $ROUTING $FULL; do wait_port "$p"; done

# N requests, each sent once the previous answer is whole, on one connection.
requests() { # PORT N HEADER
  python3 - "$@" <<'PY'
import socket, sys
port, n, header = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
req = f"GET /bookings/42 HTTP/1.1\r\nHost: bench\r\n{header}\r\n\r\n".encode()
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            status = head.split(b" ", 2)[1]
            length = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")[1:]
                          if l.lower().startswith(b"content-length:"))
            if len(rest) >= length:
                if status != b"200":
                    sys.exit(f"status {status.decode()}")
                buf = rest[length:]
                break
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        buf += chunk
PY
}

measure() { # NAME PORT PID HEADER
  local name=$1 port=$2 pid=$3 header=$4
  requests "$port" 200 "$header"   # warm: pooled upstream connection, token cache, pages
  perf stat -x, -e "$EVENTS" -p "$pid" -o "$WORK/$name.stat" &
  local stat_pid=$!
  sleep 0.5
  requests "$port" "$N" "$header"
  sleep 0.2
  kill -INT "$stat_pid"; wait "$stat_pid" 2>/dev/null || true
  local total
  total=$(awk -F, '/probe_strangle/ {s += $1} END {print s}' "$WORK/$name.stat")
  echo "| $name | $(python3 -c "print(round($total / $N, 1))") |"
  if [ -n "${SITES:-}" ]; then
    perf record -q -e "$EVENTS" --call-graph dwarf,8192 -p "$pid" -o "$WORK/$name.data" &
    local rec_pid=$!
    sleep 0.5
    requests "$port" 500 "$header"
    sleep 0.2
    kill -INT "$rec_pid"; wait "$rec_pid" 2>/dev/null || true
    perf script -i "$WORK/$name.data" -F ip,sym --no-inline 2>/dev/null | python3 -c '
import re, sys, collections
plumbing = re.compile(r"^(mi_|_mi_|__rust|__rdl|<?alloc::|<?core::|<?std::|<?bytes::|<?hashbrown|<?http::header::map|<T as alloc|\[unknown\])")
sites, frames, n = collections.Counter(), [], 0
def flush():
    global frames, n
    if frames:
        n += 1
        mine = [f for f in frames if not plumbing.search(f)]
        sites[" <- ".join(mine[:2]) or "?"] += 1
    frames = []
for line in sys.stdin:
    if not line.strip():
        flush(); continue
    parts = line.split(None, 1)
    frames.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1].strip()) if len(parts) > 1 else "?")
flush()
for site, count in sites.most_common(int(sys.argv[1])):
    print(f"  {count / 500:5.2f}  {site[:200]}")
' "${SITES_TOP:-25}"
  fi
}

echo "N=$N requests one after another on one kept-alive connection"
echo
echo "| strangle | heap allocations per request |"
echo "|---|---|"
measure routing "$ROUTING" "$ROUTING_PID" "x-user-id: user-1"
measure full "$FULL" "$FULL_PID" "Authorization: Bearer $TOKEN"
