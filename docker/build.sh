#!/usr/bin/env bash
# Builds the images the Docker tests run: keyforge/receiver:test and keyforge/sender:test.
#
#   bash docker/build.sh
#
# 1. wheelhouse/: keyforge's wheel and its dependencies' wheels for the images' Python (3.11),
#    so the images install keyforge without reaching a package index.
# 2. The base image: built locally with mmdebstrap when it is missing (no registry needed);
#    set KEYFORGE_BASE_IMAGE=debian:bookworm to use the registry's image instead.
# 3. Both images, from that base, with Docker's layer cache.
#
# Environment: PYTHON (default python3), KEYFORGE_BASE_IMAGE, KEYFORGE_SUITE (default bookworm).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-python3}
suite=${KEYFORGE_SUITE:-bookworm}
base_image=${KEYFORGE_BASE_IMAGE:-keyforge/debian:$suite}
# The images' own Python: the wheels must match it, not the Python running this script.
image_python=${KEYFORGE_IMAGE_PYTHON:-3.11}
wheelhouse=$here/wheelhouse

say() { printf 'build: %s\n' "$*" >&2; }

build_wheelhouse() {
    mkdir -p "$wheelhouse"
    # Only one keyforge wheel may be there, or pip could pick a stale one.
    rm -f "$wheelhouse"/keyforge-*.whl
    say "keyforge wheel"
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$wheelhouse" "$root"

    local deps arch stamp
    deps=$("$python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
    arch=$(uname -m)
    stamp="python=$image_python arch=$arch deps=$(printf '%s ' $deps)"
    if [[ -f $wheelhouse/.deps && $(cat "$wheelhouse/.deps") == "$stamp" ]]; then
        say "dependency wheels already there"
        return
    fi
    say "dependency wheels for Python $image_python on $arch"
    # shellcheck disable=SC2086  # one requirement per word
    "$python" -m pip download --quiet --dest "$wheelhouse" --only-binary=:all: \
        --implementation cp --python-version "$image_python" \
        --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
        --platform "manylinux2014_$arch" --platform "linux_$arch" \
        $deps
    printf '%s' "$stamp" >"$wheelhouse/.deps"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

build_base_image() {
    if image_exists "$base_image"; then
        say "base image $base_image already there"
        return
    fi
    if [[ $base_image != keyforge/* ]]; then
        say "base image $base_image will come from its registry"
        return
    fi
    say "base image $base_image with mmdebstrap ($suite)"
    local tmp
    tmp=$(mktemp -d)
    # A file rather than a pipe, so a failed bootstrap never leaves a half-imported image.
    if ! mmdebstrap --quiet --variant=apt \
        --include=openssh-server,openssh-client,rsync,python3,python3-venv,xauth,age \
        "$suite" "$tmp/base.tar"; then
        rm -rf "$tmp"
        say "mmdebstrap failed"
        return 1
    fi
    docker import "$tmp/base.tar" "$base_image" >/dev/null
    rm -rf "$tmp"
}

build_image() {
    local role=$1
    say "image keyforge/$role:test"
    docker build --quiet --file "$here/Dockerfile.$role" --tag "keyforge/$role:test" \
        --build-arg "BASE_IMAGE=$base_image" "$here" >/dev/null
}

# The classic builder: it uses local base images as they are and needs no buildx plugin.
export DOCKER_BUILDKIT=0
build_wheelhouse
build_base_image
build_image receiver
build_image sender
say "done"
