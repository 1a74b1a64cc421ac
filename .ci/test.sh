#!/bin/sh
# The whole test suite: a short libFuzzer run of every fuzz target, then unit
# tests (cmocka) and integration tests (pytest against the real binary, the
# demo upstream and real clients), first on the normal build, then on the
# ASan+UBSan build.
set -eu
cd "$(dirname "$0")/.."
sh .ci/deps.sh
sh .ci/build.sh asan
echo "== fuzz smoke (libFuzzer, ASan+UBSan)"
sh .ci/fuzz.sh
echo "== tests: release build"
(cd build && ctest --output-on-failure)
echo "== tests: ASan+UBSan build"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure)
