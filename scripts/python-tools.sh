#!/bin/sh
# The Python tools the Python policies need, pinned, in a virtual
# environment of their own (target/python): componentize-py, which builds a
# policy into a component, and pytest, which runs its tests natively.
# Installed from PyPI on first use (`make policies`, `make test`); nothing
# outside the repository's target folder is touched.
set -eu
venv=${1:-target/python}
requirements="$(dirname "$0")/python-requirements.txt"
stamp="$venv/.installed"
if [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
    exit 0
fi
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "the Python policies need Python 3.11 or newer: apt-get install python3 python3-venv" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "the Python policies need Python 3.11 or newer (found $("$python" --version))" >&2
    exit 1
fi
if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    echo "cannot make a virtual environment; install it with: apt-get install python3-venv" >&2
    exit 1
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
