#!/bin/sh
# The whole test suite: a short libFuzzer run of every fuzz target, then unit
# tests (cmocka) and integration tests (pytest against the real binary, the
# demo upstream and real clients), first on the normal build, then on the
# ASan+UBSan build.
set -eu
cd "$(dirname "$0")/.."
sh .ci/deps.sh
sh .ci/build.sh asan
# One Redis for the suite on a free loopback port (the quota tests that do not
# kill or pause Redis share it; the fault tests start their own).
REDIS_PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REDIS_DIR=$(mktemp -d /tmp/tollgate-test-redis.XXXXXX)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$REDIS_DIR" \
    >"$REDIS_DIR/redis.log" 2>&1 &
REDIS_PID=$!
trap 'kill "$REDIS_PID" 2>/dev/null || true; rm -rf "$REDIS_DIR"' EXIT INT TERM
i=0
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "redis-server did not start" >&2; cat "$REDIS_DIR/redis.log" >&2; exit 1; }
    sleep 0.1
done
export TG_TEST_REDIS_PORT="$REDIS_PORT"
echo "== redis-server on 127.0.0.1:$REDIS_PORT for the quota tests"
echo "== fuzz smoke (libFuzzer, ASan+UBSan)"
sh .ci/fuzz.sh
echo "== tests: release build"
(cd build && ctest --output-on-failure)
echo "== tests: ASan+UBSan build"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure)
