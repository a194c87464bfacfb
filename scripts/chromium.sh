#!/bin/sh
# Finds headless Chromium for the page tests (`make test`), or installs
# Debian's `chromium` package when this user may (root, or sudo without a
# password). Otherwise stops at once and names the one command to run.
# CHROMIUM=/path/to/chromium overrides the search.
set -eu

found() {
    for candidate in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if found >/dev/null; then
    exit 0
fi

install="apt-get install -y --no-install-recommends chromium"
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "make test needs headless Chromium for the page tests; install it with:" >&2
    echo "    sudo $install" >&2
    echo "(or set CHROMIUM to a Chromium binary)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs headless Chromium and this is not a Debian system:" >&2
    echo "install Chromium and set CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
echo "installing Debian's chromium for the page tests ($install)"
# shellcheck disable=SC2086
$as_root $install >/dev/null 2>&1 \
    || { $as_root apt-get update >/dev/null && $as_root $install >/dev/null; } \
    || { echo "installing chromium failed; run: sudo $install" >&2; exit 1; }
found >/dev/null || { echo "chromium was installed but not found in /usr/bin" >&2; exit 1; }
