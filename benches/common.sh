# Shared by the benchmark scripts (load.sh, profile.sh): a scratch directory and the processes
# to stop, ports, the backend, nginx as a proxy, and strangle's routing-only config, so every
# script measures the same set-up. Source it; it sets WORK and PIDS and stops PIDS on exit.

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on :$1" >&2; return 1; }

# The backend: nginx answering 200 with a small body, on CPU 1. Usage: start_backend PORT
start_backend() {
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
  server { listen 127.0.0.1:$1; location / { return 200 "hello from the monolith\n"; } }
}
CONF
  taskset -c 1 nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" & PIDS+=($!)
}

# nginx as the proxy, one worker on CPU 0. Usage: start_nginx_proxy PORT BACKEND_PORT
# (its master's pid is in $WORK/nginx/nginx.pid once it runs).
start_nginx_proxy() {
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 30000;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$2; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)
}

# What both strangle configs share: one thread, the monolith as the default, the admin API, the
# access log (a file or "off"). Usage: server_config PORT ADMIN_ADDR ACCESS_LOG
server_config() {
  cat <<CONF
[server]
listen = ["127.0.0.1:$1"]
threads = 1
default = "monolith"
[admin]
listen = "$2"
[log]
access = "$3"
level = "warn"
CONF
}

# strangle with routing only: a route with a sticky split, access log off, one thread.
# Usage: routing_config PORT ADMIN_ADDR BACKEND_PORT > FILE
routing_config() {
  server_config "$1" "$2" off
  cat <<CONF
[upstreams.monolith]
addresses = ["127.0.0.1:$3"]
[upstreams.new]
addresses = ["127.0.0.1:$3"]
[[routes]]
id = "bookings"
path = "/bookings"
legacy = "monolith"
new = "new"
shift = "25%"
sticky = "header:x-user-id"
# Rewritten during the reload runs: a real change, without moving the measured traffic
# between upstreams (which would open new upstream connections, a cost of shifting, not of
# reloading).
[[routes]]
id = "flights"
path = "/flights"
legacy = "monolith"
new = "new"
shift = "10%"
CONF
}

# The test issuer (tests/fixtures/jwks_issuer.py, PyJWT): its RSA public key lands in
# $WORK/rsa-1.pem. Usage: start_issuer PORT; then TOKEN=$(mint_token PORT), valid for 2 hours.
start_issuer() {
  python3 tests/fixtures/jwks_issuer.py "$1" > "$WORK/issuer.out" & PIDS+=($!)
  wait_port "$1"
  curl -s "http://127.0.0.1:$1/public/rsa-1.pem" > "$WORK/rsa-1.pem"
}
mint_token() {
  local now; now=$(date +%s)
  curl -s -X POST "http://127.0.0.1:$1/mint" -d "{\"claims\":{\"iss\":\"https://issuer.test/\",\"aud\":\"bookings\",\"sub\":\"user-1\",\"exp\":$((now+7200))}}"
}

# The OTLP receiver of the tests (tests/fixtures/otlp_receiver.py; opentelemetry-proto): a
# collector for the full pipeline's spans. Usage: start_receiver PORT
start_receiver() {
  python3 tests/fixtures/otlp_receiver.py "$1" > "$WORK/receiver.out" & PIDS+=($!)
  wait_port "$1"
}

# strangle with the full pipeline: JWT (the issuer's static key, token cache on), sticky split
# by claim, a rate limit far above the load, max-in-flight, metrics, access log to a file, and
# traces at 1% sampling sent to the receiver on OTLP_PORT when one is given.
# Usage: full_config PORT ADMIN_ADDR BACKEND_PORT [OTLP_PORT] > FILE (after start_issuer)
full_config() {
  server_config "$1" "$2" "$WORK/access.log"
  cat <<CONF
[auth.users]
keys = ["$WORK/rsa-1.pem"]
issuer = "https://issuer.test/"
audiences = ["bookings"]
algorithms = ["RS256"]
forward-claims = { sub = "x-user-id" }
[upstreams.monolith]
addresses = ["127.0.0.1:$3"]
max-in-flight = 1000
[upstreams.new]
addresses = ["127.0.0.1:$3"]
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
  if [ -n "${4:-}" ]; then
    cat <<CONF
[telemetry.otlp]
endpoint = "http://127.0.0.1:$4"
sample-ratio = 0.01
CONF
  fi
}
