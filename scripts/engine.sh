# Sourced by scripts/image.sh and scripts/stack-images.sh (from the
# repository's root, with $target set): picks the container engine
# ($engine: podman, or docker where podman is not installed), writes this
# machine's podman settings to $target/containers.conf (exported as
# CONTAINERS_CONF), and makes sure debian:bookworm-slim is there: pulled if
# a registry gives it, otherwise made from Debian's packages (mmdebstrap).
#
# Podman's settings: the runc runtime when installed (crun refuses cgroups
# in hybrid mode), and resource limits at or below the machine's own
# (podman raises RLIMIT_NPROC and RLIMIT_NOFILE by default, which an
# unprivileged sandbox refuses).

if command -v podman >/dev/null 2>&1; then
    engine=podman
elif command -v docker >/dev/null 2>&1; then
    engine=docker
else
    echo "building images needs podman or docker (Debian: apt-get install podman runc)" >&2
    exit 1
fi

if [ "$engine" = podman ]; then
    conf="$target/containers.conf"
    {
        echo "# Written by scripts/engine.sh (make image, make stack-images) for this machine."
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
    # merged /usr by usr-is-merged, as the official image: without the
    # hook apt picks usrmerge, which pulls in perl (46 MB).
    merged_usr=
    hooks=/usr/share/mmdebstrap/hooks/merged-usr
    [ -d "$hooks" ] && merged_usr=--hook-dir=$hooks
    mmdebstrap --quiet --variant=minbase ${merged_usr:+"$merged_usr"} \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        --customize-hook='printf "%s\n" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" \
            >"$1"/etc/apt/apt.conf.d/docker-clean' \
        --customize-hook='echo "Acquire::Languages \"none\";" >"$1"/etc/apt/apt.conf.d/docker-no-languages' \
        bookworm "$rootfs" >"$rootfs.log" 2>&1 \
        || { cat "$rootfs.log" >&2; echo "mmdebstrap failed (log above)" >&2; exit 1; }
    rm -f "$rootfs.log"
    $engine import --change 'CMD ["bash"]' "$rootfs" "$slim" >/dev/null
    rm -f "$rootfs"
fi

