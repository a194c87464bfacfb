#!/bin/sh
# `make image`: builds the os-credits image from the Dockerfile with podman
# (or docker where podman is not installed), tagged os-credits:latest.
#
#   scripts/image.sh [TAG]          (default TAG: os-credits:latest)
#
# The Dockerfile's bases (rust:1.95-bookworm, debian:bookworm-slim) are
# used if the engine has them or can pull them. Where no container
# registry is reachable, they are made here from Debian's packages instead
# (mmdebstrap), and the build image gets the Rust toolchain that
# rust-toolchain.toml names from this machine's rustup: nothing is
# downloaded but Debian packages and, during the build, crates.
#
# Settings this machine needs are written to target/containers.conf, which
# the tests use too (CONTAINERS_CONF; scripts/engine.sh says which).
#
# Where the machine reaches crates.io through a TLS-inspecting proxy, the
# CA bundle of SSL_CERT_FILE (or Debian's) is lent to the build stage
# (read-only, not kept in any layer); docker users with plain internet
# access need none of this and may run `docker build .` as ever.
set -eu
cd "$(dirname "$0")/.."

tag=${1:-os-credits:latest}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"

. scripts/engine.sh

# rust:1.95-bookworm: the slim base, a C toolchain, and this machine's
# toolchain of rust-toolchain.toml (with its wasm32-wasip2 target), at the
# official image's paths.
rust=rust:1.95-bookworm
if ! has_image "$rust" && ! pulled "$rust"; then
    echo "making $rust from $slim and this machine's Rust toolchain"
    rustup toolchain install >/dev/null 2>&1 || rustup toolchain install
    sysroot=$(rustc --print sysroot)
    name=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)-$(rustc -vV | sed -n 's/^host: //p')
    context="$target/image-bases/rust"
    rm -rf "$context"
    mkdir -p "$context/rustup/toolchains" "$context/cargo/bin"
    # The toolchain without its offline documentation (rust-docs).
    cp -a "$sysroot/." "$context/rustup/toolchains/$name"
    rm -rf "$context/rustup/toolchains/$name/share/doc"
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
        "$name" >"$context/rustup/settings.toml"
    rustup_bin=$(command -v rustup)
    for proxy in rustup cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
        cp "$rustup_bin" "$context/cargo/bin/$proxy"
    done
    cat >"$context/Containerfile" <<EOF
FROM $slim
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make \\
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
EOF
    $engine build -q -t "$rust" "$context" >/dev/null
    rm -rf "$context"
fi

# The CA bundle the build stage trusts for crates.io, when the machine has
# one of its own (a proxy's CA among Debian's).
set --
ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
if [ "$engine" = podman ] && [ -f "$ca" ]; then
    set -- --volume "$(cd "$(dirname "$ca")" && pwd)/$(basename "$ca"):/run/os-credits-build/ca.crt:ro"
fi

echo "building $tag with $engine"
started=$(date +%s)
if [ "$engine" = podman ]; then
    # --format docker: OCI images have no HEALTHCHECK; --pull=never: the
    # bases are here (made or pulled above).
    podman build --format docker --pull=never --layers "$@" -t "$tag" .
else
    docker build -t "$tag" .
fi
echo "built $tag in $(($(date +%s) - started)) s; $($engine image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}')"
