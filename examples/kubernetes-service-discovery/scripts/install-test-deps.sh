#!/usr/bin/env bash
# Install what the example's tests need: Prometheus and promtool (/usr/bin/prometheus,
# /usr/bin/promtool) from Debian's `prometheus` package, and PostgreSQL (initdb, pg_ctl and
# pg_stat_statements in /usr/lib/postgresql/*/bin) from Debian's `postgresql` package. The tests
# start their own Prometheus and PostgreSQL servers on free loopback ports with temporary
# directories; they never use the packaged services, so those are stopped from starting here
# (policy-rc.d) where that is possible.
# Idempotent and non-interactive; must run as root (or via sudo).
set -euo pipefail

have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && have_postgres; then
    prometheus --version 2>&1 | head -n 1
    ls -d /usr/lib/postgresql/*/bin
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

$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends prometheus postgresql
prometheus --version 2>&1 | head -n 1
promtool --version 2>&1 | head -n 1
ls -d /usr/lib/postgresql/*/bin
