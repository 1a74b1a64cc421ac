# bench/lib.sh - helpers shared by bench/run.sh and bench/auth.sh (sourced).
#
# The caller sets, before sourcing: BENCH_DIR, ROOT, TOLLGATE_BIN, DEMO_BIN,
# H2_CONNS, H2_STREAMS, H1_CONNS (wrk modes only), PROXY_CPU, LOAD_CPU,
# DURATION, WARMUP; after sourcing, RUN_DIR and DEMO_PID.  It installs the
# EXIT/INT/TERM traps (cleanup of PIDS[] and RUN_DIR).
#
# Optional, set after sourcing: H2LOAD_EXTRA=(...) - extra h2load arguments for every h2c/h2tls run
# (e.g. -H 'authorization: Bearer ...'); MEASURE_HOOK=FUNCTION - measure() calls
# `FUNCTION begin TAG` just before and `FUNCTION end TAG` just after the
# measured run (after the warm-up), e.g. to read another process's counters.

LOG_TAG=${LOG_TAG:-bench}
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools ----
declare -A PKG_OF=([h2load]=nghttp2-client [nghttpx]=nghttp2-proxy [nginx]=nginx-light
                   [wrk]=wrk [curl]=curl [taskset]=util-linux [awk]=gawk [sort]=coreutils
                   [gcc]=gcc [python3]=python3)
PATH=$PATH:/usr/sbin:/sbin

# ensure_tools [TOOL...]: install the Debian package of each missing tool
# (default: h2load nghttpx nginx wrk curl taskset awk sort).
ensure_tools() {
    local missing=() pkgs=() t
    [ $# -gt 0 ] || set -- h2load nghttpx nginx wrk curl taskset awk sort
    for t in "$@"; do
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
    # Processes may vanish between the glob and the read: cat skips them (a
    # reader that fails on a half-gone /proc file, as mawk's getline does with
    # ESRCH, would abort the whole run).
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
        { pid = $1; line = $0
          sub(/^[0-9]+ \(.*\) /, "", line); split(line, x, " ")
          ppid[pid] = x[2]; t[pid] = x[12] + x[13]; ct[pid] = x[14] + x[15] }
        END {
            want[root] = 1; changed = 1
            while (changed) { changed = 0
                for (p in ppid) if (!(p in want) && (ppid[p] in want)) { want[p] = 1; changed = 1 } }
            s = ct[root]; for (p in want) s += t[p]; print s + 0
        }'
}

# ------------------------------------------------------------- measuring ----
CLK_TCK=$(getconf CLK_TCK)
H2LOAD_EXTRA=()
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
        local extra=("${H2LOAD_EXTRA[@]}")
        [ -n "$lf" ] && extra+=(--log-file="$lf")
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
    [ -n "${MEASURE_HOOK:-}" ] && "$MEASURE_HOOK" begin "$tag"
    c0=$(tree_ticks "$pid"); u0=$(tree_ticks "$DEMO_PID"); t0=$(date +%s.%N)
    if ! run_load "$mode" "$url" "$out" "$DURATION" "$lf"; then
        cat "$out" >&2; die "load run $tag failed"
    fi
    t1=$(date +%s.%N); c1=$(tree_ticks "$pid"); u1=$(tree_ticks "$DEMO_PID")
    [ -n "${MEASURE_HOOK:-}" ] && "$MEASURE_HOOK" end "$tag"
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

