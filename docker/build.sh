#!/bin/sh
# The build stage of the Dockerfile, as one script, so that the tests run
# exactly what the image build runs (host/tests/image.rs; no Docker engine
# is needed).
#
#   docker/build.sh [OUT]      (default OUT: /out)
#
# Builds the host (release) and the Rust policies (Wasm), stages the runtime
# image's files under OUT:
#   OUT/usr/local/bin/os-credits
#   OUT/etc/os-credits/policies/{denbi,tariff}.wasm, policies.toml
#   OUT/var/lib/os-credits/              (the ledger's volume)
# then smoke-tests the staged tree: the staged binary serves the staged
# policy folder, and the image's HEALTHCHECK command (`os-credits ping`)
# must see it alive.
set -eu

out=${1:-/out}
cd "$(dirname "$0")/.."

rustup toolchain install >/dev/null 2>&1 || true
# A CA bundle lent by scripts/image.sh (a machine behind a TLS-inspecting
# proxy): cargo trusts it for crates.io.
if [ -f /run/os-credits-build/ca.crt ]; then
    export CARGO_HTTP_CAINFO=/run/os-credits-build/ca.crt
fi
# The Rust policies (a Python policy is dropped into the policy volume
# like any other module; the image needs no Python).
make rust-policies host

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/os-credits/policies" "$out/var/lib/os-credits"
cp target/release/os-credits "$out/usr/local/bin/os-credits"
# The Makefile's POLICIES (Rust), not whatever else policies/dist holds.
for policy in $(make -s --no-print-directory print-rust-policies); do
    cp "policies/dist/$policy.wasm" "$out/etc/os-credits/policies/"
done
cp policies/dist/policies.toml "$out/etc/os-credits/policies/"
echo "staged into $out:"
find "$out" -type f | sort

# Smoke test of the staged tree (as the image runs it, on another port).
port=${SMOKE_PORT:-18080}
data=$(mktemp -d)
log="$data/serve.log"
CREDITS_HOST=127.0.0.1 CREDITS_PORT=$port OS_CREDITS_DATA_DIR="$data" \
    OS_CREDITS_POLICY_DIR="$out/etc/os-credits/policies" \
    "$out/usr/local/bin/os-credits" serve >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
tries=0
until CREDITS_PORT=$port "$out/usr/local/bin/os-credits" ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "smoke test failed: the staged service did not answer /ping" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.5
done
CREDITS_PORT=$port "$out/usr/local/bin/os-credits" ping
echo "smoke test passed: the staged image answers its HEALTHCHECK"
