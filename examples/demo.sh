#!/usr/bin/env bash
# Runs a working migration on loopback: two demo apps, strangle in front, some traffic, a live
# shift from 25% to 50% by editing the config (the proxy reloads it), then serves until Ctrl-C.
# DEMO_SECONDS=N stops it after N seconds instead.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/strangle
APPS=target/release/examples/backends
WORK=$(mktemp -d)
cp examples/demo.toml "$WORK/strangle.toml"

for port in 8080 8081 8082; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use; stop what listens there and run make demo again" >&2
    exit 1
  fi
done

cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
PIDS=()
trap cleanup EXIT INT TERM

"$APPS" 127.0.0.1:8081 127.0.0.1:8082 >/dev/null & PIDS+=($!)
"$BIN" serve -c "$WORK/strangle.toml" 2>"$WORK/strangle.log" & PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done

tally() {
  local new=0 legacy=0 side
  for i in $(seq 1 200); do
    side=$(curl -s -o /dev/null -w '%header{x-served-by}' -H "x-user-id: user-$i" http://127.0.0.1:8080/bookings/$i)
    if [ "$side" = new ]; then new=$((new+1)); else legacy=$((legacy+1)); fi
  done
  echo "  200 users on /bookings: $new on the new service, $legacy on the monolith"
}

echo "strangle is routing http://127.0.0.1:8080 (config: $WORK/strangle.toml)"
echo
echo "At shift 25%:"
tally
echo "  alice, three times:"
for _ in 1 2 3; do echo -n "    "; curl -s -H 'x-user-id: alice' http://127.0.0.1:8080/bookings/42; done
echo "  everything else still goes to the monolith:"
echo -n "    "; curl -s http://127.0.0.1:8080/flights/LH123

echo
echo "Shifting /bookings to 50% by editing the config (hot reload, no restart)..."
sed 's/shift = "25%"/shift = "50%"/' "$WORK/strangle.toml" > "$WORK/next.toml" && mv "$WORK/next.toml" "$WORK/strangle.toml"
sleep 0.5
echo "At shift 50% (users already on the new side stay there):"
tally

cat <<TRY

Try it yourself while this runs:
  curl -s -H 'x-user-id: bob' http://127.0.0.1:8080/bookings/7
  curl -s -H 'x-strangle-side: new' http://127.0.0.1:8080/bookings/7   # a tester forcing a side
  curl -s --path-as-is http://127.0.0.1:8080/bookings/../admin         # normalised before routing
  curl -si http://127.0.0.1:8080/bookings%2F..%2Fadmin                 # refused: 400
  tail -f $WORK/demo-access.log                                        # one JSON line per request
  edit $WORK/strangle.toml (shift = "100%") and watch it apply
Ctrl-C stops everything.
TRY

if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else wait; fi
