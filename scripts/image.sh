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
# the tests use too (CONTAINERS_CONF): the runc runtime when installed
# (crun refuses cgroups in hybrid mode), and resource limits at or below
# the machine's own (podman raises RLIMIT_NPROC and RLIMIT_NOFILE by
# default, which an unprivileged sandbox refuses).
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

if command -v podman >/dev/null 2>&1; then
    engine=podman
elif command -v docker >/dev/null 2>&1; then
    engine=docker
else
    echo "make image needs podman or docker (Debian: apt-get install podman runc)" >&2
    exit 1
fi

if [ "$engine" = podman ]; then
    conf="$target/containers.conf"
    {
        echo "# Written by scripts/image.sh for this machine."
        echo "[containers]"
        echo "default_ulimits = [\"nproc=1024:1024\", \"nofile=$(ulimit -Sn):$(ulimit -Hn)\"]"
        if command -v runc >/dev/null 2>&1; then
            echo "[engine]"
            echo "runtime = \"runc\""
        fi
    } >"$conf"
    CONTAINERS_CONF=$(cd "$(dirname "$conf")" && pwd)/$(basename "$conf")
    export CONTAINERS_CONF
fi

has_image() {
    $engine image inspect "$1" >/dev/null 2>&1
}

# A pull that cannot reach a registry fails within the minute.
pulled() {
    [ "${OS_CREDITS_IMAGE_PULL:-yes}" = yes ] || return 1
    if command -v timeout >/dev/null 2>&1; then
        timeout 60 $engine pull -q "$1" >/dev/null 2>&1
    else
        $engine pull -q "$1" >/dev/null 2>&1
    fi
}

need_mmdebstrap() {
    command -v mmdebstrap >/dev/null 2>&1 && return 0
    echo "no registry gives $1 and mmdebstrap is not installed (Debian: apt-get install mmdebstrap)" >&2
    exit 1
}

# debian:bookworm-slim from Debian's packages: minbase, without
# documentation, manuals, locales or package lists, and with the official
# slim image's apt settings (no package caches, no translations), so that
# an `apt-get install` in a Dockerfile adds only its packages.
slim=debian:bookworm-slim
if ! has_image "$slim" && ! pulled "$slim"; then
    need_mmdebstrap "$slim"
    echo "making $slim from Debian's packages (mmdebstrap)"
    rootfs="$target/image-bases/bookworm-slim.tar"
    mkdir -p "$(dirname "$rootfs")"
    mmdebstrap --quiet --variant=minbase \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        --customize-hook='printf "%s\n" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" \
            >"$1"/etc/apt/apt.conf.d/docker-clean' \
        --customize-hook='echo "Acquire::Languages \"none\";" >"$1"/etc/apt/apt.conf.d/docker-no-languages' \
        bookworm "$rootfs"
    $engine import --change 'CMD ["bash"]' "$rootfs" "$slim" >/dev/null
    rm -f "$rootfs"
fi

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
