#!/usr/bin/env bash
# bench/quota.sh - what quotas (local, Redis) cost tollgate per request, on loopback.
#
# Same method as bench/auth.sh: tollgate with one worker pinned to CPU 0; the
# demo upstream, h2load (h2c, -c 16 -m 16, one thread) and here also the
# redis-server on CPU 1; tollgate's CPU µs/req from /proc.  API key auth in
# every mode (same key, same requests); modes differ only in the policy and
# the quota block:
#   noquota  the policy has no limits (baseline: the quota filter does nothing)
#   local    backend "local"; requests_per_minute, tokens_per_minute,
#            tokens_per_day and concurrency set to huge values (never refuse)
#   redis    backend "redis" on a redis-server started here (free loopback
#            port, --save '' --appendonly no, CPU 1), the same huge limits;
#            on_backend_error "deny", so a Redis failure shows up as a 503
#            and fails the run instead of quietly measuring the fallback
# and two workloads, each run in every mode:
#   echo     GET /echo/x on an "api": "passthrough" route (requests and
#            concurrency limits only, no body parsing)
#   chat     POST /v1/chat/completions, non-streaming, a small JSON body with
#            "max_tokens": 4, on an "api": "openai" route (body inspection,
#            usage parsing, token reservation and settlement)
# Runs are interleaved (per round: every workload x every mode), each with a
# fresh tollgate; medians over rounds, deltas against the same round's
# noquota run.  For redis runs it also reads, over the measured run:
# redis-server's CPU (/proc/PID/stat), INFO commandstats (tollgate's
# commands: evalsha + eval + script + ping, per request; the target is at
# most 2), INFO stats total_reads_processed (scripts per read() of Redis:
# above 1 means commands arrive pipelined) and used_memory (bytes per request
# still held at the end of the run).  Timing targets are printed, never
# enforced: the machine is noisy.  Writes bench/results/quota-latest.md.
#
# Environment knobs (all optional):
#   DURATION=8        seconds per measured run (each after a WARMUP=1 s warm-up)
#   ROUNDS=5          rounds (3: quicker, noisier)
#   MODES="noquota local redis"   subset/order (noquota is always run)
#   WORKLOADS="echo chat"         subset/order
#   PROFILE=1         afterwards, one extra run per workload and mode under
#                     `perf record -e cpu-clock`; the symbols that grew most
#                     against noquota are appended to the report
#   RATE=N            pace h2load to N requests/s in all (--rps=N/16 per
#                     connection) in every run, so all modes run at the same
#                     rate; unset: as fast as it goes (see README: the redis
#                     mode is then slower, which inflates its CPU per request)
#   PORT_BASE=27700, TOLLGATE_BIN, DEMO_BIN, RESULTS, KEEP_RUN_DIR=1   as in run.sh
#   REDIS_BIN=redis-server
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-5}
PROFILE=${PROFILE:-0}
PORT_BASE=${PORT_BASE:-27700}
RATE=${RATE:-}
TOLLGATE_BIN=${TOLLGATE_BIN:-$ROOT/build/tollgate}
DEMO_BIN=${DEMO_BIN:-$ROOT/build/tests/demo_upstream}
REDIS_BIN=${REDIS_BIN:-redis-server}
RESULTS=${RESULTS:-$BENCH_DIR/results/quota-latest.md}
ALL_MODES="noquota local redis"
MODES=${MODES:-$ALL_MODES}
ALL_WORKLOADS="echo chat"
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}

H2_CONNS=16 H2_STREAMS=16
PROXY_CPU=0 LOAD_CPU=1
LOG_TAG=quota-bench

# Targets (issue): Redis quotas add at most 5 µs of tollgate CPU per request
# over the same run without quotas, in at most 2 Redis round trips per request.
TARGET_DELTA=5
TARGET_RTT=2

. "$BENCH_DIR/lib.sh"

# ------------------------------------------------------------------ setup ----
ensure_tools h2load curl taskset awk sort
command -v "$REDIS_BIN" >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 ||
    die "need $REDIS_BIN and redis-cli (Debian redis-server, redis-tools)"
ensure_build
if [ "$(nproc)" -lt 2 ]; then
    log "WARNING: only $(nproc) CPU: proxy, upstream, Redis and load share CPU 0"
    LOAD_CPU=0
fi
[ -z "$RATE" ] || [ "$RATE" -gt 0 ] 2>/dev/null || die "RATE must be a positive integer (requests/s)"
case " $MODES " in *" noquota "*) ;; *) MODES="noquota $MODES" ;; esac
for m in $MODES; do
    case " $ALL_MODES " in *" $m "*) ;; *) die "unknown mode $m (known: $ALL_MODES)" ;; esac
done
for w in $WORKLOADS; do
    case " $ALL_WORKLOADS " in *" $w "*) ;; *) die "unknown workload $w (known: $ALL_WORKLOADS)" ;; esac
done

for try in $(seq 0 9); do
    base=$((PORT_BASE + try * 100))
    port_open "$base" || port_open $((base + 1)) || port_open $((base + 2)) || break
    [ "$try" = 9 ] && die "no free port triple near $PORT_BASE; set PORT_BASE"
done
DEMO_PORT=$base TG_PORT=$((base + 1)) REDIS_PORT=$((base + 2))

RUN_DIR=$(mktemp -d /tmp/tollgate-quota-bench.XXXXXX)
log "run dir $RUN_DIR; demo :$DEMO_PORT, tollgate :$TG_PORT, redis :$REDIS_PORT; ${ROUNDS} rounds x ${DURATION}s per workload and mode"

# A throwaway API key ("tg_" + 43 base64url characters, as tollgate makes
# them) and a keys file holding its SHA-256.
API_KEY="tg_$(head -c 32 /dev/urandom | basenc --base64url | tr -d '=\n')"
printf '{"keys":[{"id":"bench-0","hash":"sha256:%s","principal":"bench","tenant":"acme","policy":"standard","not_after":"2099-01-01T00:00:00Z"}]}\n' \
    "$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)" >"$RUN_DIR/keys.json"
CHAT_BODY='{"model":"demo-1","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello."}],"max_tokens":4}'
printf '%s' "$CHAT_BODY" >"$RUN_DIR/chat.json"

declare -A URL=([echo]=http://127.0.0.1:$TG_PORT/echo/x [chat]=http://127.0.0.1:$TG_PORT/v1/chat/completions)
declare -A WDESC=([echo]="GET /echo/x, passthrough route"
                  [chat]="POST /v1/chat/completions (${#CHAT_BODY} B JSON, max_tokens 4, no stream), openai route")
declare -A DESC=([noquota]="policy without limits"
                 [local]="backend local, huge limits"
                 [redis]="backend redis, huge limits")

# workload_args WORKLOAD: sets H2LOAD_EXTRA (and CURL_EXTRA for the sanity check).
workload_args() {
    H2LOAD_EXTRA=(-H "authorization: Bearer $API_KEY")
    [ -n "$RATE" ] && H2LOAD_EXTRA+=("--rps=$(((RATE + H2_CONNS - 1) / H2_CONNS))")
    CURL_EXTRA=()
    if [ "$1" = chat ]; then
        H2LOAD_EXTRA+=(-H 'content-type: application/json' -d "$RUN_DIR/chat.json")
        CURL_EXTRA=(-H 'content-type: application/json' --data-binary "@$RUN_DIR/chat.json")
    fi
}

# render_cfg MODE OUT: the base template with the mode's policy/quota fragment.
render_cfg() {
    local fragf=$RUN_DIR/frag-$1.json
    sed -e "s|@REDIS_PORT@|$REDIS_PORT|g" "$BENCH_DIR/conf/quota-$1.json.in" >"$fragf"
    sed -e "s|@PLAIN_PORT@|$TG_PORT|g" -e "s|@DEMO_PORT@|$DEMO_PORT|g" -e "s|@RUN_DIR@|$RUN_DIR|g" \
        "$BENCH_DIR/conf/tollgate-quota.json.in" |
        awk -v f="$fragf" '/^@QUOTA@$/ { while ((getline l < f) > 0) print l; next } { print }' >"$2"
}

# ------------------------------------------------------------------ redis ----
redis() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# redis_snap: "calls_from_tollgate evalsha_failed commands reads used_memory"
# from one INFO: tollgate's own commands are evalsha, eval, script and ping
# (the commands the scripts run are counted by Redis too, in commands).
redis_snap() {
    redis INFO all | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_(evalsha|eval|script|ping):/ { calls += $3 }
        /^cmdstat_(evalsha|eval):/ { for (i = 2; i < NF; i++) if ($i == "failed_calls") failed += $(i + 1) }
        /^total_commands_processed:/ { cmds = $2 }
        /^total_reads_processed:/ { reads = $2 }
        /^used_memory:/ { mem = $2 }
        END { print calls + 0, failed + 0, cmds + 0, reads + 0, mem + 0 }'
}

CUR= # the current run's name (WORKLOAD.MODE.ROUND), for the hook
declare -A RB
# MEASURE_HOOK for redis runs: Redis counters and CPU around the measured run.
redis_hook() {
    local snap ticks
    ticks=$(tree_ticks "$REDIS_PID")
    snap=$(redis_snap) || die "INFO from redis-server failed"
    if [ "$1" = begin ]; then
        RB[ticks]=$ticks RB[snap]=$snap
        return 0
    fi
    local c0 f0 k0 r0 m0 c1 f1 k1 r1 m1
    read -r c0 f0 k0 r0 m0 <<<"${RB[snap]}"
    read -r c1 f1 k1 r1 m1 <<<"$snap"
    # The end INFO counts itself in commands and reads: one each.
    R[$CUR|rticks]=$((ticks - RB[ticks]))
    R[$CUR|rcalls]=$((c1 - c0)) R[$CUR|rfailed]=$((f1 - f0))
    R[$CUR|rcmds]=$((k1 - k0 - 1)) R[$CUR|rreads]=$((r1 - r0 - 1)) R[$CUR|rmem]=$((m1 - m0))
    # Requests h2load started: those still in flight when it stopped were
    # admitted (and are settled when it hangs up) but are not "done", so
    # Redis calls are divided by this count, not by completed requests.
    R[$CUR|started]=$(awk '/^requests:/ { print $4 }' "$RUN_DIR/$2.out")
    [ -n "${R[$CUR|started]}" ] && [ "${R[$CUR|started]}" -gt 0 ] 2>/dev/null ||
        die "no 'requests:' line in $RUN_DIR/$2.out"
}

# ------------------------------------------------------------- tollgate ----
# start_tollgate MODE: sets TG_PID once the port is open and both workloads
# answer 200 with the API key (and 401 without); with quotas on, the answer
# carries x-ratelimit-* headers (and without, none), so the filter really ran.
start_tollgate() {
    local mode=$1 cfg=$RUN_DIR/tollgate-$1.json logf=$RUN_DIR/tollgate-$1.log code w
    render_cfg "$mode" "$cfg"
    taskset -c $PROXY_CPU "$TOLLGATE_BIN" -c "$cfg" >>"$logf" 2>&1 &
    TG_PID=$!
    PIDS+=("$TG_PID")
    wait_ports "$TG_PID" "$logf" "$TG_PORT"
    for w in echo chat; do
        workload_args "$w"
        code=$(curl -sS --max-time 5 --http2-prior-knowledge -D "$RUN_DIR/sanity.hdr" -o "$RUN_DIR/sanity.out" \
            -w '%{http_code}' "${CURL_EXTRA[@]}" -H "authorization: Bearer $API_KEY" "${URL[$w]}") ||
            die "$mode/$w: h2c request via tollgate failed"
        [ "$code" = 200 ] || die "$mode/$w: expected 200, got $code: $(head -c 300 "$RUN_DIR/sanity.out")"
        if [ "$w" = chat ]; then
            grep -q '"completion_tokens":4' "$RUN_DIR/sanity.out" ||
                die "$mode/chat: no usage in the answer: $(head -c 300 "$RUN_DIR/sanity.out")"
        fi
        if [ "$mode" = noquota ]; then
            ! grep -qi '^x-ratelimit-limit-requests:' "$RUN_DIR/sanity.hdr" ||
                die "$mode/$w: x-ratelimit headers without limits?"
        else
            grep -qi '^x-ratelimit-limit-requests:' "$RUN_DIR/sanity.hdr" ||
                die "$mode/$w: no x-ratelimit-limit-requests header: is the quota filter on?"
        fi
        code=$(curl -sS --max-time 5 --http2-prior-knowledge -o /dev/null -w '%{http_code}' \
            "${CURL_EXTRA[@]}" "${URL[$w]}") || true
        [ "$code" = 401 ] || die "$mode/$w: request without a credential got $code, not 401"
    done
}

# ------------------------------------------------------------ end to end ----
taskset -c $LOAD_CPU "$DEMO_BIN" --host 127.0.0.1 --port "$DEMO_PORT" --quiet >"$RUN_DIR/demo.log" 2>&1 &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
wait_ports "$DEMO_PID" "$RUN_DIR/demo.log" "$DEMO_PORT"

REDIS_PID=
if [[ " $MODES " == *" redis "* ]]; then
    taskset -c $LOAD_CPU "$REDIS_BIN" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --daemonize no --dir "$RUN_DIR" --logfile "$RUN_DIR/redis.log" >"$RUN_DIR/redis.out" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_ports "$REDIS_PID" "$RUN_DIR/redis.log" "$REDIS_PORT"
    REDIS_VERSION=$(redis INFO server | tr -d '\r' | awk -F: '/^redis_version:/ { print $2 }')
fi

# run_one WORKLOAD MODE NAME: a fresh tollgate, one measured run named NAME.
run_one() {
    local w=$1 m=$2 name=$3
    CUR=h2c\|$name
    if [ "$m" = redis ]; then
        # Drop the previous run's keys (settlement markers live 24 h), so
        # every run starts from the same Redis; the scripts stay cached.
        redis FLUSHALL >/dev/null || die "FLUSHALL failed"
        MEASURE_HOOK=redis_hook
    else
        MEASURE_HOOK=
    fi
    start_tollgate "$m"
    workload_args "$w"
    measure h2c "$name" "$TG_PID" "${URL[$w]}"
    [ "${R[h2c|$name|errs]}" = 0 ] || die "$name: ${R[h2c|$name|errs]} requests were not 2xx"
    if [ "$m" = redis ]; then
        local n=${R[h2c|$name|reqs]} ns=${R[$CUR|started]}
        log "$(printf '%-18s redis %s us/req, %s calls/req (%s failed), %s scripts per read, %s B/req' "$name" \
            "$(awk -v t="${R[$CUR|rticks]}" -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')" \
            "$(awk -v c="${R[$CUR|rcalls]}" -v n="$ns" 'BEGIN { printf "%.3f", c / n }')" "${R[$CUR|rfailed]}" \
            "$(awk -v c="${R[$CUR|rcalls]}" -v r="${R[$CUR|rreads]}" 'BEGIN { printf "%.1f", (r > 0 ? c / r : 0) }')" \
            "$(awk -v b="${R[$CUR|rmem]}" -v n="$ns" 'BEGIN { printf "%.0f", b / n }')")"
    fi
    MEASURE_HOOK=
    stop_pid "$TG_PID"
}

for r in $(seq 1 "$ROUNDS"); do
    log "--- round $r/$ROUNDS"
    for w in $WORKLOADS; do
        for m in $MODES; do
            run_one "$w" "$m" "$w.$m.$r"
        done
    done
done

# --------------------------------------------------------------- profile ----
# One more run per workload and mode with tollgate under perf (cpu-clock:
# hardware counters may be unavailable).  A symbol's share of the samples
# times the run's CPU µs/req gives its µs/req, so modes compare symbol by
# symbol.  (Static functions of stripped libraries stay bare addresses here;
# auth.sh names them.)
if [ "$PROFILE" = 1 ]; then
    command -v perf >/dev/null 2>&1 || die "PROFILE=1 needs perf (Debian linux-perf)"
    for w in $WORKLOADS; do
        for m in $MODES; do
            log "--- profiling $w/$m (perf record -e cpu-clock)"
            [ "$m" = redis ] && { redis FLUSHALL >/dev/null || die "FLUSHALL failed"; }
            start_tollgate "$m"
            workload_args "$w"
            perf record -q -e cpu-clock -F 4999 -p "$TG_PID" -o "$RUN_DIR/perf-$w-$m.data" \
                -- sleep $((WARMUP + DURATION + 1)) >"$RUN_DIR/perf-$w-$m.log" 2>&1 &
            perf_pid=$!
            sleep 0.5
            measure h2c "$w.$m.prof" "$TG_PID" "${URL[$w]}"
            wait "$perf_pid" || die "perf record failed: $(tail -n 3 "$RUN_DIR/perf-$w-$m.log")"
            # "pct dso symbol" lines, one per symbol
            perf report -i "$RUN_DIR/perf-$w-$m.data" --no-children -F overhead,dso,sym --stdio 2>/dev/null |
                awk '!/^#/ && NF >= 4 { sub(/%$/, "", $1); print $1, $2, $4 }' >"$RUN_DIR/perf-$w-$m.sym"
            stop_pid "$TG_PID"
        done
    done
fi

# ---------------------------------------------------------------- report ----
stats() { # stats V...: "median min max"
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.2f %.2f %.2f\n", m, v[1], v[NR] }'
}
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
per() { awk -v a="$1" -v n="$2" -v d="${3:-2}" 'BEGIN { printf "%.*f", d, (n > 0 ? a / n : 0) }'; }

declare -A MED MIN MAX DMED DMIN DMAX RPS RCPU RCALLS RCALLSMAX RFAILED SPR CMDS MEM
spreads=()
for w in $WORKLOADS; do
    for m in $MODES; do
        cpus=() rps=() deltas=() rc=() calls=() spr=() cmds=() mem=() failed=0
        for r in $(seq 1 "$ROUNDS"); do
            k=h2c\|$w.$m.$r n=${R[h2c|$w.$m.$r|reqs]} ns=${R[h2c|$w.$m.$r|started]:-}
            cpus+=("${R[$k|cpu]}")
            rps+=("${R[$k|rps]}")
            deltas+=("$(calc "${R[$k|cpu]} - ${R[h2c|$w.noquota.$r|cpu]}")")
            if [ "$m" = redis ]; then
                rc+=("$(awk -v t="${R[$k|rticks]}" -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')")
                calls+=("$(per "${R[$k|rcalls]}" "$ns" 4)")
                spr+=("$(per "${R[$k|rcalls]}" "${R[$k|rreads]}" 2)")
                # commands the scripts ran: all commands minus tollgate's own
                cmds+=("$(per "$((${R[$k|rcmds]} - ${R[$k|rcalls]}))" "$ns" 2)")
                mem+=("$(per "${R[$k|rmem]}" "$ns" 1)")
                failed=$((failed + ${R[$k|rfailed]}))
            fi
        done
        read -r MED[$w.$m] MIN[$w.$m] MAX[$w.$m] < <(stats "${cpus[@]}")
        read -r DMED[$w.$m] DMIN[$w.$m] DMAX[$w.$m] < <(stats "${deltas[@]}")
        read -r RPS[$w.$m] _ _ < <(stats "${rps[@]}")
        spreads+=("$(calc "${MAX[$w.$m]} - ${MIN[$w.$m]}")")
        if [ "$m" = redis ]; then
            read -r RCPU[$w] _ _ < <(stats "${rc[@]}")
            RCALLS[$w]=$(printf '%s\n' "${calls[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
            RCALLSMAX[$w]=$(printf '%s\n' "${calls[@]}" | sort -g | tail -n1)
            read -r SPR[$w] _ _ < <(stats "${spr[@]}")
            read -r CMDS[$w] _ _ < <(stats "${cmds[@]}")
            read -r MEM[$w] _ _ < <(stats "${mem[@]}")
            RFAILED[$w]=$failed
        fi
    done
done
read -r NOISE _ _ < <(stats "${spreads[@]}")
has() { case " $MODES " in *" $1 "*) return 0 ;; esac; return 1; }

{
    echo "# tollgate quota cost — latest run"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); host: $(uname -sr), $(nproc) CPU ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "- tollgate $("$TOLLGATE_BIN" --version 2>&1 | head -1); $(h2load --version 2>&1 | head -1)${REDIS_VERSION:+; redis-server $REDIS_VERSION}"
    echo "- tollgate: workers 1, API key auth (sha256: entry), pinned to CPU $PROXY_CPU; demo upstream, h2load (h2c, -c $H2_CONNS -m $H2_STREAMS, one thread$([ -n "$RATE" ] && echo ", paced: --rps=$(((RATE + H2_CONNS - 1) / H2_CONNS)) per connection, $RATE req/s in all")) and redis-server (--save '' --appendonly no; FLUSHALL before each redis run) on CPU $LOAD_CPU; ${DURATION} s per run after a ${WARMUP} s warm-up; $ROUNDS rounds, workloads and modes interleaved, a fresh tollgate per run"
    echo "- modes: noquota = policy without limits; local / redis = requests_per_minute, tokens_per_minute, tokens_per_day = 1e12, concurrency = 1e6 (never refuse); redis: timeout_ms 1000, on_backend_error deny (a Redis failure would be a 503 and fail the run)"
    echo "- CPU µs/req: utime+stime (/proc, ${CLK_TCK} Hz) over the run ÷ completed requests; median of the rounds (min–max); Δ: median of the per-round differences from that round's noquota run (min–max)"
    echo "- Redis, over each measured run: *calls/req* = INFO commandstats calls of evalsha + eval + script + ping (tollgate's own commands, i.e. round trips) ÷ requests h2load started (the ones in flight when it stops were admitted and are settled but not completed), median (max); *scripts/read* = those calls ÷ INFO stats total_reads_processed (above 1: several requests' commands arrive in one read, i.e. pipelined); *inner cmds/req* = commands the scripts ran (total_commands_processed − the calls above) ÷ requests started; *B/req* = used_memory growth ÷ requests started (keys still alive at the end of the run)"
    echo "- run-to-run noise (median over workloads and modes of max−min across rounds): $NOISE µs/req; load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine may be shared)"
    for w in $WORKLOADS; do
        echo
        echo "## $w: ${WDESC[$w]}"
        echo
        echo "| mode | | req/s | tollgate CPU µs/req | Δ vs noquota µs/req | Redis CPU µs/req | Redis calls/req | scripts/read | inner cmds/req | Redis B/req |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for m in $MODES; do
            if [ "$m" = noquota ]; then d="–"; else d="${DMED[$w.$m]} (${DMIN[$w.$m]}…${DMAX[$w.$m]})"; fi
            if [ "$m" = redis ]; then
                red="| ${RCPU[$w]} | ${RCALLS[$w]} (${RCALLSMAX[$w]}) | ${SPR[$w]} | ${CMDS[$w]} | ${MEM[$w]} |"
            else
                red="| – | – | – | – | – |"
            fi
            printf '| %s | %s | %.0f | %s (%s…%s) | %s %s\n' "$m" "${DESC[$m]}" "${RPS[$w.$m]}" \
                "${MED[$w.$m]}" "${MIN[$w.$m]}" "${MAX[$w.$m]}" "$d" "$red"
        done
        if has redis && [ "${RFAILED[$w]}" != 0 ]; then
            echo
            echo "Note: ${RFAILED[$w]} evalsha/eval calls failed during the measured runs (NOSCRIPT re-sends or script errors)."
        fi
    done
    echo
    echo "Per round, tollgate CPU µs/req:"
    echo
    printf '| round |'; for w in $WORKLOADS; do for m in $MODES; do printf ' %s/%s |' "$w" "$m"; done; done; echo
    printf '| ---: |'; for w in $WORKLOADS; do for m in $MODES; do printf ' ---: |'; done; done; echo
    for r in $(seq 1 "$ROUNDS"); do
        printf '| %s |' "$r"
        for w in $WORKLOADS; do for m in $MODES; do printf ' %s |' "${R[h2c|$w.$m.$r|cpu]}"; done; done
        echo
    done
    echo
    echo "## Targets"
    echo
    echo "| target | workload | measured | met |"
    echo "| --- | --- | --- | --- |"
    for w in $WORKLOADS; do
        has redis || continue
        met=$(awk -v d="${DMED[$w.redis]}" -v t="$TARGET_DELTA" -v n="$NOISE" \
            'BEGIN { print (d <= t ? "yes" : (d <= t + n ? "within noise" : "no")) }')
        echo "| Redis quotas add ≤ $TARGET_DELTA µs of tollgate CPU per request | $w | Δ ${DMED[$w.redis]} µs/req (${DMIN[$w.redis]}…${DMAX[$w.redis]}; noise $NOISE); Redis's own CPU ${RCPU[$w]} µs/req$(has local && echo "; local backend Δ ${DMED[$w.local]}") | $met |"
        met=$(awk -v c="${RCALLSMAX[$w]}" -v t="$TARGET_RTT" 'BEGIN { print (c <= t ? "yes" : "no") }')
        echo "| ≤ $TARGET_RTT Redis round trips per request | $w | ${RCALLS[$w]} calls/req (max over rounds ${RCALLSMAX[$w]}) | $met |"
        met=$(awk -v s="${SPR[$w]}" 'BEGIN { print (s > 1.5 ? "yes" : "no") }')
        echo "| pipelined on the worker's connection | $w | ${SPR[$w]} scripts per Redis read | $met |"
    done

    if [ "$PROFILE" = 1 ]; then
        echo
        echo "## Profiles (PROFILE=1: perf record -e cpu-clock -F 4999, one extra run per workload and mode)"
        echo
        echo "Self time in µs/req = the symbol's share of the samples × that run's CPU µs/req (perf slows tollgate a little)."
        for w in $WORKLOADS; do
            echo
            echo "### $w: µs/req per DSO"
            echo
            printf '| DSO |'; for m in $MODES; do printf ' %s |' "$m"; done; echo
            printf '| --- |'; for m in $MODES; do printf ' ---: |'; done; echo
            for m in $MODES; do
                awk -v m="$m" -v cpu="${R[h2c|$w.$m.prof|cpu]}" '{ d[$2] += $1 }
                    END { for (k in d) printf "%s\t%s\t%.2f\n", k, m, d[k] / 100 * cpu }' "$RUN_DIR/perf-$w-$m.sym"
            done | awk -F'\t' -v modes="$MODES" '
                { v[$1 SUBSEP $2] = $3; tot[$1] += $3 }
                END { n = split(modes, ms, " ")
                      for (k in tot) { if (tot[k] / n < 0.05) continue
                          line = sprintf("%.4f\t| %s |", tot[k], k)
                          for (i = 1; i <= n; i++) line = line sprintf(" %.2f |", v[k SUBSEP ms[i]])
                          print line } }' | sort -t$'\t' -k1,1gr | cut -f2-
            printf '| **total** (CPU µs/req of the profiled run) |'
            for m in $MODES; do printf ' %s |' "${R[h2c|$w.$m.prof|cpu]}"; done; echo
            for m in $MODES; do
                [ "$m" = noquota ] && continue
                echo
                echo "### $w/$m: symbols that grew most against noquota (µs/req)"
                echo
                echo "| Δ | $m | noquota | DSO | symbol |"
                echo "| ---: | ---: | ---: | --- | --- |"
                awk -v cb="${R[h2c|$w.noquota.prof|cpu]}" -v cm="${R[h2c|$w.$m.prof|cpu]}" '
                    FNR == 1 { f++ }
                    { k = $2 "\t" $3; if (f == 1) b[k] += $1 / 100 * cb; else x[k] += $1 / 100 * cm; all[k] = 1 }
                    END { for (k in all) printf "%.3f\t%.3f\t%.3f\t%s\n", x[k] - b[k], x[k], b[k], k }' \
                    "$RUN_DIR/perf-$w-noquota.sym" "$RUN_DIR/perf-$w-$m.sym" | sort -t$'\t' -k1,1gr | awk 'NR <= 15' |
                    awk -F'\t' '{ printf "| %.2f | %.2f | %.2f | %s | `%s` |\n", $1, $2, $3, $4, $5 }'
            done
        done
    fi
} >"$RUN_DIR/quota.md"

mkdir -p "$(dirname "$RESULTS")"
cp "$RUN_DIR/quota.md" "$RESULTS"
echo
cat "$RESULTS"
echo
log "written to ${RESULTS#"$ROOT"/}"
