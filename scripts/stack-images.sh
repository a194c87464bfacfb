#!/bin/sh
# `make stack-images`: the images the compose files in
# examples/project_usage run beside os-credits (InfluxDB, Prometheus,
# PostgreSQL, nginx), made from Debian's packages for machines that reach
# no container registry (docker/stack/*.Containerfile, on
# debian:bookworm-slim made as scripts/engine.sh says). A site that reaches
# Docker Hub needs none of this: the compose files name the official
# images by default.
#
#   scripts/stack-images.sh         builds the four and prints the variables
#                                   that point the compose files at them
#
# Tags: os-credits-stack/influxdb:1.6, os-credits-stack/prometheus:2.42,
# os-credits-stack/postgres:15, os-credits-stack/nginx:1.22 (the versions
# Debian bookworm ships). An image already there is kept.
set -eu
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"

. scripts/engine.sh

format=
[ "$engine" = podman ] && format="--format docker --pull=never"
for entry in INFLUXDB_IMAGE:influxdb:1.6 PROMETHEUS_IMAGE:prometheus:2.42 \
    POSTGRES_IMAGE:postgres:15 NGINX_IMAGE:nginx:1.22; do
    variable=${entry%%:*} rest=${entry#*:}
    name=${rest%%:*}
    tag=os-credits-stack/$rest
    if ! has_image "$tag"; then
        echo "building $tag from Debian's packages" >&2
        # shellcheck disable=SC2086
        $engine build -q $format -t "$tag" -f "docker/stack/$name.Containerfile" docker/stack >/dev/null
    fi
    echo "$variable=$tag"
done
