#!/bin/sh
# The real programs the tests run (`make test`): headless Chromium for the
# page tests, Prometheus for the remote-write test, InfluxDB 1.x for the
# subscription test, PostgreSQL for the
# ledger's conformance suite, the replicas and the second run of the
# end-to-end suite, and iproute2's `ip` for the replica whose network a test
# cuts (a network namespace: that test needs root), and podman (with runc,
# its netavark network stack and the iptables it sets up container
# networks with, mmdebstrap for base images made from
# Debian's packages, and podman-compose) for the image and compose tests:
# Debian's packages `chromium`, `prometheus`, `influxdb`, `postgresql`,
# `iproute2`, `podman`, `runc`, `netavark`, `iptables`, `aardvark-dns`, `mmdebstrap`
# and `podman-compose`. Finds them, or installs the missing ones when
# this user may (root, or sudo without a password; their services are not
# started), or stops at once naming the one command to run.
# With package names as arguments, only those are found or installed.
# CHROMIUM=/path, PROMETHEUS=/path, INFLUXD=/path and PG_BIN=/folder override the search.
set -eu

# package:binary:override-variable
wanted="chromium:/usr/bin/chromium:CHROMIUM prometheus:/usr/bin/prometheus:PROMETHEUS influxdb:/usr/bin/influxd:INFLUXD postgresql:/usr/lib/postgresql/*/bin/pg_ctl:PG_BIN iproute2:/usr/sbin/ip:IP podman:/usr/bin/podman:PODMAN runc:/usr/sbin/runc:RUNC netavark:/usr/lib/podman/netavark:NETAVARK iptables:/usr/sbin/iptables:IPTABLES aardvark-dns:/usr/lib/podman/aardvark-dns:AARDVARK mmdebstrap:/usr/bin/mmdebstrap:MMDEBSTRAP podman-compose:/usr/bin/podman-compose:PODMAN_COMPOSE"

present() {
    pattern=$1 override=$2
    eval "path=\${$override:-}"
    if [ -n "$path" ] && { [ -x "$path" ] || [ -x "$path/pg_ctl" ]; }; then
        return 0
    fi
    for candidate in $pattern; do
        if [ -x "$candidate" ]; then
            return 0
        fi
    done
    return 1
}

missing=""
for entry in $wanted; do
    package=${entry%%:*} rest=${entry#*:}
    # Packages named as arguments: only those (`make image` needs podman
    # and mmdebstrap, not a browser).
    if [ "$#" -gt 0 ]; then
        case " $* " in *" $package "*) ;; *) continue ;; esac
    fi
    binary=${rest%%:*} override=${rest#*:}
    present "$binary" "$override" || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

install="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "make test needs$missing; install with:" >&2
    echo "    sudo $install" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs$missing and this is not a Debian system: install them and" >&2
    echo "set CHROMIUM / PROMETHEUS to their binaries" >&2
    exit 1
fi
echo "installing Debian's$missing for the tests ($install)"
# Their services are not started: the tests run their own instances.
policy=/usr/sbin/policy-rc.d
made_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $as_root tee "$policy" >/dev/null
    $as_root chmod +x "$policy"
    made_policy=yes
fi
status=0
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $as_root $install >/dev/null 2>&1 \
    || { $as_root apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive $as_root $install >/dev/null; } \
    || status=$?
[ "$made_policy" = yes ] && $as_root rm -f "$policy"
if [ "$status" -ne 0 ]; then
    echo "installing$missing failed; run: sudo $install" >&2
    exit 1
fi
