#!/usr/bin/env bash
# Install what tests/interop/build.sh needs: the Go toolchain and the
# golang/groupcache sources (GOPATH layout under /usr/share/gocode) from Debian.
# golang-github-golang-groupcache-dev pulls golang-github-golang-protobuf-1-3-dev;
# it is named explicitly so a missing dependency fails here, not at build time.
# Idempotent and non-interactive; must run as root (or via sudo).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps.sh: run as root" >&2; exit 1; }
    sudo="sudo -E"
fi

$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends \
    golang-go \
    golang-github-golang-groupcache-dev \
    golang-github-golang-protobuf-1-3-dev
go version
dpkg-query -W golang-go golang-github-golang-groupcache-dev golang-github-golang-protobuf-1-3-dev
