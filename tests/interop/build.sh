#!/usr/bin/env bash
# Build the golang/groupcache test peer (tests/interop/go-peer) used by the
# Rust interoperability tests. Installs nothing; see install-deps.sh.
#
# Usage: tests/interop/build.sh [OUTPUT]
#   OUTPUT defaults to target/interop/go-peer under the repository root.
#   A relative OUTPUT is taken relative to the current directory.
#
# Builds in GOPATH mode against the Debian-packaged sources:
#   GO111MODULE=off GOPATH=/usr/share/gocode go build -o OUTPUT ./tests/interop/go-peer
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
gopath="${GROUPCACHE_GOPATH:-/usr/share/gocode}"
pkgs="golang-go golang-github-golang-groupcache-dev"

die() {
    echo "build.sh: error: $*" >&2
    echo "build.sh: install the Debian packages with: apt-get install -y --no-install-recommends $pkgs" >&2
    echo "build.sh: (or run tests/interop/install-deps.sh as root)" >&2
    exit 1
}

command -v go >/dev/null 2>&1 || die "'go' not found on PATH (package golang-go)"
[ -f "$gopath/src/github.com/golang/groupcache/http.go" ] ||
    die "golang/groupcache sources not found under $gopath/src/github.com/golang/groupcache (package golang-github-golang-groupcache-dev)"
[ -d "$gopath/src/github.com/golang/protobuf/proto" ] ||
    die "golang/protobuf sources not found under $gopath/src/github.com/golang/protobuf (package golang-github-golang-protobuf-1-3-dev, a dependency of golang-github-golang-groupcache-dev)"

out="${1:-$repo_root/target/interop/go-peer}"
case "$out" in
    /*) ;;
    *) out="$PWD/$out" ;;
esac
mkdir -p "$(dirname "$out")"

cd "$repo_root"
GO111MODULE=off GOPATH="$gopath" GOFLAGS= go build -o "$out" ./tests/interop/go-peer ||
    die "go build failed"
echo "built $out ($(go version))"
