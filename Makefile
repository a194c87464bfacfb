# os-credits: build, test and run.
#
#   make            build everything: the host (target/release/os-credits)
#                   and every policy (policies/dist/<name>.wasm)
#   make policies   build the policies only
#   make host       build the host only
#   make run        build everything, then run the service with its defaults
#   make test       the test suite (what CI runs, with `make lint`)
#   make lint       rustfmt and clippy on every target, native and Wasm
#   make bench      the benchmarks
#   make fuzz       every fuzz target for FUZZ_SECONDS each (default 600)
#   make clean      remove build output
#
# Tests and the shipped binary share the release profile, so wasmtime is
# built once. Every target first makes sure the toolchain of
# rust-toolchain.toml is there, with the wasm32-wasip2 target the policies
# build for (`rustup toolchain install` adds what is missing); `make test`
# also finds or installs the real programs the tests run: headless
# Chromium and Prometheus (scripts/test-programs.sh).

CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
POLICIES := denbi tariff
DIST := policies/dist
POLICY_PACKAGES := $(foreach p,$(POLICIES),-p $(p)-policy)
FIXTURE_PACKAGES := -p hostile-policy -p contract-v1-policy

.PHONY: all toolchain test-programs host policies run test lint bench fuzz clean

all: policies host

toolchain:
	@rustup toolchain install >/dev/null 2>&1 || rustup toolchain install

test-programs:
	@sh scripts/test-programs.sh

host: toolchain
	$(CARGO) build --release -p os-credits

policies: toolchain
	$(CARGO) build --profile policy --target $(WASM_TARGET) $(POLICY_PACKAGES)
	mkdir -p $(DIST)
	for p in $(POLICIES); do \
		cp target/$(WASM_TARGET)/policy/$${p}_policy.wasm $(DIST)/$$p.wasm.tmp && \
		mv $(DIST)/$$p.wasm.tmp $(DIST)/$$p.wasm; \
	done
	test -e $(DIST)/policies.toml || cp policies/policies.toml $(DIST)/policies.toml

run: all
	target/release/os-credits serve

test: toolchain test-programs
	$(CARGO) test --release --workspace

lint: toolchain
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) -p pricing-sdk $(POLICY_PACKAGES) $(FIXTURE_PACKAGES) -- -D warnings

bench: toolchain
	$(CARGO) bench -p os-credits

FUZZ_SECONDS ?= 600
fuzz: toolchain
	sh scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
	rm -rf $(DIST)
