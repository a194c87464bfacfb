# os-credits: build, test and run.
#
#   make            build everything: the host (target/release/os-credits)
#                   and every policy (policies/dist/<name>.wasm)
#   make policies   build the policies only (Rust, and Python with
#                   componentize-py in a local virtual environment)
#   make host       build the host only
#   make run        build everything, then run the service with its defaults
#   make test       every test, the real programs included (what CI runs,
#                   with `make lint`); `cargo test --workspace` is the
#                   quick tier, which needs nothing but rustup
#   make lint       rustfmt and clippy on every target, native and Wasm
#   make bench      the benchmarks
#   make deny       the dependency check (cargo-deny)
#   make fuzz       every fuzz target for FUZZ_SECONDS each (default 600)
#   make clean      remove build output
#
# Tests and the shipped binary share the release profile, so wasmtime is
# built once. Every target first makes sure the toolchain of
# rust-toolchain.toml is there, with the wasm32-wasip2 target the policies
# build for (`rustup toolchain install` adds what is missing); `make test`
# also finds or installs the real programs the tests run: headless
# Chromium, Prometheus, InfluxDB and PostgreSQL (scripts/test-programs.sh), and runs
# the end-to-end tests a second time with the ledger on PostgreSQL.

CARGO ?= cargo
# Where cargo builds (CARGO_TARGET_DIR when set).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
WASM_TARGET := wasm32-wasip2
# Every policy is found, none is listed: a Rust policy is a crate
# policies/<name> (package <name>-policy, a workspace member by the glob in
# Cargo.toml), a Python policy a folder policies/python/<name> with a
# pyproject.toml and <name with _>.py, built with componentize-py from a
# virtual environment the Makefile makes (scripts/python-tools.sh, pinned
# in scripts/python-requirements.txt). `os-credits policy new` makes either.
POLICIES := $(sort $(patsubst policies/%/Cargo.toml,%,$(wildcard policies/*/Cargo.toml)))
PYTHON_POLICIES := $(sort $(patsubst policies/python/%/pyproject.toml,%,$(wildcard policies/python/*/pyproject.toml)))
PYTHON_FIXTURES := tests/policies/hostile-python
PYTHON_ENV := target/python
PYTHON_WASM := target/python-wasm
DIST := policies/dist
POLICY_PACKAGES := $(foreach p,$(POLICIES),-p $(p)-policy)
FIXTURE_PACKAGES := -p hostile-policy -p contract-v1-policy

.PHONY: print-rust-policies policy-examples image stack-images all toolchain test-programs python-tools host policies rust-policies python-policies run test lint deny bench fuzz clean

all: policies host

toolchain:
	@rustup toolchain install >/dev/null 2>&1 || rustup toolchain install

test-programs:
	@sh scripts/test-programs.sh

host: toolchain
	$(CARGO) build --release -p os-credits

print-rust-policies:
	@echo $(POLICIES)

python-tools:
	@sh scripts/python-tools.sh $(PYTHON_ENV)

policies: rust-policies python-policies

rust-policies: toolchain
	$(CARGO) build --profile policy --target $(WASM_TARGET) $(POLICY_PACKAGES)
	mkdir -p $(DIST)
	for p in $(POLICIES); do \
		cp $(TARGET_DIR)/$(WASM_TARGET)/policy/$$(echo $$p | tr - _)_policy.wasm $(DIST)/$$p.wasm.tmp && \
		mv $(DIST)/$$p.wasm.tmp $(DIST)/$$p.wasm; \
	done
	test -e $(DIST)/policies.toml || cp policies/policies.toml $(DIST)/policies.toml

# Each rebuilt only when its sources or the SDK change (it takes ~20 s),
# into $(PYTHON_WASM); the policies are then copied to $(DIST).
python-policies: python-tools
	mkdir -p $(DIST) $(PYTHON_WASM)
	for d in $(addprefix policies/python/,$(PYTHON_POLICIES)) $(PYTHON_FIXTURES); do \
		p=$$(basename $$d); out=$(PYTHON_WASM)/$$p.wasm; \
		if [ -e $$out ] && [ -z "$$(find $$d pricing-sdk/python pricing-sdk/wit -newer $$out \( -name '*.py' -o -name '*.wit' \) 2>/dev/null)" ]; then continue; fi; \
		$(PYTHON_ENV)/bin/componentize-py -d pricing-sdk/wit -w pricing componentize \
			$$(echo $$p | tr - _) -p $$d -p pricing-sdk/python -o $$out.tmp >/dev/null && \
		mv $$out.tmp $$out || exit 1; \
	done
	for p in $(PYTHON_POLICIES); do \
		cmp -s $(PYTHON_WASM)/$$p.wasm $(DIST)/$$p.wasm || \
		{ cp $(PYTHON_WASM)/$$p.wasm $(DIST)/$$p.wasm.tmp && mv $(DIST)/$$p.wasm.tmp $(DIST)/$$p.wasm; }; \
	done

# Each policy's golden test: its examples/measurements.lp billed through
# the service's intake must give exactly examples/expected.json (with the
# binary `make test` built, or OS_CREDITS=path/to/os-credits).
OS_CREDITS ?= $(TARGET_DIR)/release/os-credits
$(OS_CREDITS):
	$(CARGO) build --release -p os-credits

policy-examples: policies $(OS_CREDITS)
	@for d in $(addprefix policies/,$(POLICIES)) $(addprefix policies/python/,$(PYTHON_POLICIES)); do \
		p=$$(basename $$d); \
		[ -e $$d/examples/expected.json ] || continue; \
		echo "policy test $$p"; \
		$(OS_CREDITS) policy test $(DIST)/$$p.wasm $$d/examples/measurements.lp \
			--expect $$d/examples/expected.json --cache-dir $(TARGET_DIR)/policy-cache || exit 1; \
	done

# The container image (scripts/image.sh): podman, or docker where podman
# is not installed; the bases are made from Debian's packages where no
# registry gives them.
IMAGE ?= os-credits:latest
# podman and mmdebstrap, found or installed as for `make test` (a site
# with docker uses docker and the registry's bases).
IMAGE_PROGRAMS := podman runc netavark iptables aardvark-dns mmdebstrap
image:
	@command -v docker >/dev/null 2>&1 || sh scripts/test-programs.sh $(IMAGE_PROGRAMS)
	sh scripts/image.sh $(IMAGE)

# Local images of the stack's InfluxDB, Prometheus, PostgreSQL and nginx
# from Debian's packages (scripts/stack-images.sh), for the compose files in
# examples/project_usage where no registry gives the official ones. Prints
# the variables that point the compose files at them:
#   export $(make -s stack-images)
stack-images:
	@command -v docker >/dev/null 2>&1 || sh scripts/test-programs.sh $(IMAGE_PROGRAMS) >&2
	@sh scripts/stack-images.sh

run: all
	$(TARGET_DIR)/release/os-credits serve

# The tests that need more than rustup (the real programs above, the
# Python tools) are switched on by the feature `programs`; without it
# (`cargo test --workspace`, the quick tier) they are listed as ignored.
TEST_FEATURES := --features os-credits/programs
# The end-to-end tests that run a second time with the ledger on
# PostgreSQL: every test file that starts the service through the tests'
# `Service::start`, which puts its ledger on the store
# OS_CREDITS_TEST_STORE names. Derived from the files, so a new one is in.
E2E_TESTS := $(sort $(basename $(notdir $(shell grep -l 'Service::start\b' host/tests/*.rs))))
# Every test binary runs even when one fails (--no-fail-fast), so that a
# run names all the failures at once; make still fails.
test: toolchain test-programs python-policies
	cd pricing-sdk/python && ../../$(PYTHON_ENV)/bin/python -m pytest -q -p no:cacheprovider
	for p in $(PYTHON_POLICIES); do \
		(cd policies/python/$$p && $(abspath $(PYTHON_ENV))/bin/python -m pytest -q -p no:cacheprovider) || exit 1; \
	done
	$(CARGO) test --release --workspace --no-fail-fast $(TEST_FEATURES)
	$(MAKE) --no-print-directory policy-examples
	OS_CREDITS_TEST_STORE=postgres $(CARGO) test --release -p os-credits --no-fail-fast $(TEST_FEATURES) $(foreach t,$(E2E_TESTS),--test $(t))

lint: toolchain
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) -p pricing-sdk $(POLICY_PACKAGES) $(FIXTURE_PACKAGES) -- -D warnings

# Licenses, bans and sources of every dependency (deny.toml) must pass;
# the RustSec advisories are checked when their database can be fetched,
# and the check says plainly when it could not. cargo-deny is installed
# (pinned, from crates.io) where it is missing.
DENY_VERSION := 0.20.2
deny: toolchain
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install cargo-deny --locked --version $(DENY_VERSION)
	$(CARGO) deny --workspace check --hide-inclusion-graph licenses bans sources
	@if $(CARGO) deny fetch db; then \
		$(CARGO) deny --workspace check --disable-fetch --hide-inclusion-graph advisories; \
	else \
		echo "advisories NOT checked: the RustSec advisory database could not be fetched"; \
	fi

bench: toolchain
	$(CARGO) bench -p os-credits

FUZZ_SECONDS ?= 600
fuzz: toolchain
	sh scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
	rm -rf $(DIST)
	find pricing-sdk/python policies -name __pycache__ -prune -exec rm -rf {} +
