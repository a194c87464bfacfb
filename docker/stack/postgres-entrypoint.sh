#!/bin/sh
# The official postgres image's first start, for the parts the compose
# files use: an empty $PGDATA is initialised with POSTGRES_USER as its
# superuser (password POSTGRES_PASSWORD, required), password logins from
# any address (scram-sha-256), and the database POSTGRES_DB (default: the
# user's name). Then the command runs.
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    database=${POSTGRES_DB:-$user}
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "POSTGRES_PASSWORD is not set: the database would be open to every container" >&2
        exit 1
    fi
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$database" != postgres ]; then
        echo "CREATE DATABASE \"$database\" OWNER \"$user\";" \
            | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "$0: initialised $PGDATA with user $user and database $database"
fi
exec "$@"
