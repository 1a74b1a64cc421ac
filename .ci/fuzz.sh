#!/bin/sh
# Fuzz smoke: build the libFuzzer targets with clang (ASan+UBSan) and run each
# for FUZZ_SECONDS (default 20) over its seed corpus.  Any crash, leak or
# oracle failure fails the run; the input that did it is left in build-fuzz/.
set -eu
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-20}
JOBS=$(nproc 2>/dev/null || echo 2)
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DTG_FUZZ=ON >/dev/null
cmake --build build-fuzz -j "$JOBS" --target fuzz_h1_head fuzz_chunked fuzz_jwt fuzz_audit_verify fuzz_sse_usage fuzz_redis_reply
export TG_TEST_DATA="$PWD/tests/data"
for t in h1_head chunked jwt audit_verify sse_usage redis_reply; do
    scratch="build-fuzz/corpus-$t"
    mkdir -p "$scratch"
    extra=""
    [ "$t" = h1_head ] && extra="-dict=fuzz/h1_head.dict"
    [ "$t" = jwt ] && extra="-dict=tests/data/jwt/fuzz_jwt.dict -max_len=8400"
    [ "$t" = sse_usage ] && extra="-dict=fuzz/sse_usage.dict -max_len=140000"
    echo "== fuzz_$t: ${SECS}s"
    # shellcheck disable=SC2086
    (cd build-fuzz && ./fuzz/fuzz_$t -max_total_time="$SECS" -rss_limit_mb=2048 \
        -print_final_stats=0 $(echo $extra | sed "s#=\([a-z]\)#=../\1#") \
        "../$scratch" "../fuzz/corpus/$t" 2>"fuzz-$t.log") ||
        { tail -40 "build-fuzz/fuzz-$t.log"; exit 1; }
    grep -E "^Done|DONE" "build-fuzz/fuzz-$t.log" | tail -1 || true
done
echo "fuzz smoke ok: 6 targets, no crash"
