#!/usr/bin/env bash
# bench/audit.sh - what the audit log costs tollgate per request, on loopback.
#
# Same method as bench/auth.sh: tollgate with one worker, its event-loop
# thread pinned to CPU 0; the demo upstream and h2load (h2c, -c 16 -m 16, one
# thread, GET /v1/models on a passthrough route) on CPU 1.  Two modes:
#   noaudit   no audit block (baseline)
#   audit     audit block, fsync "interval" (1000 ms), the file in the run
#             directory (local disk), on_queue_full "reject"
# Modes run ROUNDS times, interleaved, each with a fresh tollgate.
#
# Per-thread CPU comes from /proc/PID/task/TID/stat (utime+stime): threads
# are named "tg-worker-N" (event loops), "tg-audit" (the audit writer),
# "tg-log" (error log) and the main thread keeps the process name.  The
# writer thread is moved to WRITER_CPU (default: CPU 1, beside the load) so
# it does not take CPU from the worker it has to keep up with.
#
# Reported per mode (medians over rounds):
#   - requests/s (h2load), the worker thread's CPU µs/req, the process's
#   - the writer thread's CPU µs/record (over the records written during the
#     measured run, read from tollgate_audit_last_seq on the admin listener)
#   - whether the writer kept up: records written during the run ÷ requests
#     completed, the queue depth (tollgate_audit_queue_depth) when the load
#     stops, and, after the queue drained, audit records == requests answered
#     (tollgate_requests_total); round 1's file is also checked with
#     `tollgate audit verify`.
# Writes bench/results/audit-latest.md.
#
# Environment knobs (all optional):
#   DURATION=8 WARMUP=1 ROUNDS=5   seconds per measured run, warm-up, rounds
#   WRITER_CPU=1                   CPU for the tg-audit thread
#   FSYNC=interval                 the audit block's fsync policy
#   RATE=                          fixed total req/s (h2load --rps); default: full speed
#   PROFILE=1                      one extra run per mode under perf record: the worker's
#                                  symbols that grew with audit on, the writer's top symbols
#   PORT_BASE=28500, TOLLGATE_BIN, DEMO_BIN, RESULTS, KEEP_RUN_DIR=1   as in run.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-5}
PROFILE=${PROFILE:-0}
RATE=${RATE:-}
FSYNC=${FSYNC:-interval}
PORT_BASE=${PORT_BASE:-28500}
TOLLGATE_BIN=${TOLLGATE_BIN:-$ROOT/build/tollgate}
DEMO_BIN=${DEMO_BIN:-$ROOT/build/tests/demo_upstream}
RESULTS=${RESULTS:-$BENCH_DIR/results/audit-latest.md}
MODES="noaudit audit"

H2_CONNS=16 H2_STREAMS=16
PROXY_CPU=0 LOAD_CPU=1
WRITER_CPU=${WRITER_CPU:-1}
LOG_TAG=audit-bench
AUDIT_KEY=audit-bench-key-0123456789abcdef0123456789abcdef

# Targets: worker CPU added by audit (µs/req); the writer keeps up.
TARGET_DELTA=2

. "$BENCH_DIR/lib.sh"

# ------------------------------------------------------------------ setup ----
ensure_tools h2load curl taskset awk sort
ensure_build
if [ "$(nproc)" -lt 2 ]; then
    log "WARNING: only $(nproc) CPU: everything shares CPU 0"
    LOAD_CPU=0 WRITER_CPU=0
fi
for try in $(seq 0 9); do
    base=$((PORT_BASE + try * 100))
    port_open "$base" || port_open $((base + 1)) || port_open $((base + 2)) || break
    [ "$try" = 9 ] && die "no free port triple near $PORT_BASE; set PORT_BASE"
done
DEMO_PORT=$base TG_PORT=$((base + 1)) ADMIN_PORT=$((base + 2))

RUN_DIR=$(mktemp -d /tmp/tollgate-audit-bench.XXXXXX)
log "run dir $RUN_DIR; demo :$DEMO_PORT, tollgate :$TG_PORT (admin :$ADMIN_PORT); ${ROUNDS} rounds x ${DURATION}s per mode"

# render_cfg MODE OUT
render_cfg() {
    local fragf=$RUN_DIR/frag-$1.json
    if [ "$1" = audit ]; then
        printf '  "audit": { "file": "%s", "hmac_key_env": "TG_BENCH_AUDIT_KEY", "fsync": "%s" },\n' \
            "$RUN_DIR/audit.jsonl" "$FSYNC" >"$fragf"
    else
        : >"$fragf"
    fi
    sed -e "s|@PLAIN_PORT@|$TG_PORT|g" -e "s|@DEMO_PORT@|$DEMO_PORT|g" -e "s|@RUN_DIR@|$RUN_DIR|g" \
        -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" "$BENCH_DIR/conf/tollgate-audit.json.in" |
        awk -v f="$fragf" '/^@AUDIT@$/ { while ((getline l < f) > 0) print l; next } { print }' >"$2"
}

# thread_tids PID COMM: the TIDs of PID's threads named COMM.
thread_tids() {
    local t c
    for t in /proc/"$1"/task/*; do
        c=$(cat "$t/comm" 2>/dev/null) || continue
        [ "$c" = "$2" ] && echo "${t##*/}"
    done
    return 0
}

# thread_ticks PID REGEX: utime+stime (ticks) summed over PID's threads whose comm matches.
thread_ticks() {
    { cat /proc/"$1"/task/*/stat 2>/dev/null || true; } | awk -v re="$2" '
        { c = $0; sub(/^[0-9]+ \(/, "", c); sub(/\) .*/, "", c)
          line = $0; sub(/^[0-9]+ \(.*\) /, "", line); split(line, x, " ")
          if (c ~ re) s += x[12] + x[13] }
        END { print s + 0 }'
}

# metric NAME: the value of an unlabelled metric (sum of all series for labelled ones).
metric() {
    curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) print s; else print "NA" }'
}

# start_tollgate MODE: sets TG_PID once the ports are open and a request works.
start_tollgate() {
    local mode=$1 cfg=$RUN_DIR/tollgate-$1.json logf=$RUN_DIR/tollgate-$1.log code tid
    rm -f "$RUN_DIR/audit.jsonl" "$RUN_DIR/audit.jsonl.chain"
    render_cfg "$mode" "$cfg"
    TG_BENCH_AUDIT_KEY=$AUDIT_KEY taskset -c $PROXY_CPU "$TOLLGATE_BIN" -c "$cfg" >>"$logf" 2>&1 &
    TG_PID=$!
    PIDS+=("$TG_PID")
    wait_ports "$TG_PID" "$logf" "$TG_PORT" "$ADMIN_PORT"
    code=$(curl -sS --max-time 5 --http2-prior-knowledge -o "$RUN_DIR/sanity.out" -w '%{http_code}' \
        "http://127.0.0.1:$TG_PORT/v1/models") || die "$mode: h2c GET via tollgate failed"
    [ "$code" = 200 ] || die "$mode: expected 200, got $code: $(head -c 300 "$RUN_DIR/sanity.out")"
    [ -n "$(thread_tids "$TG_PID" tg-worker-0)" ] ||
        die "no thread named tg-worker-0 in tollgate $TG_PID (threads: $(cat /proc/$TG_PID/task/*/comm | tr '\n' ' '))"
    if [ "$mode" = audit ]; then
        tid=$(thread_tids "$TG_PID" tg-audit)
        [ -n "$tid" ] || die "no thread named tg-audit in tollgate $TG_PID"
        taskset -p -c "$WRITER_CPU" "$tid" >/dev/null || die "cannot move tg-audit to CPU $WRITER_CPU"
        [ "$(metric tollgate_audit_last_seq)" != NA ] || die "audit mode without audit metrics"
    fi
}

# measure_audit MODE NAME: warm up, one measured run; fills A[].
declare -A A
measure_audit() {
    local m=$1 name=$2 out=$RUN_DIR/$1-$2.out
    run_load h2c "$URL" "$RUN_DIR/$m-$name.warm" "$WARMUP" || true
    local w0 w1 a0 a1 p0 p1 s0=0 s1=0 depth=NA t0 t1
    [ "$m" = audit ] && s0=$(metric tollgate_audit_last_seq)
    w0=$(thread_ticks "$TG_PID" '^tg-worker-') a0=$(thread_ticks "$TG_PID" '^tg-audit$')
    p0=$(thread_ticks "$TG_PID" '.'); t0=$(date +%s.%N)
    run_load h2c "$URL" "$out" "$DURATION" || { cat "$out" >&2; die "load run $m.$name failed"; }
    t1=$(date +%s.%N)
    w1=$(thread_ticks "$TG_PID" '^tg-worker-') a1=$(thread_ticks "$TG_PID" '^tg-audit$')
    p1=$(thread_ticks "$TG_PID" '.')
    if [ "$m" = audit ]; then s1=$(metric tollgate_audit_last_seq); depth=$(metric tollgate_audit_queue_depth); fi
    local reqs errs rps
    reqs=$(awk '/^requests:/ { print $6 }' "$out")
    errs=$(awk '/^requests:/ { print ($6 - $8) + $12 + $14 }' "$out")
    rps=$(awk '/^finished in/ { gsub(/,/, ""); print $4 }' "$out")
    [ -n "$reqs" ] && [ "$reqs" -gt 0 ] 2>/dev/null || { cat "$out" >&2; die "no completed requests in $m.$name"; }
    # A writer that falls behind fills the queue, and on_queue_full "reject"
    # then answers 503: reported (errors), not fatal; the baseline must be clean.
    [ "$m" = audit ] || [ "$errs" = 0 ] || die "$m.$name: $errs requests were not 2xx"
    local k=$m.$name hz=$CLK_TCK
    A[$k|rps]=$rps A[$k|reqs]=$reqs A[$k|depth]=$depth A[$k|errs]=$errs
    A[$k|worker]=$(awk -v a="$w0" -v b="$w1" -v n="$reqs" -v hz=$hz 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
    A[$k|proc]=$(awk -v a="$p0" -v b="$p1" -v n="$reqs" -v hz=$hz 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
    A[$k|wutil]=$(awk -v a="$w0" -v b="$w1" -v hz=$hz -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
    if [ "$m" = audit ]; then
        local recs=$((s1 - s0))
        A[$k|recs]=$recs
        A[$k|writer]=$(awk -v a="$a0" -v b="$a1" -v n="$recs" -v hz=$hz 'BEGIN { printf "%.2f", (n > 0 ? (b - a) * 1e6 / hz / n : 0) }')
        A[$k|autil]=$(awk -v a="$a0" -v b="$a1" -v hz=$hz -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
        A[$k|ratio]=$(awk -v r="$recs" -v n="$reqs" 'BEGIN { printf "%.3f", r / n }')
        # Drain, then every answered request must have its record (+1: startup).
        local i seq total
        for i in $(seq 100); do [ "$(metric tollgate_audit_queue_depth)" = 0 ] && break; sleep 0.1; done
        sleep 0.3
        seq=$(metric tollgate_audit_last_seq) total=$(metric tollgate_requests_total)
        A[$k|all]=$([ "$seq" = $((total + 1)) ] && echo yes || echo "no ($seq records, $total requests)")
        log "$(printf '%-8s %-3s %9s req/s  worker %6s us/req (%s%%)  process %6s  writer %6s us/record (%s%%)  records/reqs %s  depth at end %s  all recorded %s  503s %s' \
            "$m" "$name" "$rps" "${A[$k|worker]}" "${A[$k|wutil]}" "${A[$k|proc]}" "${A[$k|writer]}" "${A[$k|autil]}" \
            "${A[$k|ratio]}" "$depth" "${A[$k|all]}" "$errs")"
    else
        log "$(printf '%-8s %-3s %9s req/s  worker %6s us/req (%s%%)  process %6s' \
            "$m" "$name" "$rps" "${A[$k|worker]}" "${A[$k|wutil]}" "${A[$k|proc]}")"
    fi
}

# ------------------------------------------------------------------- run ----
taskset -c $LOAD_CPU "$DEMO_BIN" --host 127.0.0.1 --port "$DEMO_PORT" --quiet >"$RUN_DIR/demo.log" 2>&1 &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
wait_ports "$DEMO_PID" "$RUN_DIR/demo.log" "$DEMO_PORT"

URL=http://127.0.0.1:$TG_PORT/v1/models
# RATE: a fixed total request rate (h2load --rps per connection), so both
# modes do the same work per loop turn; empty: as fast as the load goes.
[ -n "$RATE" ] && H2LOAD_EXTRA=(--rps=$(( (RATE + H2_CONNS - 1) / H2_CONNS )))
VERIFY=
for r in $(seq 1 "$ROUNDS"); do
    log "--- round $r/$ROUNDS"
    for m in $MODES; do
        start_tollgate "$m"
        measure_audit "$m" "$r"
        stop_pid "$TG_PID"
        if [ "$m" = audit ]; then
            if [ "$r" = 1 ]; then
                VERIFY=$(TOLLGATE_AUDIT_KEY=$AUDIT_KEY "$TOLLGATE_BIN" audit verify "$RUN_DIR/audit.jsonl" 2>&1) ||
                    die "audit verify failed: $VERIFY"
                A[bytes]=$(awk '{ n++; b += length($0) + 1 } END { printf "%.0f", b / n }' "$RUN_DIR/audit.jsonl")
                log "verify: $VERIFY; ${A[bytes]} bytes per line"
            fi
            rm -f "$RUN_DIR/audit.jsonl" "$RUN_DIR/audit.jsonl.chain"
        fi
    done
done

# --------------------------------------------------------------- profile ----
PROF=
if [ "$PROFILE" = 1 ]; then
    command -v perf >/dev/null 2>&1 || die "PROFILE=1 needs perf (Debian linux-perf)"
    for m in $MODES; do
        log "--- profiling $m (perf record -e cpu-clock)"
        start_tollgate "$m"
        perf record -q -e cpu-clock -F 4999 -p "$TG_PID" -o "$RUN_DIR/perf-$m.data" \
            -- sleep $((WARMUP + DURATION + 1)) >"$RUN_DIR/perf-$m.log" 2>&1 &
        perf_pid=$!
        sleep 0.5
        measure_audit "$m" prof
        wait "$perf_pid" || die "perf record failed: $(tail -n 3 "$RUN_DIR/perf-$m.log")"
        stop_pid "$TG_PID"
        rm -f "$RUN_DIR/audit.jsonl" "$RUN_DIR/audit.jsonl.chain"
        # "µs/req dso symbol" for the worker thread: share of its samples x its µs/req
        perf report -i "$RUN_DIR/perf-$m.data" --comm tg-worker-0 --no-children -F overhead,dso,sym \
            --stdio 2>/dev/null | awk -v c="${A[$m.prof|worker]}" '!/^#/ && NF >= 4 {
                sub(/%$/, "", $1); s = $4; for (i = 5; i <= NF; i++) s = s " " $i
                printf "%.4f %s %s\n", $1 / 100 * c, $2, s }' >"$RUN_DIR/worker-$m.sym"
    done
    PROF+="### tg-worker-0: symbols that grew most with audit on (µs/req; worker at ${A[noaudit.prof|rps]} vs ${A[audit.prof|rps]} req/s)"$'\n\n'
    PROF+="| Δ | audit | noaudit | DSO | symbol |"$'\n'"| ---: | ---: | ---: | --- | --- |"$'\n'
    PROF+=$(awk 'FNR == 1 { f++ } { k = $2 "\t" substr($0, index($0, $3)); if (f == 1) b[k] = $1; else x[k] = $1; all[k] = 1 }
        END { for (k in all) printf "%.3f\t%.3f\t%.3f\t%s\n", x[k] - b[k], x[k], b[k], k }' \
        "$RUN_DIR/worker-noaudit.sym" "$RUN_DIR/worker-audit.sym" | sort -t$'\t' -k1,1gr | head -n 15 |
        awk -F'\t' '{ printf "| %.3f | %.3f | %.3f | %s | `%s` |\n", $1, $2, $3, $4, $5 }' || true)
    PROF+=$'\n\n'"### tg-audit: top symbols (% of the thread's samples)"$'\n\n```text\n'
    PROF+=$(perf report -i "$RUN_DIR/perf-audit.data" --comm tg-audit --percentage relative --no-children -F overhead,dso,sym --stdio 2>/dev/null |
        awk '!/^#/ && NF >= 3' | head -n 25 || true)
    PROF+=$'\n```\n'
fi

# ---------------------------------------------------------------- report ----
stats() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.2f %.2f %.2f\n", m, v[1], v[NR] }'
}
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }

declare -A MED MIN MAX
for f in rps worker proc; do
    for m in $MODES; do
        v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${A[$m.$r|$f]}"); done
        read -r "MED[$m|$f]" "MIN[$m|$f]" "MAX[$m|$f]" < <(stats "${v[@]}")
    done
done
for f in writer ratio autil; do
    v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${A[audit.$r|$f]}"); done
    read -r "MED[audit|$f]" "MIN[audit|$f]" "MAX[audit|$f]" < <(stats "${v[@]}")
done
d=(); for r in $(seq 1 "$ROUNDS"); do d+=("$(calc "${A[audit.$r|worker]} - ${A[noaudit.$r|worker]}")"); done
read -r DMED DMIN DMAX < <(stats "${d[@]}")
# The writer's capacity in records/s at the measured cost, against the worker's full rate.
CAP=$(awk -v c="${MED[audit|writer]}" 'BEGIN { printf "%.0f", (c > 0 ? 1e6 / c : 0) }')
FULL=$(awk -v c="${MED[audit|worker]}" 'BEGIN { printf "%.0f", 1e6 / c }')
KEPT=yes
for r in $(seq 1 "$ROUNDS"); do
    [ "${A[audit.$r|all]}" = yes ] && [ "${A[audit.$r|errs]}" = 0 ] || KEPT=no
    awk -v x="${A[audit.$r|ratio]}" 'BEGIN { exit !(x >= 0.99) }' || KEPT=no
done

{
    echo "# tollgate audit log cost — latest run"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(uname -sr), $(nproc) CPU ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "- tollgate $("$TOLLGATE_BIN" --version 2>&1 | head -1); $(h2load --version 2>&1 | head -1)"
    echo "- tollgate: workers 1, worker thread on CPU $PROXY_CPU, audit writer thread (tg-audit) on CPU $WRITER_CPU; demo upstream and h2load (h2c, -c $H2_CONNS -m $H2_STREAMS, one thread, GET /v1/models, passthrough route$( [ -n "$RATE" ] && echo ", fixed rate $RATE req/s" || echo ", full speed")) on CPU $LOAD_CPU; ${DURATION} s per run after a ${WARMUP} s warm-up; $ROUNDS rounds, modes interleaved, a fresh tollgate per run"
    echo "- audit: fsync \"$FSYNC\" (1000 ms), file on local disk in the run directory, on_queue_full \"reject\"; $( [ -n "${A[bytes]:-}" ] && echo "${A[bytes]} bytes per line; ")round 1's file: \`tollgate audit verify\` → $VERIFY"
    echo "- CPU: utime+stime of each thread from /proc/PID/task/TID/stat (${CLK_TCK} Hz) over the measured run; worker µs/req = tg-worker-0's CPU ÷ completed requests; writer µs/record = tg-audit's CPU ÷ records written during the run (tollgate_audit_last_seq)"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine may be shared)"
    echo
    echo "## Summary (medians over rounds, min…max)"
    echo
    echo "| mode | req/s | worker CPU µs/req | process CPU µs/req | writer CPU µs/record |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for m in $MODES; do
        if [ $m = audit ]; then wr="${MED[audit|writer]} (${MIN[audit|writer]}…${MAX[audit|writer]})"; else wr="–"; fi
        printf '| %s | %.0f | %s (%s…%s) | %s (%s…%s) | %s |\n' "$m" "${MED[$m|rps]}" \
            "${MED[$m|worker]}" "${MIN[$m|worker]}" "${MAX[$m|worker]}" \
            "${MED[$m|proc]}" "${MIN[$m|proc]}" "${MAX[$m|proc]}" "$wr"
    done
    echo
    echo "| target | measured | met |"
    echo "| --- | ---: | --- |"
    echo "| audit adds ≤ $TARGET_DELTA µs of worker CPU per request | ${DMED} (${DMIN}…${DMAX}) µs (median of per-round differences) | $(awk -v v="$DMED" -v t=$TARGET_DELTA 'BEGIN { print (v <= t ? "yes" : "no") }') |"
    echo "| the writer keeps up with the load | records written during the run ÷ requests: ${MED[audit|ratio]} (${MIN[audit|ratio]}…${MAX[audit|ratio]}); no 503 (queue full) and every request recorded after drain in every round: $KEPT | $KEPT |"
    echo "| the writer keeps up at the worker's full rate | writer capacity 1e6 ÷ ${MED[audit|writer]} µs ≈ $CAP records/s vs the worker's full rate 1e6 ÷ ${MED[audit|worker]} µs ≈ $FULL req/s (writer at ${MED[audit|autil]}% of a CPU during the run) | $(awk -v a="$CAP" -v b="$FULL" 'BEGIN { print (a >= b ? "yes" : "no") }') |"
    echo
    echo "Per round:"
    echo
    echo "| round | noaudit req/s | noaudit worker µs/req | audit req/s | audit worker µs/req | Δ worker | writer µs/record | writer CPU % | records ÷ requests | queue depth at end | 503s | all recorded |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for r in $(seq 1 "$ROUNDS"); do
        printf '| %s | %.0f | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$r" \
            "${A[noaudit.$r|rps]}" "${A[noaudit.$r|worker]}" "${A[audit.$r|rps]}" "${A[audit.$r|worker]}" \
            "$(calc "${A[audit.$r|worker]} - ${A[noaudit.$r|worker]}")" "${A[audit.$r|writer]}" \
            "${A[audit.$r|autil]}" "${A[audit.$r|ratio]}" "${A[audit.$r|depth]}" "${A[audit.$r|errs]}" "${A[audit.$r|all]}"
    done
    if [ -n "$PROF" ]; then
        echo
        echo "## Profile (one extra audit run, perf record -e cpu-clock)"
        echo
        printf '%s' "$PROF"
    fi
} >"$RUN_DIR/audit.md"

mkdir -p "$(dirname "$RESULTS")"
cp "$RUN_DIR/audit.md" "$RESULTS"
echo
cat "$RESULTS"
echo
log "written to ${RESULTS#"$ROOT"/}"
