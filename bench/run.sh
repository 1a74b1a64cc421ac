#!/usr/bin/env bash
# bench/run.sh - tollgate vs nghttpx vs nginx on loopback, one worker each.
#
# The demo upstream and the load generators share CPU 1; the proxy under test
# is alone on CPU 0.  For each run it records req/s, p50/p99 latency and the
# proxy's CPU time per request (utime+stime of the proxy's whole process tree
# from /proc, before and after), and prints one table per mode, also written
# to bench/results/latest.md.  See bench/README.md.
#
# Environment knobs (all optional):
#   DURATION=10      seconds per measured run (each is preceded by a warm-up)
#   WARMUP=1         seconds of warm-up before each measured run
#   PORT_BASE=27000  first of the loopback ports used (27000..27032)
#   PROXIES="tollgate nghttpx nginx"   subset/order of proxies to run
#   TOLLGATE_BIN, DEMO_BIN             binaries (default: build/...)
#   RESULTS=FILE     where to write the table (default bench/results/latest.md)
#   KEEP_RUN_DIR=1   keep the temporary run directory (configs, logs)
#   TOLLGATE_MAX_IDLE=N  set tollgate's upstreams[].max_idle_connections
#                    (default: unset, i.e. tollgate's default of 64)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
PORT_BASE=${PORT_BASE:-27000}
PROXIES=${PROXIES:-"tollgate nghttpx nginx"}
TOLLGATE_BIN=${TOLLGATE_BIN:-$ROOT/build/tollgate}
DEMO_BIN=${DEMO_BIN:-$ROOT/build/tests/demo_upstream}
CERT=$ROOT/tests/data/certs/server.crt
KEY=$ROOT/tests/data/certs/server.key
RESULTS=${RESULTS:-$BENCH_DIR/results/latest.md}

H2_CONNS=16 H2_STREAMS=16 # h2load -c / -m
H1_CONNS=32                # wrk -c (one thread)

PROXY_CPU=0 LOAD_CPU=1

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools ----
declare -A PKG_OF=([h2load]=nghttp2-client [nghttpx]=nghttp2-proxy [nginx]=nginx-light
                   [wrk]=wrk [curl]=curl [taskset]=util-linux [awk]=gawk [sort]=coreutils)
PATH=$PATH:/usr/sbin:/sbin

ensure_tools() {
    local missing=() pkgs=() t
    for t in "${!PKG_OF[@]}"; do
        command -v "$t" >/dev/null 2>&1 || { missing+=("$t"); pkgs+=("${PKG_OF[$t]}"); }
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "missing: ${missing[*]}; installing: ${pkgs[*]}"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "need ${missing[*]} (Debian packages: ${pkgs[*]}); run as root on Debian or install them"
    fi
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2 ||
        die "apt-get install ${pkgs[*]} failed"
    for t in "${missing[@]}"; do
        command -v "$t" >/dev/null 2>&1 || die "$t still missing after installing ${PKG_OF[$t]}"
    done
}

ensure_build() {
    if [ -x "$TOLLGATE_BIN" ] && [ -x "$DEMO_BIN" ]; then return 0; fi
    command -v cmake >/dev/null 2>&1 || die "cmake missing (and $TOLLGATE_BIN not built)"
    log "building tollgate (RelWithDebInfo) in $ROOT/build"
    cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2 || die "cmake configure failed"
    cmake --build "$ROOT/build" -j2 >&2 || die "build failed"
    [ -x "$TOLLGATE_BIN" ] || die "$TOLLGATE_BIN not produced by the build"
    [ -x "$DEMO_BIN" ] || die "$DEMO_BIN not produced by the build"
}

# ------------------------------------------------------------ processes ----
PIDS=()
RUN_DIR=
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ -n "$RUN_DIR" ] && [ -d "$RUN_DIR" ]; then
        if [ "${KEEP_RUN_DIR:-0}" = 1 ] || [ $rc -ne 0 ]; then
            log "run directory kept: $RUN_DIR"
        else
            rm -rf "$RUN_DIR"
        fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop PID: TERM it (master processes take their workers down), wait, KILL.
stop_pid() {
    local p=$1 q=() x
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for x in "${PIDS[@]}"; do [ "$x" != "$p" ] && q+=("$x"); done
    PIDS=("${q[@]}")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ports PID LOGFILE PORT...: until every port accepts, or fail clearly.
wait_ports() {
    local pid=$1 logf=$2 p; shift 2
    for p in "$@"; do
        for i in $(seq 100); do
            port_open "$p" && break
            kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2 || true; die "process $pid died before port $p opened (log: $logf)"; }
            [ "$i" = 100 ] && { tail -n 20 "$logf" >&2 || true; die "port $p not open after 10 s (log: $logf)"; }
            sleep 0.1
        done
    done
}

# Sum utime+stime (+cutime+cstime of the root) in clock ticks over PID and all
# its live descendants (nginx/nghttpx masters fork their workers).
tree_ticks() {
    # Processes may vanish between the glob and the read: read each file with
    # getline (a failed open is skipped, not fatal).
    awk -v root="$1" '
        BEGIN {
            for (i = 1; i < ARGC; i++) {
                f = ARGV[i]
                if ((getline line < f) > 0) {
                    pid = f; sub(/^\/proc\//, "", pid); sub(/\/stat$/, "", pid)
                    sub(/^[0-9]+ \(.*\) /, "", line); split(line, x, " ")
                    ppid[pid] = x[2]; t[pid] = x[12] + x[13]; ct[pid] = x[14] + x[15]
                }
                close(f)
            }
            want[root] = 1; changed = 1
            while (changed) { changed = 0
                for (p in ppid) if (!(p in want) && (ppid[p] in want)) { want[p] = 1; changed = 1 } }
            s = ct[root]; for (p in want) s += t[p]; print s + 0
        }' /proc/[0-9]*/stat
}

render() { # render TEMPLATE OUT PLAIN TLS
    sed -e "s|@PLAIN_PORT@|$3|g" -e "s|@TLS_PORT@|$4|g" -e "s|@DEMO_PORT@|$DEMO_PORT|g" \
        -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" -e "s|@RUN_DIR@|$RUN_DIR|g" \
        -e "s|@USER_LINE@|$USER_LINE|g" -e "s|@UPSTREAM_EXTRA@|$UPSTREAM_EXTRA|g" "$1" >"$2"
}

# ------------------------------------------------------------- measuring ----
CLK_TCK=$(getconf CLK_TCK)
declare -A R # R[mode|proxy|field]

# Percentiles (nearest rank) of column 3 (µs) of an h2load --log-file.
h2load_pcts() {
    cut -f3 "$1" | sort -n | awk '{ v[NR] = $1 }
        END { if (NR == 0) { print "NA NA"; exit }
              i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
              print v[i50], v[i99] }'
}

# run_load MODE URL OUTFILE SECONDS [LOGFILE]: one load run pinned to LOAD_CPU.
run_load() {
    local mode=$1 url=$2 out=$3 secs=$4 lf=${5:-}
    case $mode in
    h2c | h2tls)
        local extra=()
        [ -n "$lf" ] && extra=(--log-file="$lf")
        [ $mode = h2c ] && extra+=(--no-tls-proto=h2c)
        taskset -c $LOAD_CPU h2load -c $H2_CONNS -m $H2_STREAMS -t 1 -D "$secs" "${extra[@]}" "$url" >"$out" 2>&1 ;;
    h1get)
        taskset -c $LOAD_CPU wrk -t1 -c $H1_CONNS -d "${secs}s" -s "$BENCH_DIR/lua/get.lua" "$url" >"$out" 2>&1 ;;
    h1sse)
        taskset -c $LOAD_CPU wrk -t1 -c $H1_CONNS -d "${secs}s" -s "$BENCH_DIR/lua/sse.lua" "$url" >"$out" 2>&1 ;;
    esac
}

# measure MODE PROXY PID URL: warm up, then one measured run; fills R[].
measure() {
    local mode=$1 name=$2 pid=$3 url=$4
    local tag=$mode-$name
    local out=$RUN_DIR/$tag.out lf=$RUN_DIR/$tag.h2log
    run_load "$mode" "$url" "$RUN_DIR/$tag.warm" "$WARMUP" || true
    local c0 c1 u0 u1 t0 t1
    c0=$(tree_ticks "$pid"); u0=$(tree_ticks "$DEMO_PID"); t0=$(date +%s.%N)
    if ! run_load "$mode" "$url" "$out" "$DURATION" "$lf"; then
        cat "$out" >&2; die "load run $tag failed"
    fi
    t1=$(date +%s.%N); c1=$(tree_ticks "$pid"); u1=$(tree_ticks "$DEMO_PID")
    local reqs rps p50 p99 errs
    case $mode in
    h2c | h2tls)
        # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
        reqs=$(awk '/^requests:/ { print $6 }' "$out")
        # errors: done but not 2xx/3xx, plus errored and timed-out requests
        errs=$(awk '/^requests:/ { print ($6 - $8) + $12 + $14 }' "$out")
        rps=$(awk '/^finished in/ { gsub(/,/, ""); print $4 }' "$out")
        read -r p50 p99 < <(h2load_pcts "$lf")
        rm -f "$lf" ;;
    h1get | h1sse)
        local line; line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; die "no result line from wrk ($tag)"; }
        reqs=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
        local dur; dur=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
        p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
        p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
        errs=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
        rps=$(awk -v r="$reqs" -v d="$dur" 'BEGIN { printf "%.1f", (d > 0 ? r * 1e6 / d : 0) }') ;;
    esac
    [ -n "$reqs" ] && [ "$reqs" -gt 0 ] 2>/dev/null || { cat "$out" >&2; die "no completed requests in $tag"; }
    R[$mode|$name|rps]=$rps
    R[$mode|$name|p50]=$p50
    R[$mode|$name|p99]=$p99
    R[$mode|$name|errs]=${errs:-0}
    R[$mode|$name|reqs]=$reqs
    R[$mode|$name|cpu]=$(awk -v a="$c0" -v b="$c1" -v n="$reqs" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
    R[$mode|$name|util]=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
    R[$mode|$name|ucpu]=$(awk -v a="$u0" -v b="$u1" -v n="$reqs" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
    log "$(printf '%-6s %-9s %10s req/s  p50 %6s us  p99 %6s us  proxy %7s us/req (%s%% CPU)  errors %s' \
        "$mode" "$name" "$rps" "$p50" "$p99" "${R[$mode|$name|cpu]}" "${R[$mode|$name|util]}" "${R[$mode|$name|errs]}")"
}

# sanity PLAIN TLS H2C?: one GET and one SSE POST through the target.
sanity() {
    local plain=$1 tls=$2 h2c=$3 body
    body=$(curl -sS --max-time 5 -f "http://127.0.0.1:$plain/v1/models") || die "GET via port $plain failed"
    grep -q '"object":"list"' <<<"$body" || die "unexpected /v1/models answer via $plain: $body"
    body=$(curl -sS --max-time 5 -f -H 'Content-Type: application/json' \
        -d '{"model":"m","stream":true,"max_tokens":16}' "http://127.0.0.1:$plain/v1/chat/completions") ||
        die "SSE POST via port $plain failed"
    [ "$(grep -c '^data: ' <<<"$body")" -ge 16 ] || die "short SSE stream via $plain: $body"
    if [ "$h2c" = yes ]; then
        curl -sS --max-time 5 -f --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$plain/v1/models" ||
            die "h2c GET via port $plain failed"
    fi
    if [ -n "$tls" ]; then
        [ "$(curl -sS --max-time 5 -f -k --http2 -o /dev/null -w '%{http_version}' "https://127.0.0.1:$tls/v1/models")" = 2 ] ||
            die "TLS h2 GET via port $tls failed (not HTTP/2?)"
    fi
}

# ----------------------------------------------------------------- main ----
ensure_tools
ensure_build

NCPU=$(nproc)
if [ "$NCPU" -lt 2 ]; then
    log "WARNING: only $NCPU CPU: proxy, upstream and load share CPU 0"
    LOAD_CPU=0
fi

# Find a free block of ports: demo, then plain/TLS per proxy.
for try in $(seq 0 9); do
    base=$((PORT_BASE + try * 100)) busy=
    for p in $base $((base + 10)) $((base + 11)) $((base + 20)) $((base + 21)) $((base + 30)) $((base + 31)); do
        port_open "$p" && busy=$p && break
    done
    [ -z "$busy" ] && break
    [ "$try" = 9 ] && die "no free port block near $PORT_BASE (last busy: $busy); set PORT_BASE"
done
DEMO_PORT=$base
declare -A PLAIN_PORT=([tollgate]=$((base + 10)) [nghttpx]=$((base + 20)) [nginx]=$((base + 30)))
declare -A TLS_PORT=([tollgate]=$((base + 11)) [nghttpx]=$((base + 21)) [nginx]=$((base + 31)))

RUN_DIR=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
USER_LINE=
UPSTREAM_EXTRA=
[ -n "${TOLLGATE_MAX_IDLE:-}" ] && UPSTREAM_EXTRA=", \"max_idle_connections\": $TOLLGATE_MAX_IDLE"
[ "$(id -u)" -eq 0 ] && USER_LINE="user root;"
mkdir -p "$RUN_DIR/nginx-tmp"
log "run dir $RUN_DIR; ports: demo $DEMO_PORT, proxies $((base + 10))..$((base + 31)); ${DURATION}s per run"

taskset -c $LOAD_CPU "$DEMO_BIN" --host 127.0.0.1 --port "$DEMO_PORT" --quiet >"$RUN_DIR/demo.log" 2>&1 &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
wait_ports "$DEMO_PID" "$RUN_DIR/demo.log" "$DEMO_PORT"
sanity "$DEMO_PORT" "" no

MODES=(h2c h2tls h1get h1sse)
declare -A MODE_TITLE=([h2c]="h2load h2c GET /v1/models (-c $H2_CONNS -m $H2_STREAMS)"
                       [h2tls]="h2load TLS h2 GET /v1/models (-c $H2_CONNS -m $H2_STREAMS)"
                       [h1get]="wrk HTTP/1.1 GET /v1/models (-t1 -c $H1_CONNS)"
                       [h1sse]="wrk HTTP/1.1 POST /v1/chat/completions stream=true, 16 SSE events (-t1 -c $H1_CONNS)")
ROWS=(direct $PROXIES)

# Direct baseline: HTTP/1.1 only (the demo server speaks neither h2 nor TLS).
log "--- direct (demo upstream alone)"
measure h1get direct "$DEMO_PID" "http://127.0.0.1:$DEMO_PORT/v1/models"
measure h1sse direct "$DEMO_PID" "http://127.0.0.1:$DEMO_PORT/v1/chat/completions"

for proxy in $PROXIES; do
    plain=${PLAIN_PORT[$proxy]} tls=${TLS_PORT[$proxy]}
    logf=$RUN_DIR/$proxy.log
    log "--- $proxy (CPU $PROXY_CPU, one worker; plain :$plain, TLS :$tls)"
    case $proxy in
    tollgate)
        render "$BENCH_DIR/conf/tollgate.json.in" "$RUN_DIR/tollgate.json" "$plain" "$tls"
        taskset -c $PROXY_CPU "$TOLLGATE_BIN" -c "$RUN_DIR/tollgate.json" >"$logf" 2>&1 &
        h2c=yes ;;
    nghttpx)
        render "$BENCH_DIR/conf/nghttpx.conf.in" "$RUN_DIR/nghttpx.conf" "$plain" "$tls"
        taskset -c $PROXY_CPU nghttpx --conf="$RUN_DIR/nghttpx.conf" >"$logf" 2>&1 &
        h2c=yes ;;
    nginx)
        render "$BENCH_DIR/conf/nginx.conf.in" "$RUN_DIR/nginx.conf" "$plain" "$tls"
        nginx -t -q -p "$RUN_DIR" -e "$RUN_DIR/nginx-error.log" -c "$RUN_DIR/nginx.conf" >"$logf" 2>&1 ||
            { cat "$logf" >&2; die "nginx config test failed"; }
        taskset -c $PROXY_CPU nginx -p "$RUN_DIR" -e "$RUN_DIR/nginx-error.log" -c "$RUN_DIR/nginx.conf" >"$logf" 2>&1 &
        h2c=no ;;
    *) die "unknown proxy $proxy" ;;
    esac
    pid=$!
    PIDS+=("$pid")
    wait_ports "$pid" "$logf" "$plain" "$tls"
    sanity "$plain" "$tls" "$h2c"
    [ "$h2c" = yes ] && measure h2c "$proxy" "$pid" "http://127.0.0.1:$plain/v1/models"
    measure h2tls "$proxy" "$pid" "https://127.0.0.1:$tls/v1/models"
    measure h1get "$proxy" "$pid" "http://127.0.0.1:$plain/v1/models"
    measure h1sse "$proxy" "$pid" "http://127.0.0.1:$plain/v1/chat/completions"
    stop_pid "$pid"
done

# ---------------------------------------------------------------- report ----
ms() { [ "$1" = NA ] && echo NA || awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "–"; else printf "%.2f", a / b }'; }

{
    echo "# tollgate benchmark — latest run"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(uname -sr), $(nproc) CPU ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "- tollgate $("$TOLLGATE_BIN" --version 2>&1 | head -1); $(nghttpx --version 2>&1 | head -1); $(nginx -v 2>&1 | head -1); $(h2load --version 2>&1 | head -1); $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }')"
    echo "- each proxy: one worker, pinned to CPU $PROXY_CPU; demo upstream and load generator pinned to CPU $LOAD_CPU; ${DURATION} s per run after a ${WARMUP} s warm-up; loopback only"
    echo "- CPU µs/req: proxy process tree utime+stime (from /proc, ${CLK_TCK} Hz ticks) over the run ÷ completed requests; CPU %: of one core over the run; upstream µs/req: the demo server's, for reference"
    [ -n "${TOLLGATE_MAX_IDLE:-}" ] && echo "- tollgate upstream max_idle_connections: $TOLLGATE_MAX_IDLE (not the default)"
    echo "- tollgate÷this: tollgate's CPU µs/req divided by this row's, same mode (< 1: tollgate cheaper)"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine may be shared: compare ratios, not absolutes)"
    for mode in "${MODES[@]}"; do
        echo
        echo "## ${MODE_TITLE[$mode]}"
        echo
        echo "| proxy | req/s | p50 ms | p99 ms | CPU µs/req | CPU % | upstream µs/req | errors | tollgate÷this |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        tg=${R[$mode|tollgate|cpu]:-}
        for row in "${ROWS[@]}"; do
            [ -n "${R[$mode|$row|rps]:-}" ] || continue
            if [ "$row" = direct ]; then cpu="–" util="–" rat="–"
            else cpu=${R[$mode|$row|cpu]} util=${R[$mode|$row|util]}
                 if [ "$row" = tollgate ]; then rat="–"; else rat=$(ratio "$tg" "$cpu"); fi
            fi
            printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$row" "${R[$mode|$row|rps]}" \
                "$(ms "${R[$mode|$row|p50]}")" "$(ms "${R[$mode|$row|p99]}")" "$cpu" "$util" \
                "${R[$mode|$row|ucpu]}" "${R[$mode|$row|errs]}" "$rat"
        done
        line=
        for peer in nghttpx nginx; do
            [ -n "$tg" ] && [ -n "${R[$mode|$peer|cpu]:-}" ] &&
                line+="${line:+, }tollgate/$peer = $(ratio "$tg" "${R[$mode|$peer|cpu]}")"
        done
        [ -n "$line" ] && { echo; echo "CPU per request: $line"; }
    done
} >"$RUN_DIR/table.md"

mkdir -p "$(dirname "$RESULTS")"
cp "$RUN_DIR/table.md" "$RESULTS"
echo
cat "$RESULTS"
echo
log "written to ${RESULTS#"$ROOT"/}"
