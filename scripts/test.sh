#!/usr/bin/env bash
# The test command: installs what the tests need (Go and golang/groupcache from Debian's packages,
# for the interoperability tests), then runs every test of the workspace.
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

# The golang/groupcache test peer (the tests build it too, if this step was skipped).
if command -v go >/dev/null 2>&1; then
    tests/interop/build.sh
fi

cargo test --workspace --locked "$@"
