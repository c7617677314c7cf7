# herald: build, run, test.
#   make run           release build, then herald with the embedded defaults in demo mode:
#                      open http://127.0.0.1:8080/
#   make test          install missing test dependencies, then fmt check, clippy, every test
#   make fmt           format the code
#   make lint          rustfmt check and clippy with warnings as errors
#   make check-config  validate CONFIG (default deploy/herald.toml) and print the result
#   make bench         the load benchmarks (bench/run.sh; several minutes)

CARGO  ?= cargo
CONFIG ?= deploy/herald.toml

.PHONY: all build run test test-deps fmt lint check-config bench clean help

all: build

help:
	@sed -n 's/^#   //p' Makefile

build:
	$(CARGO) build --release

# --demo opens publishing on the public listener for local trials (never in production).
run: build
	@echo "herald: demo page at http://127.0.0.1:8080/ (Ctrl-C stops)"
	./target/release/herald --demo

# Debian packages (as root, only what is missing), then the browser test's node modules.
test-deps:
	scripts/install-test-deps.sh
	cd tests/browser && npm ci --no-audit --no-fund

# Every check runs even when an earlier one fails, so one run shows every problem; the
# test runner goes last so that on success its summary closes the output.
test: test-deps
	@failed=""; \
	echo "$(CARGO) fmt --check"; \
	$(CARGO) fmt --check || failed="$$failed fmt"; \
	echo "$(CARGO) clippy --all-targets -- -D warnings"; \
	$(CARGO) clippy --all-targets -- -D warnings || failed="$$failed clippy"; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --no-fail-fast"; \
		$(CARGO) nextest run --no-fail-fast || failed="$$failed tests"; \
	else \
		echo "$(CARGO) test --no-fail-fast (cargo-nextest is not installed)"; \
		$(CARGO) test --no-fail-fast || failed="$$failed tests"; \
	fi; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

check-config:
	$(CARGO) run --quiet -- check-config --config $(CONFIG)

bench:
	bench/run.sh

clean:
	$(CARGO) clean
	rm -rf tests/browser/node_modules
