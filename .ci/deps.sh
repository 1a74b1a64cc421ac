#!/bin/sh
# Install every Debian 12 package tollgate needs to build, test and benchmark.
# Runs as root (CI, a fresh container) or through sudo when available.
# --list prints the package names only (.ci/run installs them itself).
set -eu
PKGS="build-essential cmake pkg-config git curl ca-certificates openssl procps
      libuv1-dev libnghttp2-dev node-llhttp libssl-dev libjansson-dev libhiredis-dev libcmocka-dev
      redis-server nghttp2-client python3 python3-pytest python3-httpx python3-h2 python3-redis
      python3-jwt clang libclang-rt-14-dev"
if [ "${1:-}" = "--list" ]; then
    echo $PKGS
    exit 0
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
