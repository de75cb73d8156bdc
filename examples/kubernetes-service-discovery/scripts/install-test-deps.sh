#!/usr/bin/env bash
# Install what the example's tests need: Prometheus and promtool (/usr/bin/prometheus,
# /usr/bin/promtool) from Debian's `prometheus` package, PostgreSQL (initdb, pg_ctl and
# pg_stat_statements in /usr/lib/postgresql/*/bin) from Debian's `postgresql` package, `kubectl`
# from Debian's `kubernetes-client` package where the machine has none (it checks the fake API
# server and builds the kustomize overlays), and schemathesis from PyPI (`pip install`). The tests
# start their own Prometheus and PostgreSQL servers on free loopback ports with temporary
# directories; they never use the packaged services, so those are stopped from starting here
# (policy-rc.d) where that is possible.
# Idempotent and non-interactive; must run as root (or via sudo).
set -euo pipefail

have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && have_postgres \
    && command -v kubectl >/dev/null 2>&1 && command -v schemathesis >/dev/null 2>&1; then
    prometheus --version 2>&1 | head -n 1
    ls -d /usr/lib/postgresql/*/bin
    kubectl version --client 2>&1 | head -n 1
    schemathesis --version
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-test-deps.sh: run as root" >&2; exit 1; }
    sudo="sudo -E"
fi

# Keep the package's maintainer scripts from starting its service (exit 101: "action forbidden"),
# unless the machine already has a policy of its own.
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
fi
cleanup() { if [ -n "$added_policy" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

packages="prometheus postgresql"
if ! command -v kubectl >/dev/null 2>&1; then
    packages="$packages kubernetes-client"
fi
if ! command -v schemathesis >/dev/null 2>&1 && ! command -v pip3 >/dev/null 2>&1; then
    packages="$packages python3-pip"
fi
$sudo apt-get update -q
# shellcheck disable=SC2086 # a list of package names
$sudo apt-get install -y -q --no-install-recommends $packages
if ! command -v schemathesis >/dev/null 2>&1; then
    # Debian's Python is "externally managed": pip needs leave to install beside it.
    $sudo pip3 install --quiet schemathesis 2>/dev/null \
        || $sudo pip3 install --quiet --break-system-packages schemathesis
fi
prometheus --version 2>&1 | head -n 1
promtool --version 2>&1 | head -n 1
ls -d /usr/lib/postgresql/*/bin
kubectl version --client 2>&1 | head -n 1
schemathesis --version
