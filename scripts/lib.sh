# Sourced by scripts/dev, scripts/test, scripts/lock and .ci/run: virtual environments made from a lock
# (docs/dependencies.md). Nothing here resolves versions: every package comes pinned, with its hashes.

# uv, the installer, from its own lock (requirements/tools.txt) into .venv-tools; prints its path.
tools_uv() {
    local want
    want=$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' requirements/tools.txt)
    if [ "$(.venv-tools/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
        echo "installing uv $want into .venv-tools (requirements/tools.txt)" >&2
        rm -rf .venv-tools
        # A plain folder, not a venv: the machine's pip puts the wheel's binary in .venv-tools/bin.
        "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore --require-hashes \
            --no-deps --only-binary :all: --target .venv-tools -r requirements/tools.txt \
            2> >(grep -v "^WARNING: Location '.*' is ignored" >&2) >&2
    fi
    echo .venv-tools/bin/uv
}

# venv_sync DIR PYTHON LOCK EDITABLE [ALSO_GOOD_LOCK]
#   Make DIR hold exactly what LOCK pins (uv pip sync removes anything else), plus this project installed in
#   place when EDITABLE is "editable", then stamp it. A venv whose stamp matches (the Python version, LOCK's
#   and pyproject.toml's digests) is left as it is; so is one stamped from ALSO_GOOD_LOCK (a superset of
#   LOCK at the same versions: scripts/dev runs in the venv scripts/test made).
venv_sync() {
    local dir=$1 python=$2 lock=$3 editable=$4 also=${5:-}
    local version uv
    version=$("$python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')
    _stamp() { echo "$version $1 $(cat "$1" pyproject.toml | sha256sum | cut -c1-16) $editable"; }
    if [ -f "$dir/.lock-stamp" ]; then
        local have
        have=$(cat "$dir/.lock-stamp")
        if [ "$have" = "$(_stamp "$lock")" ] || { [ -n "$also" ] && [ "$have" = "$(_stamp "$also")" ]; }; then
            return 0
        fi
    fi
    uv=$(tools_uv)
    if [ "$("$dir/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))' 2>/dev/null)" \
            != "$version" ]; then
        echo "creating $dir with Python $version"
        rm -rf "$dir"
        "$uv" venv --quiet --python "$python" "$dir"
    fi
    echo "installing $lock into $dir"
    rm -f "$dir/.lock-stamp"
    "$uv" pip sync --quiet --python "$dir/bin/python" --require-hashes --only-binary :all: "$lock"
    if [ "$editable" = editable ]; then
        # The build backend is in the lock; no isolated build environment, so nothing unpinned is fetched.
        "$uv" pip install --quiet --python "$dir/bin/python" --no-deps --no-build-isolation --editable .
    fi
    "$uv" pip check --quiet --python "$dir/bin/python"
    _stamp "$lock" > "$dir/.lock-stamp"
}

# find_python VERSION: the interpreter for Python VERSION (3.12, ...) on PATH or installed by pyenv, or nothing.
find_python() {
    if "python$1" -c 1 >/dev/null 2>&1; then command -v "python$1"; return; fi
    ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -1
}
