#!/usr/bin/env bash
# The test command: installs what the tests need (Go and golang/groupcache from Debian's packages
# for the interoperability tests; Prometheus and promtool for the Kubernetes example's metrics
# tests), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v go >/dev/null 2>&1 || [ ! -f /usr/share/gocode/src/github.com/golang/groupcache/http.go ]; then
    if [ "$(id -u)" = 0 ]; then
        tests/interop/install-deps.sh
    else
        echo "WARNING: the Go interoperability tests need Go and golang/groupcache:" >&2
        echo "WARNING:   sudo tests/interop/install-deps.sh" >&2
    fi
fi

# Prometheus and promtool, for the Kubernetes example's metrics tests; PostgreSQL, for its database
# tests (each starts a server of its own with initdb and pg_ctl, on 127.0.0.1 and a free port,
# which it can stop and start again; as root they run it as the `postgres` user).
# kubectl (Debian's kubernetes-client where there is none) and schemathesis (PyPI), for its
# checks of the fake Kubernetes API server, the kustomize overlays and the OpenAPI document.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1 \
    || ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    || ! command -v kubectl >/dev/null 2>&1 || ! command -v schemathesis >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        examples/kubernetes-service-discovery/scripts/install-test-deps.sh
    else
        echo "WARNING: the Kubernetes example's tests need Prometheus, promtool, PostgreSQL," >&2
        echo "WARNING: kubectl and schemathesis:" >&2
        echo "WARNING:   sudo examples/kubernetes-service-discovery/scripts/install-test-deps.sh" >&2
    fi
fi
# Where the database tests find initdb and pg_ctl (the newest installed PostgreSQL).
if [ -z "${GROUPCACHE_TEST_PG_BINDIR:-}" ]; then
    pg_bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$pg_bindir" ]; then
        export GROUPCACHE_TEST_PG_BINDIR="$pg_bindir"
    fi
fi

# No file-level import loops in the library, the bench, the example or the tests' harness (the
# layout's rule: a folder per subsystem, each file importing only what sits below it).
if command -v python3 >/dev/null 2>&1; then
    python3 scripts/import_loops.py groupcache/src bench/src \
        examples/kubernetes-service-discovery/src tests/src
elif [ "${CI:-}" = true ]; then
    echo "ERROR: python3 is needed for scripts/import_loops.py" >&2
    exit 1
else
    echo "WARNING: python3 not found; the import-loop check (scripts/import_loops.py) is skipped" >&2
fi

# iproute2 and nftables, for the partition tests (network namespaces cut by nftables drop rules;
# they need root, so without it they are skipped, loudly).
if ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iproute2 nftables
    else
        echo "WARNING: the partition tests need root, iproute2 and nftables:" >&2
        echo "WARNING:   sudo apt-get install iproute2 nftables, then run this script as root" >&2
    fi
fi

# The golang/groupcache test peer (the tests build it too, if this step was skipped).
if command -v go >/dev/null 2>&1; then
    tests/interop/build.sh
fi

# The attack tests (tests/tests/attacks.rs) hold 1,000 connections at once, on both ends.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Compile first, without a deadline (a cold build of the Kubernetes example takes minutes on two
# cores); then run, with one: a hung test must fail in minutes, not use up CI's whole time.
cargo test --workspace --locked --no-run "$@"
timeout 1200 cargo test --workspace --locked "$@"
