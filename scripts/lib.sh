# Sourced by scripts/dev, scripts/test, scripts/lock and .ci/run: virtual environments made from a lock
# (docs/dependencies.md). Nothing here resolves versions: every package comes pinned, with its hashes.

# pip, without the warnings this machine's pip configuration prints for index folders that do not exist.
_pip() {
    "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

# venv_sync DIR PYTHON LOCK EDITABLE [ALSO_GOOD_LOCK]
#   Make DIR hold what LOCK pins (and, when EDITABLE is "editable", this project installed in place), then
#   stamp it. A venv whose stamp matches (LOCK's and pyproject.toml's digests, the Python version) is left
#   as it is, so a second run costs nothing; one stamped from ALSO_GOOD_LOCK (a superset of LOCK at the same
#   versions) is good too. Any other venv is made anew, so that nothing a former lock installed stays in it.
venv_sync() {
    local dir=$1 python=$2 lock=$3 editable=$4 also=${5:-}
    local version
    version=$("$python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')
    _stamp() { echo "$version $1 $(cat "$1" pyproject.toml | sha256sum | cut -c1-16) $editable"; }
    if [ -f "$dir/.lock-stamp" ]; then
        local have
        have=$(cat "$dir/.lock-stamp")
        if [ "$have" = "$(_stamp "$lock")" ] || { [ -n "$also" ] && [ "$have" = "$(_stamp "$also")" ]; }; then
            return 0
        fi
        echo "$dir was not made from $lock as it is now: making it anew"
        rm -rf "$dir"
    elif [ -e "$dir" ]; then
        echo "$dir was not made from a lock: making it anew"
        rm -rf "$dir"
    fi
    echo "creating $dir with Python $version from $lock"
    "$python" -m venv "$dir"
    _pip "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --require-hashes --no-deps --only-binary :all: -r "$lock"
    if [ "$editable" = editable ]; then
        # The build backend is in the lock; no isolated build environment, so nothing unpinned is fetched.
        _pip "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            --no-deps --no-build-isolation --editable .
    fi
    "$dir/bin/python" -m pip check >/dev/null || { "$dir/bin/python" -m pip check; return 1; }
    _stamp "$lock" > "$dir/.lock-stamp"
}

# find_python VERSION: the interpreter for Python VERSION (3.12, ...) on PATH or installed by pyenv, or nothing.
find_python() {
    if "python$1" -c 1 >/dev/null 2>&1; then command -v "python$1"; return; fi
    ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -1
}
