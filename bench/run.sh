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

# Shared helpers: tools, build, process handling, /proc CPU accounting, load runs.
. "$BENCH_DIR/lib.sh"

render() { # render TEMPLATE OUT PLAIN TLS
    sed -e "s|@PLAIN_PORT@|$3|g" -e "s|@TLS_PORT@|$4|g" -e "s|@DEMO_PORT@|$DEMO_PORT|g" \
        -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" -e "s|@RUN_DIR@|$RUN_DIR|g" \
        -e "s|@USER_LINE@|$USER_LINE|g" -e "s|@UPSTREAM_EXTRA@|$UPSTREAM_EXTRA|g" "$1" >"$2"
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
