#!/usr/bin/env bash
# Runs keyforge's test suite, the Docker tests included, on a Debian machine.
#
#   bash tests/run.sh                  # everything
#   bash tests/run.sh -m "not docker"  # no Docker at all (no engine started, no images built)
#   bash tests/run.sh tests/unit -x    # any pytest arguments pass through
#
# It installs what the tests need and is safe to run again on the same machine:
#   1. Debian packages (Docker engine, Compose, mmdebstrap, OpenSSH, rsync...) with apt, only
#      when one is missing;
#   2. a virtual environment .venv with keyforge installed editable with its test extras, and
#      .venv/wheelhouse with wheels of keyforge's dependencies, both remade only when
#      pyproject.toml changes;
#   3. a Docker engine, started in the background when none answers (log: $KEYFORGE_DOCKERD_LOG);
#   4. the test images (docker/build.sh: local base image, no registry needed);
#   5. pytest. Its exit status is this script's; "no tests ran" counts as a failure.
#
# Environment: PYTHON (interpreter for the venv, default python3), KEYFORGE_VENV (default .venv),
# KEYFORGE_DOCKERD_LOG (default /tmp/keyforge-dockerd.log). The tests get KEYFORGE_WHEELHOUSE:
# wheels of keyforge's declared dependencies, for the wheel test's own venv.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

python=${PYTHON:-python3}
venv=${KEYFORGE_VENV:-$root/.venv}
dockerd_log=${KEYFORGE_DOCKERD_LOG:-/tmp/keyforge-dockerd.log}
apt_packages=(docker.io docker-compose mmdebstrap openssh-client openssh-server rsync zstd age b3sum acl attr
    postgresql mariadb-server mariadb-client sqlite3
    iptables systemd)

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
# The classic image builder: it takes local base images as they are and needs no buildx.
export DOCKER_BUILDKIT=0
# This script brings Docker up, so a Docker test that cannot reach it is a failure, not a skip.
export KEYFORGE_REQUIRE_DOCKER=1

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'tests/run.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "must run as root (or with sudo) to $*"
    fi
}

missing_packages() {
    local pkg
    for pkg in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || printf '%s\n' "$pkg"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    if [[ -z $missing ]]; then
        return
    fi
    say "apt: installing $(echo $missing)"
    # No service may start from a package's install script: there is no init system to run
    # it, and a failed start would fail the install. dockerd is started below, by hand.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 0755 "$policy"
        made_policy=1
    fi
    local status=0
    as_root apt-get update -q || status=$?
    if [[ $status -eq 0 ]]; then
        # shellcheck disable=SC2086  # one package a word
        as_root apt-get install -y -q --no-install-recommends $missing || status=$?
    fi
    if [[ -n $made_policy ]]; then
        as_root rm -f "$policy"
    fi
    [[ $status -eq 0 ]] || die "apt failed (exit $status)"
}

setup_venv() {
    local stamp=$venv/.keyforge-installed want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" && -d $venv/wheelhouse ]]; then
        return
    fi
    say "venv: $venv with keyforge[test]"
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q -e '.[test]'
    # The wheel test installs keyforge into a venv of its own with exactly the declared
    # dependencies and no index: their wheels, and nothing else, wait here.
    say "wheelhouse: keyforge's dependencies in $venv/wheelhouse"
    rm -rf "$venv/wheelhouse"
    "$venv/bin/python" -m pip wheel -q --wheel-dir "$venv/wheelhouse" "$root"
    rm -f "$venv/wheelhouse"/keyforge-*.whl
    printf '%s' "$want" >"$stamp"
}

docker_answers() { docker info >/dev/null 2>&1; }

stop_orphaned_containerd() {
    local pidfile=/var/run/docker/containerd/containerd.pid pid waited=0
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == containerd ]]; then
        say "docker: stopping containerd $pid left behind by an earlier dockerd"
        as_root kill "$pid" 2>/dev/null || true
        while [[ -e /proc/$pid ]] && ((waited < 10)); do
            sleep 1
            waited=$((waited + 1))
        done
        [[ ! -e /proc/$pid ]] || as_root kill -9 "$pid" 2>/dev/null || true
    fi
    as_root rm -f "$pidfile"
}

wait_for_docker() {
    # $1: dockerd's pid, or "" when it is not ours
    local pid=$1 waited=0
    until docker_answers; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null && ! pgrep -x dockerd >/dev/null; then
            tail -n 30 "$dockerd_log" >&2 || true
            die "dockerd stopped before it answered"
        fi
        if ((waited >= 60)); then
            [[ -z $pid ]] || tail -n 30 "$dockerd_log" >&2 || true
            die "no answer from dockerd within 60 s ('docker info' as $(id -un))"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

start_docker() {
    if docker_answers; then
        return
    fi
    command -v dockerd >/dev/null || die "dockerd not found (apt package docker.io)"
    if pgrep -x dockerd >/dev/null; then
        say "docker: waiting for the dockerd that is starting"
        wait_for_docker ""
        return
    fi
    # A dockerd killed earlier (say, with the machine's previous session) leaves its pid file,
    # and the pid may by now belong to another process: dockerd would then refuse to start.
    # Its containerd may have outlived it too, and then stalls the new dockerd's start: end
    # that one process, named by dockerd's own pid file.
    as_root rm -f /var/run/docker.pid
    stop_orphaned_containerd
    say "docker: starting dockerd in the background (log: $dockerd_log)"
    # Its own session, no terminal and no inherited descriptors, so it neither holds the
    # caller's output open nor dies with it.
    as_root setsid nohup dockerd </dev/null >"$dockerd_log" 2>&1 &
    wait_for_docker "$!"
}

wants_docker() {
    # '-m "not docker"' needs neither the engine nor the images.
    local arg
    for arg in "$@"; do
        [[ $arg == "not docker" ]] && return 1
    done
    return 0
}

remove_lab_leftovers() {
    # A run killed half-way (or a killed dockerd, which restores its networks on restart) can
    # leave lab containers and the lab network behind; the network's fixed subnet would then
    # refuse the next lab. The tests remove their own; this catches the rest, before and after.
    docker_answers || return 0
    local ids
    ids=$(docker ps -aq --filter label=org.keyforge.test=lab)
    # shellcheck disable=SC2086  # one id a word
    [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1 || true
    ids=$(docker network ls -q --filter label=org.keyforge.test=lab)
    # shellcheck disable=SC2086
    [[ -z $ids ]] || docker network rm $ids >/dev/null 2>&1 || true
}

install_packages
setup_venv
if wants_docker "$@"; then
    start_docker
    remove_lab_leftovers
    trap remove_lab_leftovers EXIT
    say "docker: building the test images"
    PYTHON="$venv/bin/python" bash docker/build.sh
fi

export KEYFORGE_WHEELHOUSE=$venv/wheelhouse
say "pytest $*"
status=0
"$venv/bin/python" -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "tests/run.sh: error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
