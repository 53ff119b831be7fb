#!/usr/bin/env bash
# Benchmark sessions through a whole cluster on loopback: our balancer
# (`session-cluster proxy`) against HAProxy, in front of the same 3
# `session-cluster node` processes, for each session strategy in turn:
#   replicate      3 nodes --strategy replicate, --peers listing the three
#                  replication ports (the node's default replication mode)
#   redis          3 nodes --strategy redis on one private redis-server
#   redis-cluster  3 nodes --strategy redis --redis-cluster on a private
#                  Redis Cluster (3 primaries, 3 replicas)
# Two workloads through each balancer, with a session cookie made through
# that balancer (one POST /api/counter):
#   1. GET /api/session (reads the session)
#   2. POST /api/counter (reads and writes it; a wrk Lua script, empty body)
# wrk -t2 -c50, a 2 s warm-up before each measured run; interleaved rounds
# (the balancer that goes first alternates), medians reported. For every run
# also the CPU time (user + system, /proc/PID/stat) per request of the
# balancer, of the 3 nodes together and of the redis-server(s).
# HAProxy: nbthread = cores, balance roundrobin, keep-alive on both sides
# (http-keep-alive, http-reuse always), option forwardfor, no logging. Ours:
# --event-loops = cores. Each strategy's processes are stopped before the next
# strategy starts.
# Prints a summary, one row per (strategy, workload), with the target: ours
# >= 1.0x HAProxy's requests/s. Exits 0 when the run completed (targets met
# or not), non-zero when something failed (a process did not start, wrk
# output could not be parsed, more than 1% errors in a run).
# Installs wrk, haproxy, curl and redis with apt-get when missing.
#
# Environment: DURATION (seconds per wrk run, default 8), ROUNDS (interleaved
# rounds, the median is reported, default 3), STRATEGIES (default
# "replicate redis redis-cluster"), REPLICATION_MODE (sync or async; default:
# the node's default, --replication-mode not passed), SCRATCH_PATH (SwiftPM
# build directory, default .build).
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

start_load=$(cut -d' ' -f1-3 /proc/loadavg)

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
STRATEGIES=${STRATEGIES:-replicate redis redis-cluster}
REPLICATION_MODE=${REPLICATION_MODE:-}
CONNECTIONS=50
THREADS=2
WARMUP=2
NODES=3
MAX_ERROR_PERCENT=1
WORKLOADS=(get post)

positive DURATION "$DURATION"
positive ROUNDS "$ROUNDS"
read -r -a strategies <<<"$STRATEGIES"
((${#strategies[@]} > 0)) || { echo "error: STRATEGIES is empty" >&2; exit 2; }
for s in "${strategies[@]}"; do
    [[ "$s" == replicate || "$s" == redis || "$s" == redis-cluster ]] \
        || { echo "error: unknown strategy '$s' in STRATEGIES (replicate, redis, redis-cluster)" >&2; exit 2; }
done
[[ -z "$REPLICATION_MODE" || "$REPLICATION_MODE" == sync || "$REPLICATION_MODE" == async ]] \
    || { echo "error: REPLICATION_MODE must be sync or async, got '$REPLICATION_MODE'" >&2; exit 2; }

declare -a node_port=() repl_port=() node_pid=()
haproxy_pid=""
proxy_pid=""
wrk_pid=""

# The PIDs of every child, for the watchdog.
save_pids() {
    [[ -n "$tmp_dir" ]] || return 0
    printf '%s\n' "$wrk_pid" "$proxy_pid" "$haproxy_pid" "${node_pid[@]}" "$redis_pid" "${redis_cluster_pids[@]}" \
        >"$tmp_dir/pids"
}

# stop_strategy — stop wrk, both balancers, the nodes and the redis-server(s), by PID.
stop_strategy() {
    local i pid
    if [[ -n "$wrk_pid" ]]; then
        kill_wait "$wrk_pid"
        wrk_pid=""
    fi
    stop_named "session-cluster proxy" proxy_pid
    stop_named haproxy haproxy_pid
    for i in "${!node_pid[@]}"; do stop_named "node n$((i + 1))" "node_pid[$i]"; done
    stop_named redis-server redis_pid
    for pid in "${redis_cluster_pids[@]}"; do
        stop_pid "redis-server (cluster)" "$pid"
    done
    redis_cluster_pids=()
    save_pids
}
stop_children() { stop_strategy; }
install_traps

nodes_cpu_ticks() { sum_cpu_ticks "${node_pid[@]}"; }
redis_cpu_ticks() { sum_cpu_ticks "$redis_pid" "${redis_cluster_pids[@]}"; }
has_redis() { [[ -n "$redis_pid" || ${#redis_cluster_pids[@]} -gt 0 ]]; }

on_wrk_pid() { save_pids; }

# per_request TICKS REQUESTS — CPU microseconds per request.
per_request() {
    awk -v t="$1" -v hz="$clk_tck" -v n="$2" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }'
}

# Results, one entry per measured run.
declare -a r_strategy=() r_workload=() r_target=() r_rps=() r_p99=() r_non2xx=() r_sockerr=() r_cpu=() r_ncpu=() r_rcpu=()
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

# bench STRATEGY WORKLOAD TARGET PID URL [wrk args...] — warm-up, then the measured run.
bench() {
    local strategy=$1 workload=$2 target=$3 pid=$4 url=$5 out rps p99 non2xx sockerr requests errors
    local cpu0 ncpu0 rcpu0 cpu ncpu rcpu
    shift 5
    out="$tmp_dir/wrk-${#r_target[@]}-$strategy-$workload-$target.txt"
    log "$strategy, $workload, $target: ${WARMUP}s warm-up + ${DURATION}s"
    run_wrk "$out.warmup" "$WARMUP" "$CONNECTIONS" "" "$url" "$@"
    cpu0=$(cpu_ticks "$pid")
    ncpu0=$(nodes_cpu_ticks)
    rcpu0=$(redis_cpu_ticks)
    run_wrk "$out" "$DURATION" "$CONNECTIONS" "" "$url" "$@"
    cpu=$(($(cpu_ticks "$pid") - cpu0))
    ncpu=$(($(nodes_cpu_ticks) - ncpu0))
    rcpu=$(($(redis_cpu_ticks) - rcpu0))
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    requests=$(awk '/ requests in / { print $1 }' "$out")
    if [[ -z "$rps" || -z "$p99" || ! "$requests" =~ ^[0-9]+$ ]]; then
        cat "$out" >&2
        die "could not parse wrk output for $strategy, $workload, $target"
    fi
    ((requests > 0)) || { cat "$out" >&2; die "no request completed for $strategy, $workload, $target"; }
    non2xx=${non2xx:-0}
    sockerr=${sockerr:-0}
    errors=$((non2xx + sockerr))
    cpu=$(per_request "$cpu" "$requests")
    ncpu=$(per_request "$ncpu" "$requests")
    if has_redis; then rcpu=$(per_request "$rcpu" "$requests"); else rcpu="-"; fi
    printf '    %s req/s, p99 %s, non-2xx %s, socket errors %s (of %s requests); CPU per request: balancer %s us, nodes %s us, redis %s us\n' \
        "$rps" "$p99" "$non2xx" "$sockerr" "$requests" "$cpu" "$ncpu" "$rcpu"
    if ((errors * 100 > requests * MAX_ERROR_PERCENT)); then
        cat "$out" >&2
        die "$strategy, $workload, $target: $errors errors (non-2xx $non2xx, socket errors $sockerr) in $requests requests, above $MAX_ERROR_PERCENT%"
    fi
    r_strategy+=("$strategy")
    r_workload+=("$workload")
    r_target+=("$target")
    r_rps+=("$rps")
    r_p99+=("$(to_ms "$p99")")
    r_non2xx+=("$non2xx")
    r_sockerr+=("$sockerr")
    r_cpu+=("$cpu")
    r_ncpu+=("$ncpu")
    r_rcpu+=("$rcpu")
}

# check_response NAME METHOD URL SID — 3 requests with the cookie: each must answer 200 with a JSON "count".
check_response() {
    local name=$1 method=$2 url=$3 sid=$4 i code body counts=()
    for ((i = 0; i < 3; i++)); do
        code=$(curl -sS -o "$tmp_dir/check.body" -w '%{http_code}' --max-time 5 -X "$method" \
            -H "Cookie: sid=$sid" "$url") || code="curl failed"
        body=$(cat "$tmp_dir/check.body" 2>/dev/null || true)
        [[ "$code" == 200 ]] || die "$name: $method $url answered $code: $body"
        [[ "$body" =~ \"count\":([0-9]+) ]] || die "$name: $method $url: no \"count\" in the body: $body"
        counts+=("${BASH_REMATCH[1]}")
    done
    log "$name: $method ${url#http://127.0.0.1:*/} -> 200, counts ${counts[*]}"
}

# make_session NAME BASE_URL — POST /api/counter through the balancer; prints the sid.
make_session() {
    local name=$1 base=$2 sid
    rm -f "$tmp_dir/jar"
    curl -fsS -o /dev/null --max-time 5 -c "$tmp_dir/jar" -X POST "$base/api/counter" \
        || die "$name: POST $base/api/counter failed"
    sid=$(awk '$6 == "sid" { print $7 }' "$tmp_dir/jar")
    [[ -n "$sid" ]] || die "$name: no 'sid' cookie from POST /api/counter"
    [[ "$sid" =~ ^[A-Za-z0-9._~+/=%-]+$ ]] || die "$name: unexpected characters in the sid cookie: $sid"
    echo "$sid"
}

log "checking packages and Swift"
packages=("${build_packages[@]}" wrk haproxy curl redis-server redis-tools)
ensure_packages "${packages[@]}"
ensure_swift
ensure_haproxy

build_release

tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-bench-cluster.XXXXXX")
start_pid_watchdog
cpus=$(nproc)
run_load=$(cut -d' ' -f1-3 /proc/loadavg)
haproxy_version=$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')
redis_version=$(redis-server --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p')

# The same secrets on every node (as the demo's supervisor does): a cookie signed by one node is
# accepted by all, and the replicate peers trust each other. From the environment, never argv.
SESSION_COOKIE_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
SESSION_CLUSTER_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export SESSION_COOKIE_SECRET SESSION_CLUSTER_SECRET

mode_args=()
[[ -n "$REPLICATION_MODE" ]] && mode_args=(--replication-mode "$REPLICATION_MODE")
if [[ -n "$REPLICATION_MODE" ]]; then
    mode_shown=$REPLICATION_MODE
else
    # The node's default, from its --help ("(default: async)" in the option's text).
    default_mode=$("$binary" node --help 2>/dev/null | awk '/--replication-mode/ { f = 1 } f && /\(default: / { sub(/.*\(default: /, ""); sub(/\).*/, ""); print; exit }' || true)
    mode_shown="${default_mode:-?}, the node's default (--replication-mode not passed)"
fi

echo
echo "===================== bench-cluster ====================="
echo "date:        $(date -u)"
echo "nproc:       $cpus    kernel: $(uname -r)"
echo "load average at the start: $start_load    after the build: $run_load"
echo "HAProxy:     $haproxy_version: nbthread $cpus, balance roundrobin, option http-keep-alive, http-reuse always, option forwardfor, no logging"
echo "ours:        $binary proxy --listen 127.0.0.1:PORT --backend n1=127.0.0.1:P1 --backend n2=... --backend n3=... --event-loops $cpus --log-level warning"
echo "nodes:       $NODES x $binary node --port P --node-id nN --log-level warning, with"
echo "               replicate:     --strategy replicate --peers R1,R2,R3 --replication-port RN${mode_args[*]:+ ${mode_args[*]}}  (mode: $mode_shown)"
echo "               redis:         --strategy redis --redis redis://127.0.0.1:PORT/0  (one private redis-server $redis_version)"
echo "               redis-cluster: --strategy redis --redis-cluster SEEDS  (private Redis Cluster: 3 primaries, 3 replicas)"
echo "             SESSION_COOKIE_SECRET and SESSION_CLUSTER_SECRET: random, the same on every node"
echo "wrk:         GET:  wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -H 'Cookie: sid=…' URL/api/session"
echo "             POST: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s post.lua URL/api/counter  (POST, Cookie, empty body)"
echo "             ${WARMUP}s warm-up before each run; $ROUNDS interleaved rounds (the first balancer alternates); medians"
echo "strategies:  ${strategies[*]}"
echo "errors above $MAX_ERROR_PERCENT% of a run's requests fail the run"
echo "========================================================="
echo

# --- one strategy ----------------------------------------------------------------------

# start_nodes STRATEGY — its redis (if any) and the 3 nodes, all answering /healthz.
start_nodes() {
    local strategy=$1 i peers="" strategy_args=()
    node_port=() repl_port=() node_pid=()
    for ((i = 0; i < NODES; i++)); do node_port[i]=$(new_port); done
    case "$strategy" in
        replicate)
            for ((i = 0; i < NODES; i++)); do
                repl_port[i]=$(new_port)
                peers+="${peers:+,}127.0.0.1:${repl_port[$i]}"
            done
            strategy_args=(--strategy replicate --peers "$peers" "${mode_args[@]}")
            ;;
        redis)
            start_redis
            save_pids
            strategy_args=(--strategy redis --redis "redis://127.0.0.1:$redis_port/0")
            ;;
        redis-cluster)
            start_redis_cluster
            save_pids
            strategy_args=(--strategy redis --redis-cluster "$redis_cluster_seeds")
            ;;
    esac
    for ((i = 0; i < NODES; i++)); do
        local extra=()
        [[ "$strategy" == replicate ]] && extra=(--replication-port "${repl_port[$i]}")
        "$binary" node --port "${node_port[$i]}" --node-id "n$((i + 1))" "${strategy_args[@]}" "${extra[@]}" \
            --log-level warning </dev/null >"$tmp_dir/$strategy-node$((i + 1)).log" 2>&1 &
        node_pid[i]=$!
        save_pids
    done
    log "$strategy: started $NODES nodes (${strategy_args[*]}) on ports ${node_port[*]}${repl_port[*]:+, replication ${repl_port[*]}}"
    for ((i = 0; i < NODES; i++)); do
        if ! wait_http "node n$((i + 1))" "http://127.0.0.1:${node_port[$i]}/healthz" "${node_pid[$i]}"; then
            tail -n 20 "$tmp_dir/$strategy-node$((i + 1)).log" >&2 || true
            die "$strategy: node n$((i + 1)) did not start"
        fi
    done
}

# start_balancers STRATEGY — HAProxy and ours over the 3 nodes; sets haproxy_port, proxy_port.
start_balancers() {
    local strategy=$1 i backend_args=() addresses=()
    for ((i = 0; i < NODES; i++)); do
        backend_args+=(--backend "n$((i + 1))=127.0.0.1:${node_port[$i]}")
        addresses+=("127.0.0.1:${node_port[$i]}")
    done
    haproxy_port=$(new_port)
    start_haproxy "haproxy-$strategy" "$haproxy_port" "${addresses[@]}"

    proxy_port=$(new_port)
    log "$strategy: starting session-cluster proxy on 127.0.0.1:$proxy_port (--event-loops $cpus)"
    "$binary" proxy --listen "127.0.0.1:$proxy_port" "${backend_args[@]}" --event-loops "$cpus" \
        --log-level warning </dev/null >"$tmp_dir/proxy-$strategy.log" 2>&1 &
    proxy_pid=$!
    save_pids
    if ! wait_http "session-cluster proxy" "http://127.0.0.1:$proxy_port/healthz" "$proxy_pid"; then
        tail -n 20 "$tmp_dir/proxy-$strategy.log" >&2 || true
        die "$strategy: session-cluster proxy did not start"
    fi

    # Both spread requests over all three nodes.
    check_spread "$strategy, haproxy" "$haproxy_port" "$NODES"
    check_spread "$strategy, ours" "$proxy_port" "$NODES"
}

# run_strategy STRATEGY — start everything, check, measure, stop everything.
run_strategy() {
    local strategy=$1 target round workload port pid base sid_haproxy sid_ours sid
    log "=== strategy $strategy ==="
    start_nodes "$strategy"
    start_balancers "$strategy"

    # A session per balancer, made through it; then a few checked requests of each workload.
    for target in haproxy ours; do
        port=$haproxy_port
        [[ "$target" == ours ]] && port=$proxy_port
        base="http://127.0.0.1:$port"
        sid=$(make_session "$strategy, $target" "$base")
        check_response "$strategy, $target" GET "$base/api/session" "$sid"
        check_response "$strategy, $target" POST "$base/api/counter" "$sid"
        cat >"$tmp_dir/post-$strategy-$target.lua" <<LUA
wrk.method = "POST"
wrk.body = ""
wrk.headers["Cookie"] = "sid=$sid"
LUA
        if [[ "$target" == haproxy ]]; then sid_haproxy=$sid; else sid_ours=$sid; fi
    done

    # On a small shared machine one run can be 30% off; the median of interleaved
    # rounds is steadier. The balancer that goes first alternates between rounds.
    local order=()
    for ((round = 1; round <= ROUNDS; round++)); do
        log "$strategy: round $round of $ROUNDS"
        if ((round % 2)); then order=(haproxy ours); else order=(ours haproxy); fi
        for workload in "${WORKLOADS[@]}"; do
            for target in "${order[@]}"; do
                if [[ "$target" == haproxy ]]; then
                    port=$haproxy_port pid=$haproxy_pid sid=$sid_haproxy
                else
                    port=$proxy_port pid=$proxy_pid sid=$sid_ours
                fi
                if [[ "$workload" == get ]]; then
                    bench "$strategy" get "$target" "$pid" "http://127.0.0.1:$port/api/session" -H "Cookie: sid=$sid"
                else
                    bench "$strategy" post "$target" "$pid" "http://127.0.0.1:$port/api/counter" \
                        -s "$tmp_dir/post-$strategy-$target.lua"
                fi
            done
        done
    done

    local i
    kill -0 "$proxy_pid" 2>/dev/null || { tail -n 20 "$tmp_dir/proxy-$strategy.log" >&2; die "$strategy: our balancer died during the benchmark"; }
    kill -0 "$haproxy_pid" 2>/dev/null || { tail -n 20 "$tmp_dir/haproxy-$strategy.log" >&2; die "$strategy: HAProxy died during the benchmark"; }
    for ((i = 0; i < NODES; i++)); do
        kill -0 "${node_pid[$i]}" 2>/dev/null || {
            tail -n 20 "$tmp_dir/$strategy-node$((i + 1)).log" >&2
            die "$strategy: node n$((i + 1)) died during the benchmark"
        }
    done
    # The logs (warnings and above), for the summary.
    for ((i = 0; i < NODES; i++)); do
        if [[ -s "$tmp_dir/$strategy-node$((i + 1)).log" ]]; then
            tail -n 5 "$tmp_dir/$strategy-node$((i + 1)).log" | sed "s/^/$strategy n$((i + 1)): /" >>"$tmp_dir/warnings"
        fi
    done
    if [[ -s "$tmp_dir/proxy-$strategy.log" ]]; then
        tail -n 5 "$tmp_dir/proxy-$strategy.log" | sed "s/^/$strategy proxy: /" >>"$tmp_dir/warnings"
    fi
    log "$strategy: stopping its processes"
    stop_strategy
}

for strategy in "${strategies[@]}"; do
    run_strategy "$strategy"
done

# --- summary ---------------------------------------------------------------------------


# stats STRATEGY WORKLOAD TARGET — sets S_RPS, S_RANGE, S_P99, S_ERR (non-2xx + socket errors, all
# rounds), and the median CPU us per request: S_CPU (the balancer), S_NCPU (the 3 nodes), S_RCPU (redis).
stats() {
    local i rps=() p99=() cpu=() ncpu=() rcpu=()
    S_ERR=0
    for i in "${!r_target[@]}"; do
        [[ "${r_strategy[$i]}" == "$1" && "${r_workload[$i]}" == "$2" && "${r_target[$i]}" == "$3" ]] || continue
        rps+=("${r_rps[$i]}")
        p99+=("${r_p99[$i]}")
        cpu+=("${r_cpu[$i]}")
        ncpu+=("${r_ncpu[$i]}")
        rcpu+=("${r_rcpu[$i]}")
        S_ERR=$((S_ERR + r_non2xx[i] + r_sockerr[i]))
    done
    ((${#rps[@]} > 0)) || die "no results for $1, $2, $3"
    S_RPS=$(median "${rps[@]}")
    S_RANGE=$(printf '%s\n' "${rps[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }')
    S_P99=$(median "${p99[@]}")
    S_CPU=$(median "${cpu[@]}")
    S_NCPU=$(median "${ncpu[@]}")
    if [[ "${rcpu[0]}" == "-" ]]; then S_RCPU="-"; else S_RCPU=$(median "${rcpu[@]}"); fi
}

row_format='%-13s %-5s %22s %22s %7s %15s %11s %13s %13s %13s   %s\n'
echo
echo "===================== bench-cluster summary ====================="
echo "date: $(date -u)    nproc: $cpus    kernel: $(uname -r)    HAProxy $haproxy_version"
echo "load average at the start: $start_load (after the build: $run_load); now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s (${WARMUP}s warm-up), $ROUNDS interleaved rounds, medians; 3 nodes per strategy"
echo "work: get = GET /api/session with the cookie; post = POST /api/counter with the cookie (empty body)"
echo "replicate: replication mode $mode_shown"
echo
# shellcheck disable=SC2059  # the format is a variable on purpose: one format for the header and the rows
printf "$row_format" strategy work "HAProxy req/s (range)" "ours req/s (range)" ours/H "p99 ms H/ours" "errors H/o" \
    "bal us H/ours" "nodes us H/o" "redis us H/o" "target ours >= 1.0x HAProxy"
met=0 total=0
for strategy in "${strategies[@]}"; do
    for workload in "${WORKLOADS[@]}"; do
        stats "$strategy" "$workload" haproxy
        h_rps=$S_RPS h_range=$S_RANGE h_p99=$S_P99 h_err=$S_ERR h_cpu=$S_CPU h_ncpu=$S_NCPU h_rcpu=$S_RCPU
        stats "$strategy" "$workload" ours
        ratio=$(awk -v a="$S_RPS" -v b="$h_rps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print 0 }')
        verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 1.0 ? "met" : "NOT met") }')
        total=$((total + 1))
        [[ "$verdict" == met ]] && met=$((met + 1))
        # shellcheck disable=SC2059
        printf "$row_format" "$strategy" "$workload" "$(printf '%.0f (%s)' "$h_rps" "$h_range")" \
            "$(printf '%.0f (%s)' "$S_RPS" "$S_RANGE")" "${ratio}x" "$h_p99/$S_P99" "$h_err/$S_ERR" \
            "$h_cpu/$S_CPU" "$h_ncpu/$S_NCPU" "$h_rcpu/$S_RCPU" "$verdict"
    done
done
echo "(p99: median of the rounds' wrk p99; errors: non-2xx responses plus wrk socket errors, all rounds;"
echo " bal us / nodes us / redis us: median CPU time, user + system, per request of the balancer / of the 3 nodes"
echo " together / of the redis-server(s) together, in microseconds; H = the runs through HAProxy, o = through ours)"
echo
echo "targets met: $met of $total"
echo "================================================================="
if [[ -s "$tmp_dir/warnings" ]]; then
    echo
    echo "node and proxy logs (warnings and above, last 5 lines of each):"
    cat "$tmp_dir/warnings"
fi
