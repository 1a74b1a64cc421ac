#!/usr/bin/env bash
# bench/auth.sh - what authentication costs tollgate per request, on loopback.
#
# Part 1 (end to end, same method as bench/run.sh): tollgate, one worker,
# pinned to CPU 0; the demo upstream and h2load (h2c, -c 16 -m 16, one
# thread) on CPU 1; the proxy's CPU µs/req from /proc for five modes:
#   base       no auth block (baseline)
#   apikey     API key in Authorization: Bearer, "sha256:" entry (no pepper)
#   pepper     the same key, "hmac-sha256:" entry, api_key_pepper_env set
#   jwt-rs256  one RS256 JWT on every request (after the first: cache hits)
#   jwt-es256  one ES256 JWT on every request (cache hits)
# and two controls with no auth block that still send a credential header
# (tollgate drops it before forwarding), to separate the cost of carrying the
# header (HPACK: nghttp2 clients send Authorization as a never-indexed
# literal, so it is Huffman-decoded on every request) from authn itself:
#   hdr-key    no auth block, the API key header
#   hdr-rs256  no auth block, the RS256 token header
# Modes run ROUNDS times, interleaved (base apikey ... base apikey ...), each
# with a fresh tollgate; the table shows medians and the per-round deltas
# against that round's baseline.
#
# Part 2 (bench/jwt_verify_bench.c, built here against build/libtg_core.a):
# per-operation CPU of the uncached path h2load cannot drive (it sends the
# same headers on every request): tg_jwt_verify over N distinct tokens per
# algorithm, the authn miss path (cache miss + verify + cache put), a cache
# hit, tg_keyring_lookup, and OpenSSL's own cost for the same signatures
# (EVP_DigestVerify; EVP_PKEY_verify) as the floor.  Pinned to CPU 0.
#
# Keys and tokens are throwaway, generated per run by bench/auth_material.py
# (python3-jwt, python3-cryptography).  Writes bench/results/auth-latest.md.
#
# Environment knobs (all optional):
#   DURATION=8        seconds per measured run (each after a WARMUP=1 s warm-up)
#   ROUNDS=5          rounds of all the modes (3: quicker, noisier)
#   MODES="base apikey pepper jwt-rs256 jwt-es256 hdr-key hdr-rs256"
#                     subset/order (base is always run)
#   JWT_TOKENS=2000   distinct tokens per algorithm for the microbenchmark
#   PASSES=5          microbenchmark passes (the median is reported)
#   PROFILE=1         afterwards, one extra run per mode under
#                     `perf record -e cpu-clock`: µs/req per DSO and the symbols
#                     that grew most against base are appended to the report
#   PORT_BASE=27500, TOLLGATE_BIN, DEMO_BIN, RESULTS, KEEP_RUN_DIR=1   as in run.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-5}
JWT_TOKENS=${JWT_TOKENS:-2000}
PASSES=${PASSES:-5}
PROFILE=${PROFILE:-0}
PORT_BASE=${PORT_BASE:-27500}
TOLLGATE_BIN=${TOLLGATE_BIN:-$ROOT/build/tollgate}
DEMO_BIN=${DEMO_BIN:-$ROOT/build/tests/demo_upstream}
RESULTS=${RESULTS:-$BENCH_DIR/results/auth-latest.md}
PY=/usr/bin/python3
ALL_MODES="base apikey pepper jwt-rs256 jwt-es256 hdr-key hdr-rs256"
MODES=${MODES:-$ALL_MODES}

H2_CONNS=16 H2_STREAMS=16
PROXY_CPU=0 LOAD_CPU=1
LOG_TAG=auth-bench

# Targets (µs of CPU per request).
TARGET_APIKEY=2
TARGET_RS256=60

. "$BENCH_DIR/lib.sh"

# ------------------------------------------------------------------ setup ----
ensure_tools h2load curl taskset awk sort gcc
[ -x "$PY" ] || die "$PY missing (Debian python3)"
if ! "$PY" -c 'import jwt, cryptography' 2>/dev/null; then
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 ||
        die "need python3-jwt and python3-cryptography for $PY"
    log "installing python3-jwt python3-cryptography"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-jwt python3-cryptography >&2 ||
        die "apt-get install python3-jwt python3-cryptography failed"
fi
ensure_build
[ -f "$ROOT/build/libtg_core.a" ] && [ -f "$ROOT/build/libllhttp.a" ] ||
    die "build/libtg_core.a or build/libllhttp.a missing (build tollgate first)"
if [ "$(nproc)" -lt 2 ]; then
    log "WARNING: only $(nproc) CPU: proxy, upstream and load share CPU 0"
    LOAD_CPU=0
fi
case " $MODES " in *" base "*) ;; *) MODES="base $MODES" ;; esac
for m in $MODES; do
    case " $ALL_MODES " in *" $m "*) ;; *) die "unknown mode $m (known: $ALL_MODES)" ;; esac
done

for try in $(seq 0 9); do
    base=$((PORT_BASE + try * 100))
    port_open "$base" || port_open $((base + 1)) || break
    [ "$try" = 9 ] && die "no free port pair near $PORT_BASE; set PORT_BASE"
done
DEMO_PORT=$base TG_PORT=$((base + 1))

RUN_DIR=$(mktemp -d /tmp/tollgate-auth-bench.XXXXXX)
MAT=$RUN_DIR/material
log "run dir $RUN_DIR; demo :$DEMO_PORT, tollgate :$TG_PORT; ${ROUNDS} rounds x ${DURATION}s per mode"

log "generating keys, an API key and ${JWT_TOKENS} tokens per algorithm"
"$PY" "$BENCH_DIR/auth_material.py" "$MAT" "$JWT_TOKENS" || die "auth_material.py failed"
API_KEY=$(head -n1 "$MAT/apikey.txt")
RS_TOKEN=$(head -n1 "$MAT/tokens-RS256.txt")
ES_TOKEN=$(head -n1 "$MAT/tokens-ES256.txt")
PEPPER=$(head -n1 "$MAT/pepper.txt")

log "building bench/jwt_verify_bench.c"
(cd "$ROOT" && gcc -O2 -include proxy/banned.h -I. "$BENCH_DIR/jwt_verify_bench.c" \
    build/libtg_core.a build/libllhttp.a -luv -lnghttp2 -ljansson -lhiredis -lssl -lcrypto \
    -lpthread -o "$RUN_DIR/jwt_verify_bench") >&2 || die "building jwt_verify_bench failed"

declare -A FRAG=([base]= [apikey]=auth-apikey.json.in [pepper]=auth-pepper.json.in
                 [jwt-rs256]=auth-jwt.json.in [jwt-es256]=auth-jwt.json.in [hdr-key]= [hdr-rs256]=)
declare -A CRED=([base]= [apikey]=$API_KEY [pepper]=$API_KEY [jwt-rs256]=$RS_TOKEN
                 [jwt-es256]=$ES_TOKEN [hdr-key]=$API_KEY [hdr-rs256]=$RS_TOKEN)
declare -A DESC=([base]="no auth block"
                 [apikey]="API key, Bearer, sha256: entry"
                 [pepper]="API key, Bearer, hmac-sha256: entry + pepper"
                 [jwt-rs256]="JWT RS256, same token (cache hits)"
                 [jwt-es256]="JWT ES256, same token (cache hits)"
                 [hdr-key]="control: no auth block, API key header sent"
                 [hdr-rs256]="control: no auth block, RS256 token header sent")

# render_cfg MODE OUT: the base template with the mode's auth fragment.
render_cfg() {
    local frag=${FRAG[$1]} fragf=$RUN_DIR/frag-$1.json
    if [ -n "$frag" ]; then sed -e "s|@MAT@|$MAT|g" "$BENCH_DIR/conf/$frag" >"$fragf"
    else : >"$fragf"; fi
    sed -e "s|@PLAIN_PORT@|$TG_PORT|g" -e "s|@DEMO_PORT@|$DEMO_PORT|g" -e "s|@RUN_DIR@|$RUN_DIR|g" \
        "$BENCH_DIR/conf/tollgate-auth.json.in" |
        awk -v f="$fragf" '/^@AUTH@$/ { while ((getline l < f) > 0) print l; next } { print }' >"$2"
}

# start_tollgate MODE: sets TG_PID once the port is open and a request works.
start_tollgate() {
    local mode=$1 cfg=$RUN_DIR/tollgate-$1.json logf=$RUN_DIR/tollgate-$1.log code
    render_cfg "$mode" "$cfg"
    TOLLGATE_BENCH_PEPPER=$PEPPER taskset -c $PROXY_CPU "$TOLLGATE_BIN" -c "$cfg" >>"$logf" 2>&1 &
    TG_PID=$!
    PIDS+=("$TG_PID")
    wait_ports "$TG_PID" "$logf" "$TG_PORT"
    local url=http://127.0.0.1:$TG_PORT/v1/models hdr=()
    [ -n "${CRED[$mode]}" ] && hdr=(-H "authorization: Bearer ${CRED[$mode]}")
    code=$(curl -sS --max-time 5 --http2-prior-knowledge -o "$RUN_DIR/sanity.out" -w '%{http_code}' \
        "${hdr[@]}" "$url") || die "$mode: h2c GET via tollgate failed"
    [ "$code" = 200 ] && grep -q '"object":"list"' "$RUN_DIR/sanity.out" ||
        die "$mode: expected 200 with a model list, got $code: $(head -c 300 "$RUN_DIR/sanity.out")"
    if [ -n "${FRAG[$mode]}" ]; then # auth really is on: no credential, no entry
        code=$(curl -sS --max-time 5 --http2-prior-knowledge -o /dev/null -w '%{http_code}' "$url") || true
        [ "$code" = 401 ] || die "$mode: request without a credential got $code, not 401"
    fi
}

# ------------------------------------------------------------ end to end ----
taskset -c $LOAD_CPU "$DEMO_BIN" --host 127.0.0.1 --port "$DEMO_PORT" --quiet >"$RUN_DIR/demo.log" 2>&1 &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
wait_ports "$DEMO_PID" "$RUN_DIR/demo.log" "$DEMO_PORT"

URL=http://127.0.0.1:$TG_PORT/v1/models
for r in $(seq 1 "$ROUNDS"); do
    log "--- round $r/$ROUNDS"
    for m in $MODES; do
        start_tollgate "$m"
        H2LOAD_EXTRA=()
        [ -n "${CRED[$m]}" ] && H2LOAD_EXTRA=(-H "authorization: Bearer ${CRED[$m]}")
        measure h2c "$m.$r" "$TG_PID" "$URL"
        [ "${R[h2c|$m.$r|errs]}" = 0 ] || die "$m round $r: ${R[h2c|$m.$r|errs]} requests were not 2xx"
        stop_pid "$TG_PID"
    done
done

# -------------------------------------------------------- microbenchmark ----
log "--- microbenchmark (CPU $PROXY_CPU, ${JWT_TOKENS} tokens per algorithm, median of $PASSES passes)"
taskset -c $PROXY_CPU "$RUN_DIR/jwt_verify_bench" "$MAT" "$PASSES" >"$RUN_DIR/micro.tsv" ||
    die "jwt_verify_bench failed"
declare -A MU MUMIN
while IFS=$'\t' read -r name med mn ops; do
    MU[$name]=$med MUMIN[$name]=$mn
    log "$(printf '%-44s %9s us/op (min %s, %s ops)' "$name" "$med" "$mn" "$ops")"
done <"$RUN_DIR/micro.tsv"

# --------------------------------------------------------------- profile ----
# One more run per mode with tollgate under perf (cpu-clock: hardware counters
# may be unavailable).  Each symbol's share of the samples times the run's CPU
# µs/req gives its µs/req, so modes compare symbol by symbol.
# name_stripped FILE: perf gives bare addresses for static functions of
# stripped libraries (Debian's libnghttp2); name each after the start of the
# function that holds it, from the library's .eh_frame FDE ranges
# ("fn@0x196c0"), and merge the lines of one function.
name_stripped() {
    local lib path frames
    for lib in $(awk '$3 ~ /^0x[0-9a-f]+$/ && $2 !~ /^\[/ { print $2 }' "$1" | sort -u); do
        path=$(ldd "$TOLLGATE_BIN" | awk -v l="$lib" '$3 ~ /^\// { p = $3; cmd = "readlink -f " p; cmd | getline r; close(cmd)
                                                      n = r; sub(/.*\//, "", n); if (n == l) { print r; exit } }')
        [ -n "$path" ] || continue
        readelf --debug-dump=frames "$path" 2>/dev/null |
            awk -v l="$lib" '/ FDE / { split(substr($NF, 4), r, /\.\./); print l, r[1], r[2] }'
    done >"$RUN_DIR/fde.txt"
    awk 'FNR == NR { n++; lib[n] = $1; lo[n] = $2; hi[n] = $3; next }
         function hex(h,   i, c, v) { v = 0; h = tolower(h); sub(/^0x/, "", h)
             for (i = 1; i <= length(h); i++) { c = index("0123456789abcdef", substr(h, i, 1)) - 1; v = v * 16 + c }
             return v }
         { k = $2 " " substr($0, index($0, $3))
           if ($3 ~ /^0x[0-9a-f]+$/) { a = hex($3)
               for (i = 1; i <= n; i++) if (lib[i] == $2 && a >= hex(lo[i]) && a < hex(hi[i])) {
                   s = lo[i]; sub(/^0+/, "", s); k = $2 " fn@0x" s; break } }
           sum[k] += $1 }
         END { for (k in sum) print sum[k], k }' "$RUN_DIR/fde.txt" "$1" | sort -gr
}

declare -A PA # PA[authn|MODE], PA[hpack|MODE]: µs/req from the profiles
if [ "$PROFILE" = 1 ]; then
    command -v perf >/dev/null 2>&1 || die "PROFILE=1 needs perf (Debian linux-perf)"
    command -v readelf >/dev/null 2>&1 || die "PROFILE=1 needs readelf (Debian binutils)"
    for m in $MODES; do
        log "--- profiling $m (perf record -e cpu-clock)"
        start_tollgate "$m"
        H2LOAD_EXTRA=()
        [ -n "${CRED[$m]}" ] && H2LOAD_EXTRA=(-H "authorization: Bearer ${CRED[$m]}")
        perf record -q -e cpu-clock -F 4999 -p "$TG_PID" -o "$RUN_DIR/perf-$m.data" \
            -- sleep $((WARMUP + DURATION + 1)) >"$RUN_DIR/perf-$m.log" 2>&1 &
        perf_pid=$!
        sleep 0.5
        measure h2c "$m.prof" "$TG_PID" "$URL"
        wait "$perf_pid" || die "perf record failed: $(tail -n 3 "$RUN_DIR/perf-$m.log")"
        # "pct dso symbol[ (file.c)]" lines, one per symbol
        perf report -i "$RUN_DIR/perf-$m.data" --no-children -F overhead,dso,sym,srcfile --stdio \
            2>/dev/null | awk '!/^#/ && NF >= 4 { sub(/%$/, "", $1); s = $4
                if (NF >= 5 && $NF ~ /\.(c|h|S|cc)$/) s = s " (" $NF ")"
                print $1, $2, s }' >"$RUN_DIR/perf-$m.raw"
        name_stripped "$RUN_DIR/perf-$m.raw" >"$RUN_DIR/perf-$m.sym"
        for what in authn hpack; do
            PA[$what|$m]=$(awk -v w=$what -v cpu="${R[h2c|$m.prof|cpu]}" '
                w == "authn" && (($2 == "tollgate" && $0 ~ /\((authn|apikey|jwt|auth)\.c\)$/) || $2 ~ /^libcrypto/) { s += $1 }
                w == "hpack" && $2 ~ /^libnghttp2/ { s += $1 }
                END { printf "%.2f", s / 100 * cpu }' "$RUN_DIR/perf-$m.sym")
        done
        stop_pid "$TG_PID"
    done
fi

# ---------------------------------------------------------------- report ----
# stats V...: "median min max" of the arguments.
stats() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.2f %.2f %.2f\n", m, v[1], v[NR] }'
}
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }

declare -A MED MIN MAX DMED DMIN DMAX RPS
for m in $MODES; do
    cpus=() rps=() deltas=()
    for r in $(seq 1 "$ROUNDS"); do
        cpus+=("${R[h2c|$m.$r|cpu]}")
        rps+=("${R[h2c|$m.$r|rps]}")
        deltas+=("$(calc "${R[h2c|$m.$r|cpu]} - ${R[h2c|base.$r|cpu]}")")
    done
    read -r MED[$m] MIN[$m] MAX[$m] < <(stats "${cpus[@]}")
    read -r DMED[$m] DMIN[$m] DMAX[$m] < <(stats "${deltas[@]}")
    read -r RPS[$m] _ _ < <(stats "${rps[@]}")
done
# Run-to-run noise: the median over modes of the spread (max - min) of CPU
# µs/req across rounds (0 with one round).
spreads=()
for m in $MODES; do spreads+=("$(calc "${MAX[$m]} - ${MIN[$m]}")"); done
read -r NOISE _ _ < <(stats "${spreads[@]}")

# pdelta A B: median over rounds of CPU µs/req of mode A minus mode B (same round).
pdelta() {
    local r d=()
    for r in $(seq 1 "$ROUNDS"); do d+=("$(calc "${R[h2c|$1.$r|cpu]} - ${R[h2c|$2.$r|cpu]}")"); done
    stats "${d[@]}" | cut -d' ' -f1
}
has() { case " $MODES " in *" $1 "*) return 0 ;; esac; return 1; }

verdict() { # verdict VALUE TARGET: "yes"/"no" for VALUE < TARGET
    awk -v v="$1" -v t="$2" 'BEGIN { print (v < t ? "yes" : "no") }'
}

{
    echo "# tollgate authentication cost — latest run"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(uname -sr), $(nproc) CPU ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "- tollgate $("$TOLLGATE_BIN" --version 2>&1 | head -1); $(openssl version 2>/dev/null || echo 'OpenSSL ?'); $(h2load --version 2>&1 | head -1)"
    echo "- tollgate: workers 1, pinned to CPU $PROXY_CPU; demo upstream and h2load (h2c, -c $H2_CONNS -m $H2_STREAMS, one thread, GET /v1/models) on CPU $LOAD_CPU; ${DURATION} s per run after a ${WARMUP} s warm-up; $ROUNDS rounds, modes interleaved, a fresh tollgate per run"
    echo "- CPU µs/req: tollgate's utime+stime (/proc, ${CLK_TCK} Hz) over the run ÷ completed requests; median of the rounds (min–max); Δ: median of the per-round differences from that round's baseline (min–max)"
    echo "- keys: RSA-2048 (e=65537), P-256, Ed25519; 1000 entries in each keys file; tokens ~$(echo -n "$RS_TOKEN" | wc -c) B (RS256), $(echo -n "$ES_TOKEN" | wc -c) B (ES256)"
    echo "- run-to-run noise (median over modes of max−min across rounds): $NOISE µs/req; load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine may be shared)"
    echo
    echo "## End to end (h2load h2c)"
    echo
    echo "| mode | | req/s | CPU µs/req | Δ vs baseline µs/req |"
    echo "| --- | --- | ---: | ---: | ---: |"
    for m in $MODES; do
        if [ "$m" = base ]; then d="–"; else d="${DMED[$m]} (${DMIN[$m]}…${DMAX[$m]})"; fi
        printf '| %s | %s | %.0f | %s (%s…%s) | %s |\n' "$m" "${DESC[$m]}" "${RPS[$m]}" \
            "${MED[$m]}" "${MIN[$m]}" "${MAX[$m]}" "$d"
    done
    if has hdr-key || has hdr-rs256; then
        echo
        echo "Attribution (medians of per-round differences, µs/req): carrying the header = control − base; authn itself = auth mode − its control."
        echo
        echo "| credential | carrying the header | authn itself |"
        echo "| --- | ---: | ---: |"
        if has hdr-key; then
            has apikey && echo "| API key, sha256 | $(pdelta hdr-key base) | $(pdelta apikey hdr-key) |"
            has pepper && echo "| API key, hmac-sha256 + pepper | $(pdelta hdr-key base) | $(pdelta pepper hdr-key) |"
        fi
        if has hdr-rs256 && has jwt-rs256; then
            echo "| JWT RS256, cached | $(pdelta hdr-rs256 base) | $(pdelta jwt-rs256 hdr-rs256) |"
        fi
    fi
    echo
    echo "Per round, CPU µs/req:"
    echo
    printf '| round |'; for m in $MODES; do printf ' %s |' "$m"; done; echo
    printf '| ---: |'; for m in $MODES; do printf ' ---: |'; done; echo
    for r in $(seq 1 "$ROUNDS"); do
        printf '| %s |' "$r"; for m in $MODES; do printf ' %s |' "${R[h2c|$m.$r|cpu]}"; done; echo
    done
    echo
    echo "## Per operation (bench/jwt_verify_bench.c, CPU $PROXY_CPU, CPU time of the thread)"
    echo
    echo "$JWT_TOKENS distinct tokens per algorithm, each verified once per pass; median of $PASSES passes (min)."
    echo
    echo "| operation | µs/op | min |"
    echo "| --- | ---: | ---: |"
    while IFS=$'\t' read -r name med mn ops; do
        printf '| %s | %s | %s |\n' "$name" "$med" "$mn"
    done <"$RUN_DIR/micro.tsv"
    echo
    echo "OpenSSL DigestVerify: EVP_MD_CTX_new + EVP_DigestVerifyInit_ex + EVP_DigestVerify per token (tollgate's call sequence without token parsing or claims); PKEY_verify: SHA-256 + EVP_PKEY_verify on a context set up once (the public-key operation alone)."
    echo
    echo "## Targets"
    echo
    echo "| target | measured | met |"
    echo "| --- | --- | --- |"
    declare -A LOOKUP=([apikey]="tg_keyring_lookup sha256" [pepper]="tg_keyring_lookup hmac-sha256 (pepper)")
    for m in apikey pepper; do
        [ -n "${DMED[$m]:-}" ] || continue
        echo "| $m: auth adds < $TARGET_APIKEY µs/req | Δ ${DMED[$m]} µs/req end to end (tg_keyring_lookup alone: ${MU[${LOOKUP[$m]}]:-?} µs) | $(verdict "${DMED[$m]}" "$TARGET_APIKEY") |"
    done
    if [ -n "${MU[authn miss path RS256]:-}" ]; then
        hit=${MU[tg_jwt_cache_get hit RS256 ($(echo -n "$RS_TOKEN" | wc -c) B token)]:-0}
        if [ -n "${DMED[jwt-rs256]:-}" ]; then
            est=$(calc "${DMED[jwt-rs256]} + ${MU[authn miss path RS256]} - $hit")
            how="≈ $est µs/req (cached Δ ${DMED[jwt-rs256]} + miss path ${MU[authn miss path RS256]} − hit $hit); tg_jwt_verify alone ${MU[tg_jwt_verify RS256]} µs, OpenSSL floor ${MU[OpenSSL DigestVerify RS256]} µs"
        else
            est=${MU[authn miss path RS256]}
            how="miss path $est µs (tg_jwt_verify ${MU[tg_jwt_verify RS256]} µs)"
        fi
        echo "| RS256 uncached: auth adds < $TARGET_RS256 µs/req | $how | $(verdict "$est" "$TARGET_RS256") |"
    fi
    for m in jwt-rs256 jwt-es256; do
        [ -n "${DMED[$m]:-}" ] && [ -n "${DMED[apikey]:-}" ] || continue
        diff=$(calc "${DMED[$m]} - ${DMED[apikey]}")
        met=$(awk -v d="$diff" -v n="$NOISE" 'BEGIN { print (d <= 0 ? "yes" : (d <= n ? "within noise" : "no")) }')
        echo "| $m cached ≤ API key | Δ ${DMED[$m]} vs ${DMED[apikey]} µs/req (difference $diff; noise $NOISE) | $met |"
    done
    if has jwt-rs256 && has hdr-rs256 && has apikey && has hdr-key; then
        a=$(pdelta jwt-rs256 hdr-rs256) b=$(pdelta apikey hdr-key)
        diff=$(calc "$a - $b")
        met=$(awk -v d="$diff" -v n="$NOISE" 'BEGIN { print (d <= 0 ? "yes" : (d <= n ? "within noise" : "no")) }')
        echo "| jwt-rs256 cached ≤ API key, authn only (header transport excluded) | $a vs $b µs/req (difference $diff; micro: cache hit ${MU[tg_jwt_cache_get hit RS256 ($(echo -n "$RS_TOKEN" | wc -c) B token)]:-?} vs lookup ${MU[tg_keyring_lookup sha256]:-?} µs) | $met |"
    fi
    if [ "$PROFILE" = 1 ]; then
        for m in apikey pepper; do
            has $m && echo "| $m (profile): authn code < $TARGET_APIKEY µs/req | ${PA[authn|$m]} µs/req; libnghttp2 ${PA[hpack|$m]} vs ${PA[hpack|base]} in base | $(verdict "${PA[authn|$m]}" "$TARGET_APIKEY") |"
        done
        for m in jwt-rs256 jwt-es256; do
            has $m && has apikey || continue
            met=$(awk -v a="${PA[authn|$m]}" -v b="${PA[authn|apikey]}" 'BEGIN { print (a <= b ? "yes" : "no") }')
            echo "| $m cached ≤ API key (profile: authn code; libnghttp2) | ${PA[authn|$m]} vs ${PA[authn|apikey]} µs/req; libnghttp2 ${PA[hpack|$m]} vs ${PA[hpack|apikey]} | $met |"
        done
    fi
    if [ "$PROFILE" = 1 ]; then
        echo
        echo "## Profiles (PROFILE=1: perf record -e cpu-clock -F 4999, one extra run per mode)"
        echo
        echo "Self time in µs/req = the symbol's share of the samples × that run's CPU µs/req (perf itself slows tollgate a little)."
        echo
        printf '| DSO |'; for m in $MODES; do printf ' %s |' "$m"; done; echo
        printf '| --- |'; for m in $MODES; do printf ' ---: |'; done; echo
        for m in $MODES; do
            awk -v m="$m" -v cpu="${R[h2c|$m.prof|cpu]}" '{ d[$2] += $1 }
                END { for (k in d) printf "%s\t%s\t%.2f\n", k, m, d[k] / 100 * cpu }' "$RUN_DIR/perf-$m.sym"
        done | awk -F'\t' -v modes="$MODES" '
            { v[$1 SUBSEP $2] = $3; tot[$1] += $3 }
            END { n = split(modes, ms, " ")
                  for (k in tot) { if (tot[k] / n < 0.05) continue
                      line = sprintf("%.4f\t| %s |", tot[k], k)
                      for (i = 1; i <= n; i++) line = line sprintf(" %.2f |", v[k SUBSEP ms[i]])
                      print line } }' | sort -t$'\t' -k1,1gr | cut -f2-
        printf '| **total** (CPU µs/req of the profiled run) |'
        for m in $MODES; do printf ' %s |' "${R[h2c|$m.prof|cpu]}"; done; echo
        echo
        echo "Attribution from the profiles (µs/req): *authn code* = tollgate functions of filters/authn.c, apikey.c, jwt.c and config/auth.c (inlined helpers count under their caller) + all of libcrypto; *HPACK* = libnghttp2 (header decoding and validation, plus framing, which every mode has)."
        echo
        printf '| |'; for m in $MODES; do printf ' %s |' "$m"; done; echo
        printf '| --- |'; for m in $MODES; do printf ' ---: |'; done; echo
        for what in authn hpack; do
            [ $what = authn ] && printf '| authn code |' || printf '| HPACK (libnghttp2) |'
            for m in $MODES; do
                printf ' %s |' "${PA[$what|$m]}"
            done
            echo
        done
        for m in $MODES; do
            [ "$m" = base ] && continue
            awk -v cb="${R[h2c|base.prof|cpu]}" -v cm="${R[h2c|$m.prof|cpu]}" '
                FNR == 1 { f++ }
                { k = $2 "\t" substr($0, index($0, $3)); if (f == 1) b[k] = $1 / 100 * cb; else x[k] = $1 / 100 * cm; all[k] = 1 }
                END { for (k in all) printf "%.3f\t%.3f\t%.3f\t%s\n", x[k] - b[k], x[k], b[k], k }' \
                "$RUN_DIR/perf-base.sym" "$RUN_DIR/perf-$m.sym" >"$RUN_DIR/perf-$m.diff"
            echo
            echo "### $m (µs/req): symbols that grew most against base; symbols absent from base's profile"
            echo
            echo "| Δ | $m | base | DSO | symbol |"
            echo "| ---: | ---: | ---: | --- | --- |"
            sort -t$'\t' -k1,1gr "$RUN_DIR/perf-$m.diff" | awk 'NR <= 8' |
                awk -F'\t' '{ printf "| %.2f | %.2f | %.2f | %s | `%s` |\n", $1, $2, $3, $4, $5 }'
            echo "| | | | | *not in base:* |"
            awk -F'\t' '$3 == 0' "$RUN_DIR/perf-$m.diff" | sort -t$'\t' -k2,2gr | awk 'NR <= 8' |
                awk -F'\t' '{ printf "| %.2f | %.2f | – | %s | `%s` |\n", $1, $2, $4, $5 }'
        done
    fi
} >"$RUN_DIR/auth.md"

mkdir -p "$(dirname "$RESULTS")"
cp "$RUN_DIR/auth.md" "$RESULTS"
echo
cat "$RESULTS"
echo
log "written to ${RESULTS#"$ROOT"/}"
