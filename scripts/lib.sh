# Sourced by scripts/dev, scripts/test, scripts/lock and .ci/run: virtual environments made from a lock
# (docs/dependencies.md). Nothing here resolves versions: every package comes pinned, with its hashes.

# pip's warnings about this machine's missing index folders are noise; the rest goes to stderr.
_quiet_pip() {
    "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2) >&2
}

# tools_uv: uv, the installer, from its own lock (requirements/tools.txt) into .venv-tools; prints its path.
# Fails, saying why, when it cannot be installed.
tools_uv() {
    local want python=${PYTHON:-python3}
    want=$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' requirements/tools.txt)
    if [ "$(.venv-tools/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
        echo "installing uv $want into .venv-tools (requirements/tools.txt)" >&2
        rm -rf .venv-tools
        local pip_args=(install --quiet --disable-pip-version-check --no-input --root-user-action=ignore
                        --require-hashes --no-deps --only-binary :all: -r requirements/tools.txt)
        if "$python" -m pip --version >/dev/null 2>&1; then
            # A plain folder, not a venv: the interpreter's pip puts the wheel's binary in .venv-tools/bin.
            PIP_REQUIRE_VIRTUALENV=false _quiet_pip "$python" -m pip "${pip_args[@]}" --target .venv-tools ||
                { echo "could not install uv from requirements/tools.txt (see above)" >&2; return 1; }
        else  # an interpreter without pip (a venv made by uv, say): a venv of its own, with pip
            { "$python" -m venv .venv-tools && _quiet_pip .venv-tools/bin/python -m pip "${pip_args[@]}"; } ||
                { echo "could not install uv with $python: it has neither pip nor venv" >&2; return 1; }
        fi
        if [ "$(.venv-tools/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
            echo "uv $want did not install into .venv-tools" >&2
            return 1
        fi
    fi
    echo .venv-tools/bin/uv
}

# venv_sync DIR PYTHON LOCK EDITABLE [SUPERSET_LOCK]
#   Make DIR hold exactly what LOCK pins, plus this project installed in place when EDITABLE is "editable",
#   then stamp it (the Python version, LOCK's and pyproject.toml's digests). A venv whose stamp matches is
#   left as it is, so a second run costs nothing; so is one stamped from SUPERSET_LOCK (a superset of LOCK at
#   the same versions: scripts/dev runs in the venv scripts/test made). A venv stamped from a lock this one
#   is a superset of is completed in place (scripts/test after scripts/dev, which may still be running from
#   it). Any other venv (no stamp: made by hand, or an install that was killed; another lock or Python) is
#   made anew, so that nothing stale, half-installed or from the system's site-packages stays in it.
#   Runs under a lock file: two scripts starting at once do not install into the same venv together.
venv_sync() {
    local dir=$1 python=$2 lock=$3 editable=$4 superset=${5:-}
    local version uv
    version=$("$python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))') ||
        { echo "cannot run $python" >&2; return 1; }
    _stamp() { echo "$version $1 $(cat "$1" pyproject.toml | sha256sum | cut -c1-16) $editable"; }
    (
        if command -v flock >/dev/null; then flock 9; fi
        have=$(cat "$dir/.lock-stamp" 2>/dev/null || true)
        if [ "$have" = "$(_stamp "$lock")" ] || { [ -n "$superset" ] && [ "$have" = "$(_stamp "$superset")" ]; }; then
            exit 0
        fi
        uv=$(tools_uv) || exit 1
        if [ "$lock" = requirements/test.txt ] && [ "$have" = "$(_stamp requirements/run.txt)" ]; then
            echo "completing $dir from $lock"
        else
            [ -e "$dir" ] && echo "$dir was not made from $lock as it is now: making it anew"
            echo "creating $dir with Python $version from $lock"
            rm -rf "$dir"
            "$uv" venv --quiet --python "$python" "$dir" || exit 1
        fi
        rm -f "$dir/.lock-stamp"
        "$uv" pip sync --quiet --python "$dir/bin/python" --require-hashes --only-binary :all: "$lock" || exit 1
        if [ "$editable" = editable ]; then
            # The build backend is in the lock; no isolated build environment, so nothing unpinned is fetched.
            "$uv" pip install --quiet --python "$dir/bin/python" --no-deps --no-build-isolation --editable . ||
                exit 1
        fi
        "$uv" pip check --quiet --python "$dir/bin/python" || exit 1
        _stamp "$lock" > "$dir/.lock-stamp"
    ) 9>"$dir.lock-file"
}

# find_python VERSION: the interpreter for Python VERSION (3.12, ...) on PATH or installed by pyenv, or nothing.
find_python() {
    if "python$1" -c 1 >/dev/null 2>&1; then command -v "python$1"; return; fi
    ls -d "${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -1
}
