#!/bin/sh
# The official influxdb 1.x image's first start, for the parts the compose
# files use: on an empty /var/lib/influxdb, InfluxDB is started on
# 127.0.0.1 only, INFLUXDB_DB is created, every
# /docker-entrypoint-initdb.d/*.iql is run with the `influx` client, and
# InfluxDB is stopped again; then the command runs.
set -eu
if [ "${1:-}" = influxd ] && [ ! -f /var/lib/influxdb/meta/meta.db ] \
    && { [ -n "${INFLUXDB_DB:-}" ] || ls /docker-entrypoint-initdb.d/*.iql >/dev/null 2>&1; }; then
    INFLUXDB_HTTP_BIND_ADDRESS=127.0.0.1:8086 INFLUXDB_HTTP_HTTPS_ENABLED=false "$@" &
    pid=$!
    tries=0
    until influx -host 127.0.0.1 -port 8086 -execute "SHOW DATABASES" >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
            echo "influxdb did not start within 60 s for its first-start set-up" >&2
            exit 1
        fi
        sleep 1
    done
    if [ -n "${INFLUXDB_DB:-}" ]; then
        influx -host 127.0.0.1 -port 8086 -execute "CREATE DATABASE \"$INFLUXDB_DB\""
    fi
    for f in /docker-entrypoint-initdb.d/*.iql; do
        [ -e "$f" ] || continue
        echo "$0: running $f"
        influx -host 127.0.0.1 -port 8086 -execute "$(cat "$f")"
    done
    kill "$pid"
    wait "$pid" || true
fi
exec "$@"
