#!/bin/sh
# Build tollgate: build/ (release with debug info) and, with "asan", build-asan/
# (AddressSanitizer + UndefinedBehaviorSanitizer).
set -eu
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$JOBS"
if [ "${1:-}" = "asan" ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTG_SANITIZE=address,undefined >/dev/null
    cmake --build build-asan -j "$JOBS"
fi
